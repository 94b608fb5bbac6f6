"""The bootstrap kit: airgap-bundler's own wheels for a target, an installer and a signed list.

``airgap kit`` answers "how does the tool itself reach the isolated host, and who checked
it?". The kit is a plain ustar file (like a bundle's outer layer) holding one folder,
``airgap-kit/`` (docs/kit.md):

    install.sh          POSIX sh: sha256sum -c, optional openssl signature check, host check,
                        python -m venv --without-pip, pip (run from its wheel) --no-index
                        --require-hashes, airgap on PATH
    requirements.lock   every wheel pinned with its sha256, for pip --require-hashes
    wheels/*.whl        airgap-bundler (built here, reproducibly) and its dependencies
                        for the target, pip included
    SHA256SUMS          sha256sum format, of the three above
    kit.json            canonical JSON: each file's sha256, the target, the C-library floor,
                        the tool version; kit.json.sig is its raw Ed25519 signature

The pure parts (which wheels a target needs, the C-library floor, the manifest, the
installer text) take values; the edges (building the wheel, pip download, writing) do I/O.
"""

from __future__ import annotations

import email.parser
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final, Protocol

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import (
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_wheel_filename,
)
from packaging.version import Version

from ..errors import DownloadError, KitError
from ..formats.archive import MemberSource, TarWriter
from ..formats.signing import key_id, load_private_key, sign
from ..progress import NullProgress, Progress
from ..target import Target
from .assemble import _atomic_output
from .lock import LockedRequirement, for_target, parse_lock, render_lock
from .wheels import LocalWheelSource, fetch_wheels, sha256_file

KIT_FORMAT: Final = "airgap-kit/1"
KIT_ROOT: Final = "airgap-kit"
PROJECT: Final = "airgap-bundler"
INSTALLER: Final = "install.sh"
LOCK_NAME: Final = "requirements.lock"
SUMS_NAME: Final = "SHA256SUMS"
MANIFEST_NAME: Final = "kit.json"
SIGNATURE_NAME: Final = "kit.json.sig"
WHEEL_DIR: Final = "wheels"

# Zip (and so wheel) timestamps start in 1980: an older SOURCE_DATE_EPOCH cannot be honoured.
_ZIP_EPOCH: Final = 315_532_800
# Rounds of "download what the target's markers add": a dependency that only the target's
# Python needs (pip evaluates markers for the packing interpreter) is fetched in a next round.
_MAX_ROUNDS: Final = 5
_MAX_METADATA: Final = 4 << 20  # bytes of a wheel's METADATA we read
_USTAR_NAME: Final = 100  # bytes of a ustar header's name field (a member's last component)
_MANYLINUX_RE: Final = re.compile(r"^manylinux_(\d+)_(\d+)_")
_MUSLLINUX_RE: Final = re.compile(r"^musllinux_(\d+)_(\d+)_")
_LEGACY_GLIBC: Final = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
# Files of a checkout that a wheel build reads; everything else (tests, .git, caches) is
# left out so the wheel depends on the package's sources alone.
_SOURCE_FILES: Final = ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "MANIFEST.in")
_PACKAGE_DIR: Final = "bundler"
_TEMPLATE: Final = "kit_install.sh"  # beside this module; @NAME@ placeholders


# ---- values -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LibcFloor:
    """The oldest C library the kit's compiled wheels load on: e.g. glibc 2.17."""

    family: str  # "glibc" | "musl"
    version: tuple[int, int]

    def __str__(self) -> str:
        return f"{self.family} {self.version[0]}.{self.version[1]}"

    def to_json(self) -> dict[str, Any]:
        return {"family": self.family, "min_version": f"{self.version[0]}.{self.version[1]}"}


@dataclass(frozen=True)
class KitWheel:
    """One wheel in the kit."""

    name: str  # canonical (PEP 503)
    version: str
    path: Path  # where it is on this machine (the cache, or the build folder)
    sha256: str
    size: int
    file: str  # its name in the kit: path.name, or a shorter one (see kit_file_name)

    @property
    def member(self) -> str:
        return f"{WHEEL_DIR}/{self.file}"


@dataclass(frozen=True)
class KitResult:
    """What ``build_kit`` wrote."""

    out: Path
    size: int
    sha256: str
    created: int
    target: Target
    tool_version: str
    libc: LibcFloor | None
    signer: str
    wheels: tuple[KitWheel, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "kit": str(self.out),
            "size": self.size,
            "sha256": self.sha256,
            "created": self.created,
            "target": self.target.to_json(),
            "tool_version": self.tool_version,
            "libc": None if self.libc is None else self.libc.to_json(),
            "signer": self.signer,
            "wheels": [
                {"name": w.name, "version": w.version, "file": w.file, "sha256": w.sha256}
                for w in self.wheels
            ],
        }


# ---- the pure core ----------------------------------------------------------------------


def wheel_libc_floor(wheel_file: str, target: Target) -> LibcFloor | None:
    """The C library a wheel needs on ``target``: the oldest among its tags the target accepts
    (any one of them is enough), or None for a wheel that needs no particular C library."""
    _, _, _, wheel_tags = parse_wheel_filename(wheel_file)
    accepted = set(target.supported_tags())
    floors: list[LibcFloor] = []
    for tag in wheel_tags:
        if tag not in accepted:
            continue
        floor = platform_libc(tag.platform)
        if floor is None:
            return None  # e.g. a py3-none-any wheel: no C library at all
        floors.append(floor)
    return min(floors, key=lambda f: f.version) if floors else None


def platform_libc(plat: str) -> LibcFloor | None:
    """``manylinux_2_28_x86_64`` -> glibc 2.28; ``musllinux_1_2_*`` -> musl 1.2; else None."""
    if m := _MANYLINUX_RE.match(plat):
        return LibcFloor("glibc", (int(m.group(1)), int(m.group(2))))
    if m := _MUSLLINUX_RE.match(plat):
        return LibcFloor("musl", (int(m.group(1)), int(m.group(2))))
    for alias, version in _LEGACY_GLIBC.items():
        if plat.startswith(alias + "_"):
            return LibcFloor("glibc", version)
    return None


def kit_libc_floor(wheel_files: Iterable[str], target: Target) -> LibcFloor | None:
    """The kit's floor: the newest C library any one of its wheels needs."""
    floors = [f for f in (wheel_libc_floor(w, target) for w in wheel_files) if f is not None]
    return max(floors, key=lambda f: f.version) if floors else None


def requirements_of(
    requires_dist: Sequence[str], extras: Iterable[str], target: Target
) -> list[Requirement]:
    """The ``Requires-Dist`` entries that hold on ``target`` for the requested extras.

    Raises:
        KitError: an entry is not a valid requirement.
    """
    env: dict[str, str] = dict(target.marker_environment())
    wanted = ["", *sorted(canonicalize_name(e) for e in extras)]
    out: list[Requirement] = []
    for text in requires_dist:
        try:
            req = Requirement(text)
        except InvalidRequirement as e:
            raise KitError(f"a wheel declares an invalid requirement {text!r}: {e}") from e
        if req.marker is None or any(
            Marker(str(req.marker)).evaluate({**env, "extra": extra}) for extra in wanted
        ):
            out.append(req)
    return out


@dataclass(frozen=True)
class WheelInfo:
    """What the closure needs of a wheel: its pin and its declared requirements."""

    name: NormalizedName
    version: str
    requires_dist: tuple[str, ...]


def closure(
    roots: Sequence[Requirement], wheels: Mapping[NormalizedName, WheelInfo], target: Target
) -> tuple[set[NormalizedName], list[Requirement]]:
    """The wheels ``roots`` need on ``target``, following each wheel's requirements with the
    target's markers; and the requirements no wheel in ``wheels`` satisfies."""
    needed: set[NormalizedName] = set()
    missing: list[Requirement] = []
    seen: set[tuple[NormalizedName, frozenset[str]]] = set()
    queue: deque[Requirement] = deque(roots)
    while queue:
        req = queue.popleft()
        name = canonicalize_name(req.name)
        info = wheels.get(name)
        if info is None or not req.specifier.contains(Version(info.version), prereleases=True):
            missing.append(req)
            continue
        needed.add(name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        queue.extend(requirements_of(info.requires_dist, req.extras, target))
    return needed, missing


def kit_file_name(wheel_file: str, target: Target) -> str:
    """The wheel's name in the kit: unchanged when it fits a ustar name field (100 bytes),
    else with only the one tag ``target`` prefers among the wheel's own.

    Some wheels carry three or four platform tags (``manylinux1_x86_64.manylinux_2_28_x86_64
    .manylinux_2_5_x86_64``), which a plain ustar header cannot hold without pax records. pip
    reads the tags from the file name and checks the bytes against the lock's sha256, so a
    name with a subset of the wheel's tags installs the same file.
    """
    if len(wheel_file.encode()) <= _USTAR_NAME:
        return wheel_file
    _, _, build, wheel_tags = parse_wheel_filename(wheel_file)
    best = min(
        (t for t in wheel_tags if target.tag_priority(frozenset({t})) is not None),
        key=lambda t: target.tag_priority(frozenset({t})) or 0,
    )
    head = wheel_file.split("-")[:2]  # the distribution and version, as the file spells them
    build_part = [f"{build[0]}{build[1]}"] if build else []
    return "-".join([*head, *build_part, best.interpreter, best.abi, best.platform]) + ".whl"


def render_sums(entries: Iterable[tuple[str, str]]) -> bytes:
    """``sha256sum`` format (two spaces, text mode), sorted by path: ``(path, sha256)`` pairs."""
    return "".join(f"{digest}  {path}\n" for path, digest in sorted(entries)).encode()


def canonical_json(value: Any) -> bytes:
    """The bundle manifest's canonical form: sorted keys, no spaces, UTF-8, a final newline."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8") + b"\n"


@dataclass(frozen=True)
class KitFile:
    """One file of the kit, relative to ``airgap-kit/``."""

    path: str
    mode: int
    size: int
    sha256: str


def kit_manifest(
    *,
    created: int,
    signer: str,
    target: Target,
    tool_version: str,
    tool_wheel: str,
    pip_wheel: str,
    libc: LibcFloor | None,
    wheels: Sequence[KitWheel],
    files: Sequence[KitFile],
) -> bytes:
    """``kit.json``: canonical JSON, signed as it is (docs/kit.md)."""
    return canonical_json(
        {
            "format": KIT_FORMAT,
            "created": created,
            "signer": signer,
            "tool": {"name": PROJECT, "version": tool_version, "wheel": tool_wheel},
            "pip": pip_wheel,
            "installer": INSTALLER,
            "target": target.to_json(),
            "libc": None if libc is None else libc.to_json(),
            "packages": [
                {"name": w.name, "version": w.version, "file": w.member}
                for w in sorted(wheels, key=lambda w: w.name)
            ],
            "files": [
                {"path": f.path, "mode": f.mode, "size": f.size, "sha256": f.sha256}
                for f in sorted(files, key=lambda f: f.path.encode())
            ],
        }
    )


def target_arch(target: Target) -> str:
    """``platform.machine()`` on the target, e.g. ``x86_64``."""
    return target.marker_environment()["platform_machine"]


def render_installer(
    *, target: Target, tool_version: str, pip_wheel: str, libc: LibcFloor | None
) -> bytes:
    """``install.sh``: this kit's values put into the template ``kit_install.sh``."""
    values = {
        "@TOOL_VERSION@": tool_version,
        "@PYTHON@": target.python,
        "@ARCH@": target_arch(target),
        "@LIBC@": "" if libc is None else libc.family,
        "@LIBC_MIN@": "" if libc is None else f"{libc.version[0]}.{libc.version[1]}",
        "@PIP_WHEEL@": pip_wheel,
    }
    text = (resources.files(__package__) / _TEMPLATE).read_text(encoding="utf-8")
    for key, value in values.items():
        # Every value is a version, a tag or a wheel file name: nothing a shell would expand.
        if not re.fullmatch(r"[A-Za-z0-9._/+-]*", value):
            raise KitError(f"unexpected characters in {key.strip('@').lower()} {value!r}")
        text = text.replace(key, value)
    return text.encode("utf-8")


# ---- the edges: building, downloading ---------------------------------------------------


class ProjectWheelBuilder(Protocol):
    """Builds airgap-bundler's wheel from a source folder into the empty folder ``dest``."""

    def build(self, source: Path, dest: Path, epoch: int) -> Path: ...


@dataclass(frozen=True)
class PipWheelBuilder:
    """``pip wheel --no-deps`` of a normalised copy of the sources, with SOURCE_DATE_EPOCH.

    The copy has only the files a build reads, modes 0644/0755, every mtime the epoch, and
    the build runs with umask 022 and PYTHONHASHSEED=0: what the wheel's bytes depend on
    is then the sources, the epoch and the build backend's version.
    """

    python: str = sys.executable

    def build(self, source: Path, dest: Path, epoch: int) -> Path:
        src = dest / "src"
        out = dest / "out"
        _normalised_copy(source, src, epoch)
        out.mkdir()
        cmd = [
            self.python,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-input",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "--wheel-dir",
            str(out),
            str(src),
        ]
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "PYTHONHASHSEED": "0"}
        try:
            proc = subprocess.run(
                cmd, env=env, capture_output=True, text=True, umask=0o022, check=False
            )
        except OSError as e:
            raise KitError(f"cannot run {self.python} -m pip: {e}") from e
        wheels = sorted(out.glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            raise KitError(
                f"pip wheel of {source} failed: {_pip_error(proc.stdout + proc.stderr)}",
                remedy="check that the checkout builds (pip wheel --no-deps .) and that the "
                "package index is reachable for its build backend",
            )
        return wheels[0]


def _normalised_copy(source: Path, dest: Path, epoch: int) -> None:
    files: list[Path] = [source / n for n in _SOURCE_FILES if (source / n).is_file()]
    for path in sorted((source / _PACKAGE_DIR).rglob("*")):
        rel = path.relative_to(source)
        if "__pycache__" in rel.parts or path.suffix in (".pyc", ".pyo") or path.is_symlink():
            continue
        if path.is_file():
            files.append(path)
    for path in files:
        target = dest / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        target.chmod(0o644)
        os.utime(target, (epoch, epoch))
    for folder in sorted({p.parent for p in dest.rglob("*")} | {dest}, reverse=True):
        folder.chmod(0o755)
        os.utime(folder, (epoch, epoch))


class TargetResolver(Protocol):
    """Downloads wheels for ``target`` that satisfy ``requirements`` (and what they need)."""

    def download(self, requirements: Sequence[str], target: Target, dest: Path) -> None: ...


@dataclass(frozen=True)
class PipTargetResolver:
    """``pip download --only-binary=:all: --platform ... --python-version ...`` with
    dependencies: pip's resolver picks the versions, for the target's tags.

    pip evaluates dependencies' markers for the interpreter running it, not the target;
    :func:`build_kit` re-checks the closure with the target's markers and asks again for
    what is missing.
    """

    python: str = sys.executable

    def download(self, requirements: Sequence[str], target: Target, dest: Path) -> None:
        req_file = dest.parent / f"{dest.name}.requirements.txt"
        req_file.write_text("".join(r + "\n" for r in requirements), encoding="utf-8")
        cmd = [
            self.python,
            "-m",
            "pip",
            "download",
            "--no-input",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "--dest",
            str(dest),
            *target.pip_download_args(),
            "-r",
            str(req_file),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as e:
            raise DownloadError(f"cannot run {self.python} -m pip: {e}") from e
        finally:
            req_file.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise DownloadError(_pip_error(proc.stdout + proc.stderr))


def _pip_error(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return " | ".join(errors or lines[-3:] or ["(no output)"])[:1500]


def read_wheel_info(path: Path) -> WheelInfo:
    """Name, version and ``Requires-Dist`` from a wheel's ``*.dist-info/METADATA``.

    Raises:
        KitError: not a readable wheel, or its METADATA disagrees with its file name.
    """
    try:
        name, version, _, _ = parse_wheel_filename(path.name)
        with zipfile.ZipFile(path) as zf:
            candidates = [
                n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
            ]
            if len(candidates) != 1:
                raise KitError(f"{path.name} has {len(candidates)} dist-info METADATA files")
            with zf.open(candidates[0]) as f:
                raw = f.read(_MAX_METADATA + 1)
    except (OSError, zipfile.BadZipFile, InvalidWheelFilename) as e:
        raise KitError(f"cannot read wheel {path.name}: {e}") from e
    if len(raw) > _MAX_METADATA:
        raise KitError(f"{path.name}: METADATA is larger than {_MAX_METADATA} bytes")
    meta = email.parser.BytesParser().parsebytes(raw, headersonly=True)
    if canonicalize_name(meta.get("Name", "")) != name or Version(meta.get("Version", "0")) != (
        version
    ):
        raise KitError(f"{path.name}: METADATA names {meta.get('Name')} {meta.get('Version')}")
    return WheelInfo(name, str(version), tuple(meta.get_all("Requires-Dist") or ()))


def find_source() -> Path:
    """The checkout this package runs from (an editable install), for building its wheel.

    Raises:
        KitError: this copy of the package was not installed from a checkout.
    """
    root = Path(__file__).resolve().parents[2]
    return check_source(root)


def check_source(root: Path) -> Path:
    """``root`` if it is an airgap-bundler checkout (pyproject.toml naming it).

    Raises:
        KitError: it is not.
    """
    try:
        data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise KitError(
            f"{root} is not an airgap-bundler checkout (pyproject.toml: {e})",
            remedy="pass --source with a clone of airgap-bundler",
        ) from e
    if data.get("project", {}).get("name") != PROJECT or not (root / _PACKAGE_DIR).is_dir():
        raise KitError(
            f"{root} is not an airgap-bundler checkout",
            remedy="pass --source with a clone of airgap-bundler",
        )
    return root


# ---- the kit ----------------------------------------------------------------------------


def build_kit(
    target: Target,
    out: Path,
    key: Path,
    *,
    passphrase: bytes | None = None,
    created: int,
    source: Path | None = None,
    cache_dir: Path | None = None,
    lock: Path | None = None,
    progress: Progress | None = None,
    builder: ProjectWheelBuilder | None = None,
    resolver: TargetResolver | None = None,
) -> KitResult:
    """Write a signed bootstrap kit for ``target`` to ``out`` (atomically).

    The project's wheel is built twice from ``source`` (default: this checkout) and must come
    out byte-identical; its dependencies are read from the wheel's own metadata, so the kit
    follows pyproject.toml. With the same sources, resolved versions and ``created``, the kit
    is byte-identical.

    Raises:
        KitError: no checkout, a wheel build that is not reproducible, an unusable wheel.
        DownloadError: a dependency has no wheel for the target (each one named), or
            ``lock`` lacks a pin the target needs.
        LockError: ``lock`` is not fully pinned and hashed.
        KeyFileError: the signing key cannot be loaded.
    """
    progress = progress or NullProgress()
    if created < _ZIP_EPOCH:
        raise KitError(
            f"SOURCE_DATE_EPOCH={created} is before 1980, which a wheel (zip) cannot record",
            remedy="set SOURCE_DATE_EPOCH to 315532800 or later",
        )
    private = load_private_key(key, passphrase)
    source = check_source(source) if source is not None else find_source()
    builder = builder or PipWheelBuilder()
    resolver = resolver or PipTargetResolver()
    with tempfile.TemporaryDirectory(prefix="airgap-kit-") as tmp:
        work = Path(tmp)
        project = _build_reproducibly(builder, source, work, created, progress)
        project_info = read_wheel_info(project)
        if lock is None:
            deps = _resolve(project_info, target, work, resolver, progress)
            fetched = _fetch(deps, target, cache_dir, progress, work)
        else:
            fetched = _from_lock(lock, project_info, target, cache_dir, progress)
        project_wheel = KitWheel(
            project_info.name,
            project_info.version,
            project,
            sha256_file(project),
            project.stat().st_size,
            project.name,
        )
        wheels = (project_wheel, *fetched)
        pip = next((w for w in wheels if w.name == "pip"), None)
        if pip is None:
            raise KitError("pip's wheel is missing from the resolved set")
        libc = kit_libc_floor((w.path.name for w in wheels), target)
        pins = render_lock(
            LockedRequirement(w.name, w.version, frozenset({w.sha256})) for w in wheels
        ).encode()
        installer = render_installer(
            target=target, tool_version=project_info.version, pip_wheel=pip.member, libc=libc
        )
        small: dict[str, tuple[bytes, int]] = {
            INSTALLER: (installer, 0o755),
            LOCK_NAME: (pins, 0o644),
        }
        listed = [
            KitFile(p, m, len(b), hashlib.sha256(b).hexdigest()) for p, (b, m) in small.items()
        ]
        listed += [KitFile(w.member, 0o644, w.size, w.sha256) for w in wheels]
        sums = render_sums((f.path, f.sha256) for f in listed)
        small[SUMS_NAME] = (sums, 0o644)
        listed.append(KitFile(SUMS_NAME, 0o644, len(sums), hashlib.sha256(sums).hexdigest()))
        signer = key_id(private.public_key())
        manifest = kit_manifest(
            created=created,
            signer=signer,
            target=target,
            tool_version=project_info.version,
            tool_wheel=project_wheel.member,
            pip_wheel=pip.member,
            libc=libc,
            wheels=wheels,
            files=listed,
        )
        small[MANIFEST_NAME] = (manifest, 0o644)
        small[SIGNATURE_NAME] = (sign(private, manifest), 0o644)
        members = [_memory_member(p, d, m) for p, (d, m) in small.items()]
        members += [_file_member(w.member, w.path, w.size) for w in wheels]
        members.sort(key=lambda m: m.name.encode())
        total = sum(m.size for m in members)
        progress.start("writing the kit", total=total)
        with _atomic_output(out) as fh:
            writer = TarWriter(fh, created)
            writer.add_all(members, on_written=progress.advance)
            writer.close()
        progress.finish()
    return KitResult(
        out=out,
        size=out.stat().st_size,
        sha256=sha256_file(out),
        created=created,
        target=target,
        tool_version=project_info.version,
        libc=libc,
        signer=signer,
        wheels=tuple(sorted(wheels, key=lambda w: w.name)),
    )


def _memory_member(path: str, data: bytes, mode: int) -> MemberSource:
    return MemberSource(f"{KIT_ROOT}/{path}", mode, len(data), lambda: io.BytesIO(data))


def _file_member(path: str, file: Path, size: int) -> MemberSource:
    return MemberSource(f"{KIT_ROOT}/{path}", 0o644, size, lambda: file.open("rb"))


def _build_reproducibly(
    builder: ProjectWheelBuilder, source: Path, work: Path, epoch: int, progress: Progress
) -> Path:
    """Build the wheel twice in separate folders; refuse it unless both are the same bytes."""
    progress.start("building the airgap-bundler wheel (twice)", total=2, unit="builds")
    built: list[Path] = []
    for i in range(2):
        dest = work / f"build-{i}"
        dest.mkdir()
        built.append(builder.build(source, dest, epoch))
        progress.advance()
    progress.finish()
    first, second = built
    if first.name != second.name or sha256_file(first) != sha256_file(second):
        raise KitError(
            f"building {first.name} twice gave different bytes, so the kit would not be "
            "reproducible",
            remedy="check that nothing writes to the checkout during the build and that the "
            "build backend honours SOURCE_DATE_EPOCH",
        )
    return first


def _resolve(
    project: WheelInfo, target: Target, work: Path, resolver: TargetResolver, progress: Progress
) -> dict[NormalizedName, Path]:
    """The dependency wheels for ``target``: pip's resolution, closed under the target's
    markers. pip is always one of them (the installer runs it from its wheel)."""
    roots = _roots(project, target)
    progress.start(f"resolving dependencies for {target.describe()}", total=None)
    downloaded = work / "resolved"
    downloaded.mkdir()
    wanted = [_plain(r) for r in roots]
    for _round in range(_MAX_ROUNDS):
        try:
            resolver.download(wanted, target, downloaded)
        except DownloadError as e:
            raise _no_wheel_error(target, wanted, resolver, work, e) from e
        infos: dict[NormalizedName, WheelInfo] = {}
        files: dict[NormalizedName, Path] = {}
        for path in sorted(downloaded.glob("*.whl")):
            info = read_wheel_info(path)
            if info.name in infos and Version(infos[info.name].version) >= Version(info.version):
                continue
            infos[info.name], files[info.name] = info, path
        needed, missing = closure(roots, infos, target)
        if not missing:
            progress.finish()
            return {name: files[name] for name in sorted(needed)}
        # Only the target's markers ask for these: pip, resolving for this interpreter,
        # skipped them. Ask for them (and everything again, so versions stay consistent).
        wanted = sorted({*wanted, *(_plain(r) for r in missing)})
    raise DownloadError(
        f"the dependencies for target {target.describe()} do not close: "
        + ", ".join(str(r) for r in missing),
        remedy="pin the missing requirements in pyproject.toml or report the loop",
    )


def _roots(project: WheelInfo, target: Target) -> list[Requirement]:
    return [*requirements_of(project.requires_dist, (), target), Requirement("pip")]


def _from_lock(
    lock: Path,
    project: WheelInfo,
    target: Target,
    cache_dir: Path | None,
    progress: Progress,
) -> list[KitWheel]:
    """The dependency wheels pinned by ``lock`` (e.g. an earlier kit's requirements.lock):
    fetched like ``airgap pack`` fetches a lock (cache first, hash-checked), then checked to
    close under the target's markers. A pin of airgap-bundler itself is ignored: its wheel is
    the one just built from the sources."""
    reqs = [r for r in parse_lock(lock) if r.name != PROJECT]
    wanted = for_target(reqs, target)
    try:
        paths = fetch_wheels(wanted, target, cache_dir, progress)
    except DownloadError as e:
        raise DownloadError(
            f"the pins of {lock}: {e.message}",
            remedy="a kit's requirements.lock pins the files of that kit's own target; use "
            "the lock of a kit for this same --python and --platform, or make the kit "
            "without --lock to resolve afresh",
        ) from e
    infos = {info.name: info for info in (read_wheel_info(p) for p in paths)}
    needed, missing = closure(_roots(project, target), infos, target)
    if missing:
        raise DownloadError(
            f"{lock} lacks pins that target {target.describe()} needs: "
            + ", ".join(str(r) for r in missing),
            remedy="make the kit without --lock to resolve afresh, or add the pins with hashes",
        )
    return [
        KitWheel(
            req.name,
            req.version,
            path,
            sha256_file(path),
            path.stat().st_size,
            kit_file_name(path.name, target),
        )
        for req, path in zip(wanted, paths, strict=True)
        if req.name in needed
    ]


def _plain(req: Requirement) -> str:
    """A requirement without its marker (markers were evaluated for the target already)."""
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    return f"{req.name}{extras}{req.specifier}"


def _no_wheel_error(
    target: Target,
    wanted: Sequence[str],
    resolver: TargetResolver,
    work: Path,
    first: DownloadError,
) -> DownloadError:
    """One error naming every requirement that has no wheel for ``target``.

    pip stops at the first; each requirement is tried again on its own (with its
    dependencies) so the user sees all of them at once.
    """
    failures: list[str] = []
    for i, req in enumerate(wanted):
        alone = work / f"probe-{i}"
        alone.mkdir()
        try:
            resolver.download([req], target, alone)
        except DownloadError as e:
            deeper = [n for n in _NO_MATCH_RE.findall(e.message) if n != req]
            why = f"its dependency {', '.join(deeper)} has none" if deeper else "no version has one"
            failures.append(f"{req} ({why})")
        finally:
            shutil.rmtree(alone, ignore_errors=True)
    detail = "; ".join(failures) if failures else first.message
    return DownloadError(
        f"no wheel for target {target.describe()}: {detail}",
        remedy=(
            "these dependencies of airgap-bundler publish no wheel for this Python and platform "
            "(compiled ones such as cryptography and zstandard start at glibc 2.17, "
            "manylinux2014); choose a newer --platform (e.g. manylinux2014_x86_64 or "
            "manylinux_2_28_aarch64) or another --python"
        ),
    )


_NO_MATCH_RE: Final = re.compile(r"No matching distribution found for ([^\s|]+)")


def _fetch(
    deps: Mapping[NormalizedName, Path],
    target: Target,
    cache_dir: Path | None,
    progress: Progress,
    work: Path,
) -> list[KitWheel]:
    """Pin each resolved wheel by its sha256 and pass it through the wheel cache's checks
    (name, version, tags fit the target, hash), as ``airgap pack`` does for a lock."""
    staged = work / "picked"
    staged.mkdir()
    reqs: list[LockedRequirement] = []
    for name, path in deps.items():
        shutil.copyfile(path, staged / path.name)
        version = str(parse_wheel_filename(path.name)[1])
        reqs.append(LockedRequirement(name, version, frozenset({sha256_file(path)})))
    paths = fetch_wheels(reqs, target, cache_dir, progress, source=LocalWheelSource(staged))
    return [
        KitWheel(
            req.name,
            req.version,
            path,
            next(iter(req.hashes)),
            path.stat().st_size,
            kit_file_name(path.name, target),
        )
        for req, path in zip(sorted(reqs, key=lambda r: r.name), paths, strict=True)
    ]
