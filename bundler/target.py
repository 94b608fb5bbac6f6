"""The target interpreter and platform a bundle is built for, and the wheel tags it accepts."""

from __future__ import annotations

import hashlib
import json
import platform
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

from packaging import tags

_PYTHON_RE: Final = re.compile(r"^3\.(\d{1,2})$")
_PLATFORM_RE: Final = re.compile(r"^[a-z0-9_]+$")
_IMPL_RE: Final = re.compile(r"^[a-z]{2}$")
_ABI_RE: Final = re.compile(r"^[a-z0-9_]+$")
_MANYLINUX_RE: Final = re.compile(r"^manylinux_(\d+)_(\d+)_([a-z0-9_]+)$")
_MUSLLINUX_RE: Final = re.compile(r"^musllinux_(\d+)_(\d+)_([a-z0-9_]+)$")
_MACOSX_RE: Final = re.compile(r"^macosx_(\d+)_(\d+)_([a-z0-9_]+)$")

# PEP 600 aliases of the legacy manylinux tags: (glibc minor, alias, architectures that had it).
_LEGACY_MANYLINUX: Final = (
    (
        17,
        "manylinux2014",
        frozenset({"x86_64", "i686", "aarch64", "armv7l", "ppc64", "ppc64le", "s390x"}),
    ),
    (12, "manylinux2010", frozenset({"x86_64", "i686"})),
    (5, "manylinux1", frozenset({"x86_64", "i686"})),
)
_LEGACY_TO_MINOR: Final = {alias: minor for minor, alias, _ in _LEGACY_MANYLINUX}

_MACOS_FAT_ARCHES: Final = frozenset({"universal2", "universal", "intel", "fat", "fat3", "fat64"})
_WINDOWS_MACHINES: Final = {"win32": "x86", "win_amd64": "AMD64", "win_arm64": "ARM64"}


@dataclass(frozen=True)
class Target:
    """One interpreter and platform: what the manifest records and what picks the wheels.

    ``platforms`` are wheel platform tags as written by the user (e.g.
    ``manylinux_2_28_x86_64``); :meth:`expanded_platforms` adds every older tag a machine
    with that platform also accepts. All platforms must share one operating system.
    """

    python: str  # "3.11"
    implementation: str  # "cp"
    abi: str  # "cp311"
    platforms: tuple[str, ...]

    def __post_init__(self) -> None:
        problems = _validate(self.python, self.implementation, self.abi, self.platforms)
        if problems:
            raise ValueError("; ".join(problems))

    # --- construction ------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        python: str,
        platforms: Sequence[str],
        *,
        implementation: str = "cp",
        abi: str | None = None,
    ) -> Target:
        """A target with the usual ABI for ``python`` (``cp311`` for 3.11) unless given.

        Raises:
            ValueError: a field is malformed (the message lists every problem).
        """
        if abi is None:
            abi = implementation + python.replace(".", "")
        return cls(python, implementation, abi, tuple(platforms))

    @classmethod
    def host(cls) -> Target:
        """The interpreter running this code, on this machine's most specific portable platform.

        On Linux that is the newest ``manylinux_2_X`` (or ``musllinux``) tag the machine
        supports; ``linux_*`` tags are left out because wheels tagged so are not portable.
        """
        python = f"{sys.version_info.major}.{sys.version_info.minor}"
        implementation = tags.interpreter_name()
        abi = next(iter(tags.sys_tags())).abi
        candidates = list(tags.platform_tags())
        portable = [p for p in candidates if p.startswith(("manylinux_", "musllinux_"))]
        return cls(python, implementation, abi, tuple((portable or candidates)[:1]))

    # --- serialisation -----------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``target`` object."""
        return {
            "python": self.python,
            "implementation": self.implementation,
            "abi": self.abi,
            "platforms": list(self.platforms),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Target:
        """The inverse of :meth:`to_json`; strict (exact keys, exact types).

        Raises:
            ValueError: keys missing or unknown, wrong types, or malformed values.
        """
        if not isinstance(data, Mapping):
            raise ValueError("target must be an object")
        expected = {"python", "implementation", "abi", "platforms"}
        if set(data) != expected:
            missing = sorted(expected - set(data))
            unknown = sorted(set(data) - expected)
            raise ValueError(f"target keys: missing {missing}, unknown {unknown}")
        for key in ("python", "implementation", "abi"):
            if not isinstance(data[key], str):
                raise ValueError(f"target.{key} must be a string")
        plats = data["platforms"]
        if not isinstance(plats, list) or not all(isinstance(p, str) for p in plats):
            raise ValueError("target.platforms must be a list of strings")
        return cls(data["python"], data["implementation"], data["abi"], tuple(plats))

    def cache_key(self) -> str:
        """A short stable digest of the target, used to name per-target cache records."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> str:
        """One line for messages, e.g. ``cp311 (python 3.11) on manylinux_2_17_x86_64``."""
        return f"{self.abi} (python {self.python}) on {', '.join(self.platforms)}"

    # --- tags --------------------------------------------------------------------------

    @property
    def python_version(self) -> tuple[int, int]:
        major, minor = self.python.split(".")
        return int(major), int(minor)

    def expanded_platforms(self) -> tuple[str, ...]:
        """Every platform tag the target accepts, most specific first, without duplicates."""
        seen: dict[str, None] = {}
        for plat in self.platforms:
            for tag in _expand_platform(plat):
                seen.setdefault(tag, None)
        return tuple(seen)

    @cached_property
    def _tags(self) -> tuple[tags.Tag, ...]:
        plats = self.expanded_platforms()
        version = self.python_version
        if self.implementation == "cp":
            specific: Iterator[tags.Tag] = tags.cpython_tags(version, [self.abi], plats)
        else:
            interpreter = f"{self.implementation}{version[0]}{version[1]}"
            specific = tags.generic_tags(interpreter, [self.abi], plats)
        interpreter = f"{self.implementation}{version[0]}{version[1]}"
        general = tags.compatible_tags(version, interpreter, plats)
        ordered: dict[tags.Tag, None] = {}
        for tag in (*specific, *general):
            ordered.setdefault(tag, None)
        return tuple(ordered)

    def supported_tags(self) -> tuple[tags.Tag, ...]:
        """Wheel tags this target can import, best first (the order pip prefers)."""
        return self._tags

    @cached_property
    def _priority(self) -> dict[tags.Tag, int]:
        return {tag: i for i, tag in enumerate(self._tags)}

    def tag_priority(self, wheel_tags: frozenset[tags.Tag]) -> int | None:
        """The rank of the best of ``wheel_tags`` (0 is best), or None if none fits."""
        ranks = [self._priority[t] for t in wheel_tags if t in self._priority]
        return min(ranks) if ranks else None

    def accepts(self, wheel_tags: frozenset[tags.Tag]) -> bool:
        """Whether a wheel with these tags can be installed for this target."""
        return self.tag_priority(wheel_tags) is not None

    # --- markers and pip ---------------------------------------------------------------

    def marker_environment(self) -> dict[str, str]:
        """PEP 508 marker variables for the target, for evaluating lock-file markers.

        Values that cannot be known for a foreign target are approximations:
        ``python_full_version`` is the host's when the minor version matches, else
        ``X.Y.0``; ``platform_release`` and ``platform_version`` are empty.
        """
        sys_platform, machine = _platform_info(self.platforms[0])
        host = f"{sys.version_info.major}.{sys.version_info.minor}"
        full = platform.python_version() if host == self.python else f"{self.python}.0"
        impl_name = {"cp": "cpython", "pp": "pypy"}.get(self.implementation, self.implementation)
        impl_display = {"cp": "CPython", "pp": "PyPy"}.get(self.implementation, impl_name)
        return {
            "implementation_name": impl_name,
            "implementation_version": full,
            "os_name": "nt" if sys_platform == "win32" else "posix",
            "platform_machine": machine,
            "platform_python_implementation": impl_display,
            "platform_release": "",
            "platform_system": {"linux": "Linux", "darwin": "Darwin", "win32": "Windows"}.get(
                sys_platform, ""
            ),
            "platform_version": "",
            "python_full_version": full,
            "python_version": self.python,
            "sys_platform": sys_platform,
        }

    def pip_download_args(self) -> list[str]:
        """The options that make ``pip download`` pick wheels for this target."""
        args = [
            "--only-binary=:all:",
            "--python-version",
            self.python,
            "--implementation",
            self.implementation,
            "--abi",
            self.abi,
        ]
        # pip expands only some manylinux aliases itself; pass the full list so pip and our
        # own compatibility check agree on which files fit.
        for plat in self.expanded_platforms():
            args += ["--platform", plat]
        return args


def _validate(python: str, implementation: str, abi: str, platforms: tuple[str, ...]) -> list[str]:
    problems: list[str] = []
    if not isinstance(python, str) or not _PYTHON_RE.fullmatch(python):
        problems.append(f"python {python!r} is not a version like '3.11'")
    if not isinstance(implementation, str) or not _IMPL_RE.fullmatch(implementation):
        problems.append(f"implementation {implementation!r} is not a tag like 'cp'")
    if not isinstance(abi, str) or not _ABI_RE.fullmatch(abi):
        problems.append(f"abi {abi!r} is not a tag like 'cp311'")
    if not isinstance(platforms, tuple) or not platforms:
        problems.append("platforms must name at least one platform tag")
        return problems
    bad = [p for p in platforms if not isinstance(p, str) or not _PLATFORM_RE.fullmatch(p)]
    if bad:
        problems.append(f"platform tag(s) {bad!r} are malformed (e.g. 'manylinux_2_17_x86_64')")
        return problems
    if "any" in platforms:
        problems.append("platform 'any' is not a machine; name the real platform tag")
    systems = sorted({_platform_info(p)[0] for p in platforms})
    if len(systems) > 1:
        problems.append(f"platforms mix operating systems ({', '.join(systems)}); pick one")
        return problems
    # One tree holds one build of each compiled package, so one architecture. macOS fat
    # tags (universal2, intel, ...) run on the thin architectures they contain.
    machines = sorted(
        {m for m in (_platform_info(p)[1] for p in platforms) if m not in _MACOS_FAT_ARCHES}
    )
    if len(machines) > 1:
        problems.append(
            f"platforms mix architectures ({', '.join(machines)}); a bundle holds one build "
            "of each package, so pack one bundle per architecture"
        )
    # Likewise one C library: a manylinux (glibc) extension module does not load on musl.
    families = sorted({f for f in (_libc_family(p) for p in platforms) if f})
    if len(families) > 1:
        problems.append(
            f"platforms mix C libraries ({', '.join(families)}); a bundle holds one build of "
            "each package, so pack one bundle for manylinux (glibc) and one for musllinux"
        )
    return problems


def _libc_family(plat: str) -> str | None:
    if plat.startswith("musllinux_"):
        return "musl"
    if plat.startswith("manylinux") or any(plat.startswith(a + "_") for a in _LEGACY_TO_MINOR):
        return "glibc"
    return None


def _platform_info(plat: str) -> tuple[str, str]:
    """(sys.platform, platform.machine()) for a platform tag."""
    if plat in _WINDOWS_MACHINES:
        return "win32", _WINDOWS_MACHINES[plat]
    if plat.startswith("macosx_"):
        m = _MACOSX_RE.match(plat)
        return "darwin", m.group(3) if m else ""
    for prefix in ("manylinux_", "musllinux_"):
        if plat.startswith(prefix):
            m = (_MANYLINUX_RE if prefix == "manylinux_" else _MUSLLINUX_RE).match(plat)
            return "linux", m.group(3) if m else ""
    for alias in _LEGACY_TO_MINOR:
        if plat.startswith(alias + "_"):
            return "linux", plat[len(alias) + 1 :]
    if plat.startswith("linux_"):
        return "linux", plat[len("linux_") :]
    return plat.split("_", 1)[0], plat.split("_", 1)[-1]


def _expand_platform(plat: str) -> Iterator[str]:
    """``plat`` and every older platform tag that a machine with ``plat`` also runs."""
    for alias, minor in _LEGACY_TO_MINOR.items():
        if plat.startswith(alias + "_"):
            plat = f"manylinux_2_{minor}_{plat[len(alias) + 1 :]}"
            break
    if m := _MANYLINUX_RE.match(plat):
        major, minor, arch = int(m.group(1)), int(m.group(2)), m.group(3)
        if major != 2:
            yield plat
            return
        # Same floor as packaging: glibc 2.5 for x86 (manylinux1), 2.17 elsewhere.
        floor = 5 if arch in {"x86_64", "i686"} else 17
        for m_minor in range(minor, floor - 1, -1):
            yield f"manylinux_2_{m_minor}_{arch}"
            for legacy_minor, alias, arches in _LEGACY_MANYLINUX:
                if legacy_minor == m_minor and arch in arches:
                    yield f"{alias}_{arch}"
        return
    if m := _MUSLLINUX_RE.match(plat):
        major, minor, arch = int(m.group(1)), int(m.group(2)), m.group(3)
        for m_minor in range(minor, -1, -1):
            yield f"musllinux_{major}_{m_minor}_{arch}"
        return
    if m := _MACOSX_RE.match(plat):
        yield from tags.mac_platforms((int(m.group(1)), int(m.group(2))), m.group(3))
        return
    yield plat
