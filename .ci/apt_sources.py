"""Print the machine's configured Debian apt sources for one suite, as one-line `deb` entries.

Used by .ci/base-image.sh to feed mmdebstrap from apt's own configuration, so no mirror host
name is ever written into the repository. Reads /etc/apt/sources.list, sources.list.d/*.list
(one-line format) and sources.list.d/*.sources (deb822), keeps enabled `deb` entries whose
suite is SUITE, SUITE-updates or SUITE-security, and only the `main` component.

Usage: python3 .ci/apt_sources.py [SUITE]   (default: bookworm)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

APT_DIR = Path("/etc/apt")


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if not raw.strip():
            if current:
                stanzas.append(current)
            current, key = {}, ""
            continue
        if raw[0] in " \t" and key:  # continuation line
            current[key] += " " + raw.strip()
            continue
        name, _, value = raw.partition(":")
        key = name.strip().lower()
        current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def _from_sources(text: str) -> list[tuple[str, str, str, str]]:
    """(options, uri, suite, components) from a deb822 .sources file."""
    out = []
    for st in _deb822_stanzas(text):
        if st.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in st.get("types", "").split():
            continue
        opts = f"signed-by={st['signed-by']}" if st.get("signed-by", "").startswith("/") else ""
        for uri in st.get("uris", "").split():
            for suite in st.get("suites", "").split():
                out.append((opts, uri, suite, st.get("components", "")))
    return out


_ONE_LINE = re.compile(
    r"^deb\s+(?:\[(?P<opts>[^\]]*)\]\s+)?(?P<uri>\S+)\s+(?P<suite>\S+)\s+(?P<c>.*)$"
)


def _from_list(text: str) -> list[tuple[str, str, str, str]]:
    """(options, uri, suite, components) from a one-line .list file."""
    out = []
    for raw in text.splitlines():
        m = _ONE_LINE.match(raw.strip())
        if not m:
            continue
        opts = " ".join(o for o in (m["opts"] or "").split() if o.startswith("signed-by="))
        out.append((opts, m["uri"], m["suite"], m["c"]))
    return out


def main(argv: list[str]) -> int:
    suite = argv[1] if len(argv) > 1 else "bookworm"
    wanted = {suite, f"{suite}-updates", f"{suite}-security"}
    entries: list[tuple[str, str, str, str]] = []
    main_list = APT_DIR / "sources.list"
    if main_list.is_file():
        entries += _from_list(main_list.read_text())
    for f in sorted((APT_DIR / "sources.list.d").glob("*")):
        if f.suffix == ".list":
            entries += _from_list(f.read_text())
        elif f.suffix == ".sources":
            entries += _from_sources(f.read_text())
    seen = set()
    for opts, uri, s, comps in entries:
        if s not in wanted or "main" not in comps.split():
            continue
        line = f"deb [{opts}] {uri} {s} main" if opts else f"deb {uri} {s} main"
        if line not in seen:
            seen.add(line)
            print(line)
    if not seen:
        print(f"apt_sources: no enabled 'deb' entry for {suite} main in {APT_DIR}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
