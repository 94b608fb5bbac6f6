"""Checking a split bundle's parts as they arrive (with a resumable state file), then the
bundle they join into, read through the parts without joining them on disk."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final, cast

from ..errors import PartError, PartsIndexError
from ..formats.parts import (
    INDEX_SUFFIX,
    REMEDIES,
    STATE_SUFFIX,
    Identity,
    PartEntry,
    PartsFile,
    PartsIndex,
    check_part_fd,
    open_part,
    part_pattern,
)
from ..formats.source import read_index
from ..progress import NullProgress, Progress
from .policy import Verified
from .unpack import verify

STATE_FORMAT: Final = "airgap-parts-state/1"
_MAX_STATE_BYTES: Final = 32 << 20
_POLL: Final = 0.5  # seconds between looks at the folder while waiting for parts


@dataclass(frozen=True)
class PartResult:
    """The verdict on one part file: ``ok``, ``resumed`` (ok in the state file, unchanged since)
    or a failure (missing, truncated, too long, damaged, foreign, reordered, duplicate, extra)."""

    index: int  # 0 for a file the index does not list
    file: str
    status: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "resumed")

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "file": self.file,
            "status": self.status,
            "detail": self.detail,
        }


@dataclass
class CheckedParts:
    """Every part's verdict, and the identities of the parts this process hashed."""

    index: PartsIndex
    folder: Path
    results: list[PartResult] = field(default_factory=list)
    hashed: dict[int, Identity] = field(default_factory=dict)


def state_path_for(index_path: Path, index: PartsIndex) -> Path:
    return index_path.parent / (index.bundle.file + STATE_SUFFIX)


# ---- the state file (only ever a hint to skip work; never trusted for unpacking) ----------


def _load_state(path: Path, index_sha: str) -> dict[int, tuple[Identity, str]]:
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_STATE_BYTES + 1)
        if len(raw) > _MAX_STATE_BYTES:
            return {}
        obj = json.loads(raw)
        if (
            not isinstance(obj, dict)
            or obj.get("format") != STATE_FORMAT
            or obj.get("index_sha256") != index_sha
        ):
            return {}
        out: dict[int, tuple[Identity, str]] = {}
        for key, rec in obj["parts"].items():
            ident = Identity(
                int(rec["dev"]),
                int(rec["ino"]),
                int(rec["size"]),
                int(rec["mtime_ns"]),
                int(rec["ctime_ns"]),
            )
            out[int(key)] = (ident, str(rec["sha256"]))
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        # A missing, unreadable or malformed state (it lies beside the parts, so anyone who
        # brought them may have written it) only means nothing is skipped.
        return {}


def _save_state(path: Path, index_sha: str, passed: Mapping[int, tuple[Identity, str]]) -> None:
    parts = {
        str(i): {
            "dev": ident.dev,
            "ino": ident.ino,
            "size": ident.size,
            "mtime_ns": ident.mtime_ns,
            "ctime_ns": ident.ctime_ns,
            "sha256": sha,
        }
        for i, (ident, sha) in sorted(passed.items())
    }
    data = json.dumps(
        {"format": STATE_FORMAT, "index_sha256": index_sha, "parts": parts}, sort_keys=True
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---- checking the parts -------------------------------------------------------------------


def _check_one(index: PartsIndex, folder: Path, entry: PartEntry) -> tuple[PartResult, Identity]:
    fd = open_part(index, folder, entry)
    try:
        ident = check_part_fd(index, entry, fd)
    finally:
        os.close(fd)
    return PartResult(entry.index, entry.file, "ok"), ident


def _failure(entry: PartEntry, e: PartError) -> PartResult:
    return PartResult(entry.index, entry.file, e.status, e.detail)


def check_parts(
    index_path: Path,
    trust: Sequence[Path],
    *,
    resume: bool = False,
    wait: float = 0.0,
    state_path: Path | None = None,
    on_part: Callable[[PartResult], None] | None = None,
    warn: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> CheckedParts:
    """Check every part against the signed index, each as soon as it is complete.

    With ``wait`` > 0, a part that is missing or still growing is looked at again every
    half second until it is complete (its size is the index's and it did not change between
    two looks) or ``wait`` seconds pass with no part arriving. Each verdict is passed to
    ``on_part`` as it is made and recorded in the state file; with ``resume``, a part the
    state file records as passed, with the same device, inode, size, mtime and ctime, is
    not hashed again.

    Raises:
        TrustError, SignatureError, PartsIndexError: the index does not verify.
        PartError: any part is bad (after all were looked at; every bad one is named).
    """
    progress = progress or NullProgress()
    index, data = read_index(index_path, trust)
    folder = Path(os.path.abspath(index_path)).parent
    index_sha = hashlib.sha256(data).hexdigest()
    state = state_path or state_path_for(index_path, index)
    recorded = _load_state(state, index_sha) if resume else {}
    passed: dict[int, tuple[Identity, str]] = {}
    done = CheckedParts(index=index, folder=folder)
    verdicts: dict[int, PartResult] = {}
    last_seen: dict[int, tuple[int, int]] = {}
    state_ok = True
    saved = 0.0

    def save(*, final: bool = False) -> None:
        # At most once a second (and at the end): rewriting it for each of 100,000 parts
        # would cost more than the parts.
        nonlocal state_ok, saved
        if not state_ok or (not final and clock() - saved < 1.0):
            return
        saved = clock()
        try:
            _save_state(state, index_sha, passed)
        except OSError as e:
            state_ok = False
            if warn is not None:
                warn(
                    f"cannot record the check state in {state} ({e.strerror}); "
                    "--resume will have nothing to skip (--state FILE puts it elsewhere)"
                )

    def record(result: PartResult) -> None:
        result = _refine(result, index, verdicts)
        verdicts[result.index] = result
        if on_part is not None:
            on_part(result)
        save()

    progress.start("checking parts", len(index.parts), unit="parts")
    deadline = clock() + wait
    while True:
        for entry in index.parts:
            if entry.index in verdicts:
                continue
            path = folder / entry.file
            try:
                st = os.stat(path)
            except FileNotFoundError:
                if wait:
                    continue
                record(
                    PartResult(
                        entry.index,
                        entry.file,
                        "missing",
                        f"part {entry.index} of {len(index.parts)}, {entry.size} bytes",
                    )
                )
                progress.advance()
                continue
            except OSError as e:
                record(PartResult(entry.index, entry.file, "unreadable", str(e.strerror)))
                progress.advance()
                continue
            if wait:
                # Still arriving: shorter than the index says, or changed since the last look.
                look = (st.st_size, st.st_mtime_ns)
                if st.st_size < entry.size or last_seen.get(entry.index) != look:
                    last_seen[entry.index] = look
                    continue
            known = recorded.get(entry.index)
            if known is not None and known == (Identity.of(st), entry.sha256):
                passed[entry.index] = known
                record(PartResult(entry.index, entry.file, "resumed"))
                progress.advance()
                continue
            try:
                result, ident = _check_one(index, folder, entry)
            except PartError as e:
                result = _failure(entry, e)
            else:
                passed[entry.index] = (ident, entry.sha256)
                done.hashed[entry.index] = ident
                deadline = clock() + wait  # a part arrived: wait again from now
            record(result)
            progress.advance()
        pending = [p for p in index.parts if p.index not in verdicts]
        if not pending:
            break
        if clock() >= deadline:
            for entry in pending:
                path = folder / entry.file
                status = "truncated" if path.exists() else "missing"
                record(
                    PartResult(
                        entry.index,
                        entry.file,
                        status,
                        f"not complete after waiting {wait:g} s ({entry.size} bytes expected)",
                    )
                )
            break
        sleep(_POLL)
    save(final=True)
    progress.finish()
    done.results = [_refine(verdicts[p.index], index, verdicts) for p in index.parts]
    done.results.extend(_extras(index, folder))
    bad = [r for r in done.results if not r.ok]
    if bad:
        first = bad[0]
        more = "; ".join(f"{r.file}: {r.status}" for r in bad[1:6])
        also = f" (also {more}{' ...' if len(bad) > 6 else ''})" if more else ""
        raise PartError(
            first.status,
            first.detail + also,
            member=first.file,
            remedy=REMEDIES.get(first.status, REMEDIES["unreadable"]),
        )
    return done


def _refine(
    result: PartResult, index: PartsIndex, verdicts: Mapping[int, PartResult]
) -> PartResult:
    """A part holding another part's bytes is a duplicate when that part is there too."""
    if result.status != "reordered":
        return result
    for other in index.parts:
        seen = verdicts.get(other.index)
        if other.file in result.detail and seen is not None and seen.ok:
            return PartResult(
                result.index,
                result.file,
                "duplicate",
                f"a copy of part {other.index} ({other.file}); part {result.index} is missing",
            )
    return result


def _extras(index: PartsIndex, folder: Path) -> list[PartResult]:
    listed = {p.file for p in index.parts}
    pattern = part_pattern(index.bundle.file)
    try:
        names = sorted(e.name for e in os.scandir(folder))
    except OSError:
        return []
    return [
        PartResult(0, name, "extra", f"the index lists {len(listed)} parts, not this one")
        for name in names
        if pattern.fullmatch(name) and name not in listed
    ]


# ---- the bundle the parts join into -------------------------------------------------------


def verify_parts(
    index_path: Path,
    trust: Sequence[Path],
    *,
    resume: bool = False,
    wait: float = 0.0,
    state_path: Path | None = None,
    on_part: Callable[[PartResult], None] | None = None,
    warn: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    policy: Path | None = None,
    signature_files: Sequence[Path] | None = None,
) -> tuple[Verified, CheckedParts]:
    """`check_parts`, then the full verification of the bundle the parts join into (the
    signature, manifest, payload hash and every file's hash), read through the parts.

    ``trust`` are the key files the index verifies with (``TrustInputs.packer_key_files``);
    the joined bundle's manifest is then trusted by ``policy`` when given (it replaces
    ``trust`` there, so an N-of-M rule holds for a split bundle too) and ``signature_files``.

    Parts skipped by ``resume`` are hashed again before their bytes are read.

    Raises:
        BundleRejected subclasses (exit 3): a bad part, index or bundle.
    """
    # No progress display while the parts are checked: ``on_part`` reports each one.
    checked = check_parts(
        index_path,
        trust,
        resume=resume,
        wait=wait,
        state_path=state_path,
        on_part=on_part,
        warn=warn,
    )
    stream = cast(BinaryIO, PartsFile(checked.index, checked.folder, checked.hashed))
    verified = verify(
        index_path,
        trust,
        progress=progress,
        stream=stream,
        policy=policy,
        signature_files=signature_files,
    )
    check_identity(checked.index, verified)
    return verified, checked


def check_identity(index: PartsIndex, verified: Verified) -> None:
    """The bundle the parts joined into is the one the index names.

    Raises:
        PartsIndexError: another name, version or manifest.
    """
    b = index.bundle
    m = verified.manifest
    if hashlib.sha256(verified.manifest_bytes).hexdigest() != b.manifest_sha256 or (
        m.name,
        m.version,
    ) != (b.name, b.version):
        raise PartsIndexError(
            f"the index names {b.name} {b.version}, the parts hold {m.name} {m.version} "
            "(or another manifest)",
            member=b.file + INDEX_SUFFIX,
        )
