"""Getting the locked wheels for a target: a content-addressed cache in front of a downloader."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from ..errors import DownloadError
from ..progress import NullProgress, Progress
from .lock import for_target, render_lock

if TYPE_CHECKING:
    from ..target import Target
    from .lock import LockedRequirement

CACHE_ENV: Final = "AIRGAP_CACHE_DIR"  # root of airgap-bundler's cache; wheels go in ./wheels

# Layout of the wheel cache (see docs/project-file.md):
#   sha256/<hex digest>/<original wheel file name>   content-addressed, checked on every use
#   picks/<target key>/<name>-<version>-<lock hashes digest>   "<sha256> <file name>": which
#       file was chosen for that pin and target, so a second fetch needs no index at all
#   tmp/   downloads in progress (same filesystem, so moving into place is a rename)
_STORE: Final = "sha256"
_PICKS: Final = "picks"
_TMP: Final = "tmp"

Saved = Callable[[str], None]


class WheelSource(Protocol):
    """Somewhere wheels come from. ``download`` puts one wheel per requirement, built for
    ``target``, into the empty directory ``dest`` and calls ``saved(file_name)`` for each.

    It may leave out or mis-pick files: :func:`fetch_wheels` checks names, versions, tags and
    hashes itself. It raises DownloadError when it cannot provide some of them.
    """

    def download(
        self, reqs: Sequence[LockedRequirement], target: Target, dest: Path, saved: Saved
    ) -> None: ...


def default_cache_dir() -> Path:
    """The wheel cache: ``$AIRGAP_CACHE_DIR/wheels``, else the XDG cache's
    ``airgap-bundler/wheels`` (``~/.cache/airgap-bundler/wheels``)."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "wheels"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "airgap-bundler" / "wheels"


def fetch_wheels(
    reqs: Sequence[LockedRequirement],
    target: Target,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    *,
    source: WheelSource | None = None,
) -> list[Path]:
    """The wheel files for the requirements that apply to ``target``, from the cache or
    downloaded into it.

    Requirements whose markers do not hold for ``target`` are skipped; the result has one
    path (inside the cache) per remaining requirement, sorted by requirement name. Each file
    is checked here against the lock: name and version match the pin, its tags fit the
    target, its sha256 is one of the pin's hashes. Cached files are re-hashed on every use.
    Only the pins missing from the cache reach ``source`` (default: :class:`PipDownloader`),
    so a second fetch of the same lock for the same target needs no network.

    Raises:
        DownloadError: some wheels are unavailable for the target or do not match the lock;
            every failing requirement is named.
        LockError: two pins for one package both apply to the target.
    """
    progress = progress or NullProgress()
    cache = WheelCache(cache_dir or default_cache_dir())
    wanted = for_target(reqs, target)
    progress.start("fetching wheels", total=len(wanted), unit="wheels")
    found: dict[str, Path] = {}
    missing: list[LockedRequirement] = []
    for req in wanted:
        hit = cache.lookup(req, target)
        if hit is None:
            missing.append(req)
        else:
            found[req.name] = hit
            progress.advance()
    if missing:
        failures = _download_missing(
            missing, target, cache, source or PipDownloader(), found, progress
        )
        if failures:
            raise DownloadError(
                f"cannot get wheels for target {target.describe()}: " + "; ".join(failures),
                remedy=(
                    "check that each pinned version publishes a wheel for this target (or "
                    "change [target] in bundle.toml, or the pins in requirements.in), and "
                    "that the package index is reachable for wheels not yet in the cache "
                    f"({cache.root}); for a pin that publishes only a source distribution, "
                    "build its wheel (pip wheel --no-deps --no-binary :all: 'NAME==VERSION' "
                    "-w wheelhouse), add the wheel's --hash=sha256:... to its pin in the lock "
                    "and pass --find-links wheelhouse (docs/project-file.md, 'Pins without "
                    "a wheel')"
                ),
            )
    progress.finish()
    return [found[req.name] for req in wanted]


def _download_missing(
    missing: list[LockedRequirement],
    target: Target,
    cache: WheelCache,
    source: WheelSource,
    found: dict[str, Path],
    progress: Progress,
) -> list[str]:
    """Download ``missing`` into the cache; returns one message per requirement that failed.

    One batch first (fast); if it fails, each requirement on its own, so the message names
    every unavailable pin rather than only the first one pip met.
    """
    announced: set[str] = set()

    def saved(name: str) -> None:
        if name not in announced:
            announced.add(name)
            progress.advance()

    batches: list[list[LockedRequirement]] = [missing]
    failures: list[str] = []
    while batches:
        batch = batches.pop(0)
        with cache.staging() as dest:
            try:
                source.download(batch, target, dest, saved)
            except DownloadError as e:
                if len(batch) > 1:
                    batches.extend([req] for req in batch)
                else:
                    failures.append(f"{batch[0].pin()} ({e.message})")
                continue
            failures += _adopt(batch, target, cache, dest, found)
    return failures


def _adopt(
    batch: list[LockedRequirement],
    target: Target,
    cache: WheelCache,
    dest: Path,
    found: dict[str, Path],
) -> list[str]:
    """Check the downloaded files in ``dest`` against the lock and move them into the cache."""
    failures: list[str] = []
    by_name = {req.name: req for req in batch}
    files = sorted(p for p in dest.iterdir() if p.name.endswith(".whl"))
    picked: dict[str, Path] = {}
    for path in files:
        try:
            name, version, _, wheel_tags = parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            continue
        req = by_name.get(name)
        if req is None or not req.matches(name, version) or not target.accepts(wheel_tags):
            continue  # not asked for, or a file for another target: never adopted
        best = picked.get(req.name)
        if best is None or _rank(target, path) < _rank(target, best):
            picked[req.name] = path
    for req in batch:
        chosen = picked.get(req.name)
        if chosen is None:
            failures.append(f"{req.pin()} (no wheel for this target was delivered)")
            continue
        digest = sha256_file(chosen)
        if digest not in req.hashes:
            failures.append(
                f"{req.pin()} ({chosen.name} has sha256 {digest}, which the lock does not list)"
            )
            continue
        found[req.name] = cache.store(req, target, chosen, digest)
    return failures


def _rank(target: Target, path: Path) -> int:
    rank = target.tag_priority(parse_wheel_filename(path.name)[3])
    return sys.maxsize if rank is None else rank


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in bounded chunks."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cached_picks(
    reqs: Sequence[LockedRequirement], target: Target, cache_dir: Path | None = None
) -> list[Path] | None:
    """The wheel files an earlier fetch picked for these pins, in fetch_wheels' order, read
    from the pick records without hashing anything; None when one has no record.

    A hint only (to start work early): nothing may use these files before fetch_wheels has
    re-checked them.
    """
    cache = WheelCache(cache_dir or default_cache_dir())
    found: list[Path] = []
    for req in for_target(reqs, target):
        try:
            record = cache._pick_path(req, target).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        digest, _, file_name = record.strip().partition(" ")
        if "/" in file_name or not re.fullmatch(r"[0-9a-f]{64}", digest):
            return None
        found.append(cache.root / _STORE / digest / file_name)
    return found


def wheel_digest(path: Path) -> str:
    """A wheel's sha256: from its place in the wheel cache (``sha256/<digest>/<file>``, which
    fetch_wheels has just re-hashed against that name: hashing again would be a second pass),
    else by reading it."""
    digest = path.parent.name
    if path.parent.parent.name == _STORE and re.fullmatch(r"[0-9a-f]{64}", digest):
        return digest
    return sha256_file(path)


# --- the cache -------------------------------------------------------------------------


@dataclass(frozen=True)
class WheelCache:
    """The content-addressed wheel store plus the per-target record of which file was picked."""

    root: Path

    def _pick_path(self, req: LockedRequirement, target: Target) -> Path:
        # The record is keyed by the pin's whole hash list: a changed lock decides afresh.
        hashes = hashlib.sha256(" ".join(sorted(req.hashes)).encode()).hexdigest()[:16]
        return self.root / _PICKS / target.cache_key() / f"{req.name}-{req.version}-{hashes}"

    def lookup(self, req: LockedRequirement, target: Target) -> Path | None:
        """The cached wheel picked earlier for ``req`` and ``target``, re-checked; else None.

        A record or file that fails a check (hash, name, tags) is dropped, so the wheel is
        downloaded again instead of trusted.
        """
        record = self._pick_path(req, target)
        try:
            digest, _, file_name = record.read_text(encoding="utf-8").strip().partition(" ")
        except (OSError, UnicodeDecodeError):
            return None
        path = self.root / _STORE / digest / file_name
        usable = (
            digest in req.hashes
            and "/" not in file_name
            and _fits(req, target, file_name)
            and path.is_file()
        )
        if usable and sha256_file(path) == digest:
            return path
        with contextlib.suppress(OSError):
            record.unlink()
        if usable:  # the stored bytes changed: drop them so they are downloaded again
            shutil.rmtree(path.parent, ignore_errors=True)
        return None

    def store(self, req: LockedRequirement, target: Target, path: Path, digest: str) -> Path:
        """Move a checked wheel into the store and record it as the pick for ``target``."""
        final_dir = self.root / _STORE / digest
        final = final_dir / path.name
        final_dir.mkdir(parents=True, exist_ok=True)
        os.replace(path, final)
        final.chmod(0o644)
        record = self._pick_path(req, target)
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(record.name + f".{os.getpid()}.tmp")
        tmp.write_text(f"{digest} {path.name}\n", encoding="utf-8")
        os.replace(tmp, record)
        return final

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """An empty directory on the cache's filesystem, removed afterwards."""
        tmp_root = self.root / _TMP
        tmp_root.mkdir(parents=True, exist_ok=True)
        dest = Path(tempfile.mkdtemp(prefix="dl-", dir=tmp_root))
        try:
            yield dest
        finally:
            shutil.rmtree(dest, ignore_errors=True)


def _fits(req: LockedRequirement, target: Target, file_name: str) -> bool:
    try:
        name, version, _, wheel_tags = parse_wheel_filename(file_name)
    except InvalidWheelFilename:
        return False
    return req.matches(name, version) and target.accepts(wheel_tags)


# --- sources ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PipDownloader:
    """``pip download --no-deps --only-binary=:all: --require-hashes`` for the target.

    pip uses its own configuration (index URL, certificates, proxy); markers were already
    evaluated for the target, so the generated requirements file carries none.
    """

    python: str = sys.executable
    extra_args: tuple[str, ...] = ()

    def download(
        self, reqs: Sequence[LockedRequirement], target: Target, dest: Path, saved: Saved
    ) -> None:
        req_file = dest / "requirements.txt"
        req_file.write_text(
            render_lock(dataclasses.replace(r, markers=None) for r in reqs), encoding="utf-8"
        )
        cmd = [
            self.python,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--require-hashes",
            "--no-input",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "--dest",
            str(dest),
            *target.pip_download_args(),
            *self.extra_args,
            "-r",
            str(req_file),
        ]
        tail: deque[str] = deque(maxlen=200)
        try:
            with subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
            ) as proc:
                assert proc.stdout is not None
                for line in proc.stdout:
                    tail.append(line.rstrip())
                    if m := _SAVED_RE.match(line.strip()):
                        saved(Path(m.group(1)).name)
                code = proc.wait()
        except OSError as e:
            raise DownloadError(
                f"cannot run {self.python} -m pip: {e}", remedy="install pip for that interpreter"
            ) from e
        req_file.unlink()
        if code != 0:
            raise DownloadError(_pip_error(tail))


_SAVED_RE: Final = re.compile(r"^Saved (.+\.whl)$")


def _pip_error(lines: deque[str]) -> str:
    """pip's own reason, without its noise: the ERROR lines, else the last lines."""
    errors = [ln.strip() for ln in lines if ln.strip().startswith("ERROR")]
    chosen = errors or [ln.strip() for ln in list(lines)[-3:] if ln.strip()]
    return " | ".join(chosen)[:1500] or f"pip exited without a message ({len(lines)} lines)"


@dataclass(frozen=True)
class LocalWheelSource:
    """Wheels from a local directory (a wheelhouse): the best-fitting file per pin.

    Picks, among the files whose name and version match and whose tags fit the target, the
    one with the best tag; hashes are checked by :func:`fetch_wheels` as for any source.
    """

    directory: Path

    def download(
        self, reqs: Sequence[LockedRequirement], target: Target, dest: Path, saved: Saved
    ) -> None:
        files = sorted(p for p in self.directory.glob("*.whl") if p.is_file())
        missing: list[str] = []
        for req in reqs:
            candidates = [p for p in files if _fits(req, target, p.name)]
            if not candidates:
                missing.append(req.pin())
                continue
            best = min(candidates, key=lambda p: (_rank(target, p), p.name))
            shutil.copyfile(best, dest / best.name)
            saved(best.name)
        if missing:
            raise DownloadError(f"no fitting wheel in {self.directory} for {', '.join(missing)}")
