"""The requirements lock: compiling it with pip-tools, and strictly parsing it (pinned + hashed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from packaging.markers import Marker, UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..errors import LockError, ResolveError, escape
from ..formats.source import read_regular

if TYPE_CHECKING:
    from ..target import Target

LOCK_REMEDY: Final = (
    "regenerate it with `airgap lock requirements.in -o requirements.lock`, or pin each "
    "requirement with == and add its --hash=sha256:... values"
)

# Options that only say where packages come from. The lock's sha256 hashes pin the exact
# files, so the source cannot change what gets installed; pack downloads through pip's own
# configuration (pip.conf, PIP_INDEX_URL) instead. These lines are ignored.
IGNORED_OPTIONS: Final = frozenset(
    {
        "-i",
        "--index-url",
        "--extra-index-url",
        "-f",
        "--find-links",
        "--trusted-host",
        "--no-index",
        "--prefer-binary",
        "--only-binary",
        "--pre",
    }
)
# Everything else that starts with "-" is refused: -r/-c would make the lock depend on
# other files, -e and --no-binary mean source builds, and unknown options cannot be honoured.

_HASH_RE: Final = re.compile(r"(?:^|\s)--hash(?:=|\s+)(\S+)")
_OPTION_RE: Final = re.compile(r"(?:^|\s)(--?[A-Za-z][\w-]*)")
_COMMENT_RE: Final = re.compile(r"(^|\s+)#.*$")
_SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class LockedRequirement:
    """One pinned, hashed line of a lock: ``name==version`` plus its allowed sha256 digests."""

    name: str  # canonical (PEP 503) name, e.g. "scikit-learn"
    version: str  # as written after "=="
    hashes: frozenset[str]  # lowercase sha256 hex digests of the allowed files
    markers: str | None = None  # PEP 508 environment marker, if any
    line: int = 0  # 1-based line number in the lock (0 when not from a file)

    def applies_to(self, target: Target) -> bool:
        """Whether the requirement's marker holds for ``target`` (True without a marker).

        Raises:
            LockError: the marker uses a variable that cannot be evaluated.
        """
        if self.markers is None:
            return True
        try:
            return Marker(self.markers).evaluate(dict(target.marker_environment()))
        except (UndefinedComparison, UndefinedEnvironmentName) as e:
            raise LockError(
                f"line {self.line}: cannot evaluate marker {self.markers!r} for target "
                f"{target.describe()}: {e}",
                remedy="simplify the marker in requirements.in and lock again",
            ) from e

    def matches(self, name: str, version: str | Version) -> bool:
        """Whether a distribution's name and version (e.g. from a wheel file name) are this pin."""
        if canonicalize_name(name) != self.name:
            return False
        try:
            return Version(str(version)) == Version(self.version)
        except InvalidVersion:
            return False

    def pin(self) -> str:
        """``name==version``."""
        return f"{self.name}=={self.version}"

    def render(self) -> str:
        """The requirement as a pip ``--require-hashes`` line (hashes sorted, one line)."""
        marker = f" ; {self.markers}" if self.markers else ""
        hashes = "".join(f" --hash=sha256:{h}" for h in sorted(self.hashes))
        return f"{self.pin()}{marker}{hashes}"


def render_lock(reqs: Iterable[LockedRequirement]) -> str:
    """A deterministic, pip-installable requirements file for ``reqs`` (sorted by name).

    Used for the generated ``requirements.txt`` files, e.g. ``wheels/requirements.txt`` in
    dynamic mode: install it with ``pip install --no-index --find-links wheels
    --require-hashes -r wheels/requirements.txt``.
    """
    lines = [r.render() for r in sorted(reqs, key=lambda r: (r.name, r.version))]
    return "".join(line + "\n" for line in lines)


def for_target(reqs: Iterable[LockedRequirement], target: Target) -> tuple[LockedRequirement, ...]:
    """The requirements whose markers hold for ``target``, sorted by name.

    Raises:
        LockError: two requirements for the same name both apply (every clash listed).
    """
    chosen: dict[str, LockedRequirement] = {}
    clashes: list[str] = []
    for req in reqs:
        if not req.applies_to(target):
            continue
        if req.name in chosen:
            clashes.append(f"{req.name} (lines {chosen[req.name].line} and {req.line})")
            continue
        chosen[req.name] = req
    if clashes:
        raise LockError(
            f"the lock pins the same package twice for target {target.describe()}: "
            + ", ".join(clashes),
            remedy="keep one pin per package, or make their markers exclusive",
        )
    return tuple(chosen[name] for name in sorted(chosen))


# --- parsing ---------------------------------------------------------------------------


def parse_lock(path: Path) -> tuple[LockedRequirement, ...]:
    """Read and strictly parse a hashed lock file.

    Raises:
        LockError: the file cannot be read, or some lines are not pinned with ``==`` or
            carry no sha256 hash, or are malformed; the message lists every offender with
            its line number.
    """
    try:
        # A FIFO or device named as the lock is refused at once (read_regular).
        raw = read_regular(
            path, lambda reason: LockError(f"the lock {escape(str(path))} {reason}"), 64 << 20
        )
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LockError(
            f"cannot read the lock {path}: {e}", remedy="check the path in bundle.toml"
        ) from e
    return parse_lock_text(text, source=str(path))


def parse_lock_text(text: str, *, source: str = "lock") -> tuple[LockedRequirement, ...]:
    """Parse lock text (see :func:`parse_lock`); ``source`` names it in messages.

    Rules: ``#`` comments and blank lines are skipped; a trailing backslash continues a
    line; source options (``--index-url``, ``--extra-index-url``, ``--find-links``,
    ``--trusted-host``, ``--no-index``, ``--prefer-binary``, ``--only-binary``, ``--pre``)
    are ignored; every other option line (``-r``, ``-c``, ``-e``, ``--no-binary``, ...) is
    refused. Each requirement must be ``name==version`` (no wildcard), optionally with
    extras (dropped: every dependency is pinned on its own line) and a ``;`` marker, and
    carry at least one ``--hash=sha256:<64 hex>``. URL and path requirements are refused.

    Raises:
        LockError: every offending line, at once.
    """
    offenders: list[str] = []
    reqs: list[LockedRequirement] = []
    seen: dict[tuple[str, str | None], int] = {}
    for lineno, logical in _logical_lines(text):
        try:
            req = _parse_line(logical, lineno)
        except _LineError as e:
            offenders.append(f"line {lineno}: {e}")
            continue
        if req is None:
            continue
        key = (req.name, req.markers)
        if key in seen:
            offenders.append(f"line {lineno}: {req.name} is already pinned on line {seen[key]}")
            continue
        seen[key] = lineno
        reqs.append(req)
    if offenders:
        raise LockError(
            f"{source}: {len(offenders)} line(s) refused: " + "; ".join(offenders),
            remedy=LOCK_REMEDY,
        )
    return tuple(reqs)


class _LineError(Exception):
    """One offending line; collected by parse_lock_text."""


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """(first physical line number, joined line without comments), as pip reads them."""
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        # pip strips comments before joining continuations, so a comment ends a line's text
        # but a backslash before it still continues.
        line = _COMMENT_RE.sub("", raw)
        if not buffer:
            start = number
        if line.endswith("\\"):
            buffer.append(line[:-1])
            continue
        buffer.append(line)
        joined = " ".join(part.strip() for part in buffer).strip()
        buffer = []
        if joined:
            yield start, joined
    if buffer:
        joined = " ".join(part.strip() for part in buffer).strip()
        if joined:
            yield start, joined


def _parse_line(line: str, lineno: int) -> LockedRequirement | None:
    if line.startswith("-"):
        option = line.split("=", 1)[0].split(None, 1)[0]
        if option in IGNORED_OPTIONS:
            return None
        raise _LineError(
            f"option {option} is not allowed in a lock (only source options such as "
            "--index-url are accepted, and they are ignored)"
        )
    hashes: set[str] = set()
    problems: list[str] = []
    for value in _HASH_RE.findall(line):
        algo, _, digest = value.partition(":")
        if algo != "sha256":
            problems.append(f"hash {value[:20]}... is not sha256")
        elif not _SHA256_RE.fullmatch(digest):
            problems.append(f"hash sha256:{digest[:16]}... is not 64 lowercase hex digits")
        else:
            hashes.add(digest)
    spec = _HASH_RE.sub(" ", line).strip()
    if inline := _OPTION_RE.search(spec):
        raise _LineError(f"option {inline.group(1)} is not allowed on a requirement line")
    try:
        req = Requirement(spec)
    except InvalidRequirement as e:
        raise _LineError(f"{spec!r} is not a valid requirement ({e})") from e
    if req.url:
        raise _LineError(f"{req.name} is a direct URL or path reference; pin name==version")
    specifiers = list(req.specifier)
    pinned = (
        len(specifiers) == 1 and specifiers[0].operator == "==" and "*" not in specifiers[0].version
    )
    if not pinned:
        problems.insert(0, f"{spec} is not pinned with == to one version")
    if not hashes:
        problems.append("no --hash=sha256:..." if problems else f"{spec} has no --hash=sha256:...")
    if problems:
        raise _LineError(", ".join(problems))
    try:
        Version(specifiers[0].version)
    except InvalidVersion as e:
        raise _LineError(f"{spec}: {e}") from e
    markers = str(req.marker) if req.marker is not None else None
    return LockedRequirement(
        name=canonicalize_name(req.name),
        version=specifiers[0].version,
        hashes=frozenset(hashes),
        markers=markers,
        line=lineno,
    )


# --- compiling (the resolver, behind a small interface) --------------------------------


class Resolver(Protocol):
    """Turns a requirements.in into a hashed lock file."""

    def compile(
        self, requirements_in: Path, output: Path, *, upgrade: bool, header_command: str
    ) -> None:
        """Write ``output``; raise ResolveError with the resolver's own message on failure."""


@dataclass(frozen=True)
class PipToolsResolver:
    """pip-tools' pip-compile, run as ``python -m piptools compile`` in a subprocess.

    It resolves for the interpreter ``python`` (default: this one) and uses pip's own
    configuration for the index.
    """

    python: str = sys.executable
    extra_args: tuple[str, ...] = ()

    def compile(
        self, requirements_in: Path, output: Path, *, upgrade: bool, header_command: str
    ) -> None:
        cwd = requirements_in.parent
        # Relative names keep absolute paths of this machine out of the lock's comments.
        out_arg = os.path.relpath(output, cwd)
        cmd = [
            self.python,
            "-m",
            "piptools",
            "compile",
            "--quiet",
            "--generate-hashes",
            "--allow-unsafe",  # pin pip/setuptools too when needed: the lock must be complete
            "--strip-extras",
            "--resolver=backtracking",
            "--no-emit-index-url",  # no host names or local paths in the lock
            "--no-emit-trusted-host",
            "--no-emit-find-links",
            "--output-file",
            out_arg,
            *(["--upgrade"] if upgrade else []),
            *self.extra_args,
            requirements_in.name,
        ]
        env = {**os.environ, "CUSTOM_COMPILE_COMMAND": header_command}
        try:
            proc = subprocess.run(
                cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False
            )
        except OSError as e:
            raise ResolveError(
                f"cannot run {self.python} -m piptools: {e}",
                remedy="install pip-tools (pip install pip-tools) for that interpreter",
            ) from e
        if proc.returncode != 0:
            raise ResolveError(
                f"pip-compile failed for {requirements_in}: {_pip_message(proc.stderr)}",
                remedy="fix requirements.in (names, versions, platform support) and retry",
            )


def _pip_message(stderr: str) -> str:
    """The useful part of pip's error output: its ERROR lines, else the last lines."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("ERROR", "error", "Could not", "No matching"))]
    if "No module named piptools" in stderr:
        errors = ["pip-tools is not installed for this interpreter"]
    chosen = errors or lines[-3:] or ["(no output)"]
    return " | ".join(chosen)[:2000]


def compile_lock(
    requirements_in: Path,
    output: Path,
    *,
    upgrade: bool = False,
    resolver: Resolver | None = None,
) -> tuple[LockedRequirement, ...]:
    """Resolve ``requirements_in`` into a hashed lock at ``output`` and return its pins.

    The result is parsed back with :func:`parse_lock`, so a lock this returns is always
    acceptable to ``airgap pack``.

    Raises:
        ResolveError: the resolver failed (its message is included).
        LockError: the written lock is not fully pinned and hashed.
    """
    if not requirements_in.is_file():
        raise ResolveError(
            f"{requirements_in} does not exist", remedy="pass the path of a requirements.in"
        )
    resolver = resolver or PipToolsResolver()
    header = (
        f"airgap lock {requirements_in.name} -o {os.path.relpath(output, requirements_in.parent)}"
    )
    resolver.compile(requirements_in, output, upgrade=upgrade, header_command=header)
    return parse_lock(output)
