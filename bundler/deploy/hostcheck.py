"""Does a host (or image, or interpreter) fit a bundle's target? Pure decisions, no probing.

The facts come from ``bundler.deploy.hostprobe`` (this machine, an interpreter, a base image); here
they are compared with the manifest's ``target``: operating system, architecture, C library
and its version (``manylinux_2_28`` needs glibc 2.28 or newer, ``musllinux_1_2`` musl 1.2),
and, where an interpreter was asked, its Python version, implementation and ABI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from ..errors import HostMismatchError
from ..formats.manifest import Manifest, Target

_MANYLINUX_RE: Final = re.compile(r"^manylinux_(\d+)_(\d+)_([a-z0-9_]+)$")
_MUSLLINUX_RE: Final = re.compile(r"^musllinux_(\d+)_(\d+)_([a-z0-9_]+)$")
_MACOSX_RE: Final = re.compile(r"^macosx_\d+_\d+_([a-z0-9_]+)$")
_VERSION_RE: Final = re.compile(r"^(\d+)\.(\d+)")
# PEP 600: the legacy aliases are manylinux_2_17 / 2_12 / 2_5.
_LEGACY_GLIBC: Final = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}
_WINDOWS: Final = {"win32": "x86", "win_amd64": "x86_64", "win_arm64": "aarch64"}
# The kernel's and the tags' names for one architecture differ between systems.
_MACHINE_ALIASES: Final = {
    "amd64": "x86_64",
    "x64": "x86_64",
    "arm64": "aarch64",
    "i386": "i686",
    "i586": "i686",
    "x86": "i686",
}
_MAC_ANY: Final = {
    "universal2": frozenset({"x86_64", "aarch64"}),
    "universal": frozenset({"x86_64", "i686", "ppc", "ppc64"}),
    "intel": frozenset({"x86_64", "i686"}),
}
_IMPLEMENTATIONS: Final = {"cpython": "cp", "pypy": "pp", "ironpython": "ip", "jython": "jy"}
_IMPL_NAMES: Final = {"cp": "CPython", "pp": "PyPy", "ip": "IronPython", "jy": "Jython"}

Libc = Literal["glibc", "musl"]


def normalise_machine(machine: str) -> str:
    """One name per architecture: ``AMD64`` and ``x86_64`` are both ``x86_64``."""
    low = machine.lower()
    return _MACHINE_ALIASES.get(low, low)


def implementation_tag(name: str) -> str:
    """The wheel tag of ``sys.implementation.name``: ``cpython`` -> ``cp``."""
    return _IMPLEMENTATIONS.get(name, name)


@dataclass(frozen=True)
class HostFacts:
    """What a machine, an interpreter or an image reported about itself.

    ``python``, ``implementation`` and ``abi`` are None when no interpreter of the target
    was asked (unpack needs no Python of the bundle's version).
    """

    machine: str  # normalised: x86_64, aarch64, ...
    system: str  # sys.platform: linux, darwin, win32
    libc: Libc | None  # None: not Linux, or a C library we do not recognise
    libc_version: tuple[int, int] | None
    python: str | None = None  # "3.11"
    implementation: str | None = None  # wheel tag: cp, pp
    abi: str | None = None  # cp311, cp313t
    executable: str | None = None

    @classmethod
    def from_probe(cls, data: Mapping[str, Any]) -> HostFacts:
        """Facts from the JSON object ``bundler.deploy.hostprobe.PROBE`` prints.

        Raises:
            ValueError: not the probe's output (missing keys or wrong types).
        """
        if not isinstance(data, Mapping):
            raise ValueError("the probe did not print a JSON object")
        for key in ("machine", "system", "python", "implementation", "executable"):
            if not isinstance(data.get(key), str):
                raise ValueError(f"the probe's {key!r} is not a string")
        libc = data.get("libc")
        if libc not in ("glibc", "musl", None):
            libc = None
        version = _version(data.get("libc_version"))
        impl = implementation_tag(str(data["implementation"]))
        python = str(data["python"])
        flags = data.get("abi_flags")
        abi = None
        if impl == "cp" and _VERSION_RE.match(python):
            abi = "cp" + python.replace(".", "") + (flags if isinstance(flags, str) else "")
        return cls(
            machine=normalise_machine(str(data["machine"])),
            system=str(data["system"]),
            libc=libc,
            libc_version=version if libc else None,
            python=python,
            implementation=impl,
            abi=abi,
            executable=str(data["executable"]),
        )

    def platform_only(self) -> HostFacts:
        """The same machine, without the interpreter's facts."""
        return HostFacts(self.machine, self.system, self.libc, self.libc_version)

    def describe(self) -> str:
        """e.g. ``linux x86_64 with glibc 2.36, CPython 3.11``; only what is known."""
        text = f"{self.system} {self.machine}"
        if self.libc:
            text += f" with {self.libc}"
            if self.libc_version:
                text += " {}.{}".format(*self.libc_version)
        if self.python is not None:
            impl = _IMPL_NAMES.get(self.implementation or "", self.implementation)
            text += f", {impl} {self.python}"
            if self.abi and self.abi != "cp" + self.python.replace(".", ""):
                text += f" ({self.abi})"
        return text

    def platform_tag(self) -> str | None:
        """This machine's most specific portable tag, for a remedy (manylinux_2_36_x86_64)."""
        if self.system != "linux" or self.libc is None or self.libc_version is None:
            return None
        prefix = "manylinux" if self.libc == "glibc" else "musllinux"
        return "{}_{}_{}_{}".format(prefix, *self.libc_version, self.machine)


def _version(value: object) -> tuple[int, int] | None:
    if not isinstance(value, str):
        return None
    m = _VERSION_RE.match(value)
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass(frozen=True)
class PlatformNeed:
    """What one platform tag asks of a machine."""

    tag: str
    system: str
    machines: frozenset[str]  # any of these
    libc: Libc | None = None
    libc_min: tuple[int, int] | None = None

    def describe(self) -> str:
        text = f"{self.system} {'/'.join(sorted(self.machines))}"
        if self.libc:
            text += f", {self.libc}"
            if self.libc_min:
                text += " >= {}.{}".format(*self.libc_min)
        return text


def platform_need(tag: str) -> PlatformNeed | None:
    """What ``tag`` needs; None for tags that run anywhere (``any``) or that we cannot read."""
    for alias, minor in _LEGACY_GLIBC.items():
        if tag.startswith(alias + "_"):
            tag_arch = tag[len(alias) + 1 :]
            return PlatformNeed(tag, "linux", frozenset({tag_arch}), "glibc", (2, minor))
    if m := _MANYLINUX_RE.match(tag):
        arch = normalise_machine(m.group(3))
        return PlatformNeed(
            tag, "linux", frozenset({arch}), "glibc", (int(m.group(1)), int(m.group(2)))
        )
    if m := _MUSLLINUX_RE.match(tag):
        arch = normalise_machine(m.group(3))
        return PlatformNeed(
            tag, "linux", frozenset({arch}), "musl", (int(m.group(1)), int(m.group(2)))
        )
    if tag.startswith("linux_"):
        return PlatformNeed(tag, "linux", frozenset({normalise_machine(tag[6:])}))
    if m := _MACOSX_RE.match(tag):
        arch = m.group(1)
        machines = _MAC_ANY.get(arch, frozenset({normalise_machine(arch)}))
        return PlatformNeed(tag, "darwin", machines)
    if tag in _WINDOWS:
        return PlatformNeed(tag, "win32", frozenset({_WINDOWS[tag]}))
    return None


@dataclass(frozen=True)
class Problem:
    """One way the host does not fit the target."""

    field: Literal["os", "architecture", "libc", "libc version", "python", "implementation", "abi"]
    text: str  # e.g. "glibc 2.28 or newer needed"


def check(target: Target, facts: HostFacts) -> list[Problem]:
    """Every way ``facts`` do not fit ``target`` (empty: it fits).

    Every platform the target lists must run on the host: the site-packages tree may hold a
    wheel for any of them. Tags that run anywhere or that are not recognised are skipped, as
    is a C library the probe could not identify. The Python fields are compared only when
    ``facts`` carry them.
    """
    problems: list[Problem] = []

    def add(problem: Problem) -> None:
        if problem not in problems:
            problems.append(problem)

    for need in filter(None, map(platform_need, target.platforms)):
        if need.system != facts.system:
            add(Problem("os", f"{need.system} needed"))
            continue
        if facts.machine not in need.machines:
            add(Problem("architecture", f"{'/'.join(sorted(need.machines))} needed"))
        if need.libc is None or facts.libc is None:
            continue
        if need.libc != facts.libc:
            add(Problem("libc", f"{need.libc} needed, not {facts.libc}"))
        elif need.libc_min and facts.libc_version and facts.libc_version < need.libc_min:
            version = "{}.{}".format(*need.libc_min)
            add(Problem("libc version", f"{need.libc} {version} or newer needed"))
    if facts.python is not None:
        problems += _python_problems(target, facts)
    return problems


def _python_problems(target: Target, facts: HostFacts) -> list[Problem]:
    out: list[Problem] = []
    if facts.implementation != target.implementation:
        want = _IMPL_NAMES.get(target.implementation, target.implementation)
        out.append(Problem("implementation", f"{want} needed"))
    if facts.python != target.python:
        out.append(Problem("python", f"Python {target.python} needed"))
    elif (
        not out
        and target.implementation == "cp"
        and target.abi.startswith("cp")
        and facts.abi is not None
        and facts.abi != target.abi
    ):
        # Same version, other ABI: a free-threaded 3.13t cannot load cp313 extensions.
        out.append(Problem("abi", f"ABI {target.abi} needed, not {facts.abi}"))
    return out


def target_summary(target: Target) -> str:
    """e.g. ``cp311 on manylinux_2_28_aarch64 (linux aarch64, glibc >= 2.28)``."""
    needs = [n for n in map(platform_need, target.platforms) if n is not None]
    text = f"{target.abi} (python {target.python}) on {', '.join(target.platforms)}"
    if needs:
        text += f" ({'; '.join(dict.fromkeys(n.describe() for n in needs))})"
    return text


def _remedy(target: Target, facts: HostFacts, problems: Sequence[Problem], doing: str) -> str:
    fields = {p.field for p in problems}
    if doing == "build":
        if fields <= {"python", "implementation", "abi"}:
            return (
                f"use a base image with {target.abi} (python {target.python}) as base_image in "
                f'bundle.toml, or pack again with [target] python = "{facts.python}"'
            )
        return (
            "use a base image (and Docker engine) for the bundle's platform, or pack again "
            "for the image's platform"
            + (f': [target] platforms = ["{facts.platform_tag()}"]' if facts.platform_tag() else "")
        )
    if fields <= {"python", "implementation", "abi"}:
        return (
            f"pass --python with a {_IMPL_NAMES.get(target.implementation, 'Python')} "
            f"{target.python} (e.g. `pyenv install {target.python}`), leave --python out to "
            f'search this host for one, or pack again with [target] python = "{facts.python}"'
        )
    tag = facts.platform_tag()
    again = f'pack again for this host ([target] platforms = ["{tag}"])' if tag else "pack again"
    if fields & {"os", "architecture"}:
        # The Docker path on this host has this host's architecture: no way around it here.
        text = f"serve it on a machine the target fits, or {again}"
    else:
        text = f"{again}, or use the Docker path (airgap build) with a base image that fits"
    if doing == "unpack":
        text += "; pass --no-host-check to unpack it here anyway"
    return text


def mismatch(
    manifest: Manifest, facts: HostFacts, problems: Sequence[Problem], *, subject: str, doing: str
) -> HostMismatchError:
    """The one-line error naming both sides: the bundle's target and ``subject``'s facts.

    ``doing`` is "unpack", "serve" or "build" and picks the remedy.
    """
    return HostMismatchError(
        f"bundle {manifest.name} {manifest.version} targets {target_summary(manifest.target)}; "
        f"{subject} is {facts.describe()} ({', '.join(p.text for p in problems)})",
        remedy=_remedy(manifest.target, facts, problems, doing),
    )


def require(manifest: Manifest, facts: HostFacts, *, subject: str, doing: str) -> None:
    """Raise unless ``facts`` fit the bundle's target.

    Raises:
        HostMismatchError: one line naming the target, ``subject``'s facts and the remedy.
    """
    problems = check(manifest.target, facts)
    if problems:
        raise mismatch(manifest, facts, problems, subject=subject, doing=doing)


def unpack_verdict(manifest: Manifest, facts: HostFacts) -> str | None:
    """Whether `airgap unpack` may write a bundle whose target this host does not fit.

    A bundle with a base image may be meant for a Docker engine whose image has the libc and
    Python it needs (or for an engine elsewhere, DOCKER_HOST): a warning line is returned.
    A bundle without one can only be served here by the local runner: refused.

    Raises:
        HostMismatchError: no base image and the host does not fit.
    """
    facts = facts.platform_only()  # the unpacking host needs no Python of the target
    problems = check(manifest.target, facts)
    if not problems:
        return None
    error = mismatch(manifest, facts, problems, subject="this host", doing="unpack")
    if manifest.base_image is None:
        raise error
    return (
        f"host check: {error.message}; `airgap serve` will refuse it here, `airgap build` "
        "checks the base image instead"
    )


__all__ = [
    "HostFacts",
    "PlatformNeed",
    "Problem",
    "check",
    "mismatch",
    "normalise_machine",
    "platform_need",
    "require",
    "target_summary",
    "unpack_verdict",
]
