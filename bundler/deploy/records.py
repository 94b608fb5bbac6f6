"""What `airgap build` and `airgap push` record in DEST/.airgap: the images made and pushed.

Pure parsing and rendering; the files are small canonical JSON. Each record names the bundle
revision (the payload sha256) it belongs to, so a record left from an earlier bundle at the
same DEST is never taken for the current one.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from ..errors import BundleError
from ..layout import STATE_DIR

BUILT_RECORD: Final = f"{STATE_DIR}/images.json"
PUSHED_RECORD: Final = f"{STATE_DIR}/pushed.json"
_FORMAT_BUILT: Final = "airgap-images/1"
_FORMAT_PUSHED: Final = "airgap-pushed/1"
_DIGEST: Final = re.compile(r"^sha256:[0-9a-f]{64}$")
# Image kinds: the serving images (normal, baked) and the data-only ones for a fleet.
KINDS: Final = ("normal", "baked", "data", "data-init")


@dataclass(frozen=True)
class BuiltRecord:
    """One image `airgap build` made from the bundle at DEST."""

    kind: str  # one of KINDS
    tag: str
    image_id: str  # sha256:<config digest>


@dataclass(frozen=True)
class PushedRecord:
    """One image `airgap push` put in a registry, and the digest it verified there."""

    kind: str
    repository: str  # HOST:PORT[/PREFIX]/name, without tag or digest
    tag: str
    image_id: str
    digest: str  # the registry manifest's sha256, as checked after the push

    @property
    def pinned(self) -> str:
        """The reference orchestrators are given: ``repository@sha256:...``."""
        return f"{self.repository}@{self.digest}"


def _write(dest: Path, rel: str, doc: dict[str, Any]) -> None:
    path = dest / rel
    data = (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode()
    fd, tmp = tempfile.mkstemp(prefix=".record-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read(dest: Path, rel: str, fmt: str, revision: str, remedy: str) -> list[dict[str, Any]]:
    path = dest / rel
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise BundleError(f"{path} does not exist", remedy=remedy) from e
    except OSError as e:
        raise BundleError(f"cannot read {path}: {e.strerror}", remedy=remedy) from e
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON", remedy=remedy) from e
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise BundleError(f"{path} is not an {fmt} record", remedy=remedy)
    if doc.get("revision") != revision:
        raise BundleError(
            f"{path} records images of another bundle revision than the one at {dest}",
            remedy=remedy,
        )
    images = doc.get("images")
    if not isinstance(images, list) or not all(isinstance(i, dict) for i in images):
        raise BundleError(f"{path} has no list of images", remedy=remedy)
    return images


def write_built(dest: Path, revision: str, images: Sequence[BuiltRecord]) -> None:
    """Record the images built; merged with earlier builds of the same revision by kind."""
    try:
        old = {r.kind: r for r in read_built(dest, revision)}
    except BundleError:
        old = {}
    old.update({r.kind: r for r in images})
    doc = {
        "format": _FORMAT_BUILT,
        "revision": revision,
        "images": [asdict(old[k]) for k in KINDS if k in old],
    }
    _write(dest, BUILT_RECORD, doc)


def read_built(dest: Path, revision: str) -> list[BuiltRecord]:
    """The images `airgap build` recorded for ``revision``.

    Raises:
        BundleError: no record, a malformed one, or one for another revision.
    """
    remedy = "build the images first: airgap build DEST (--fleet for the data images too)"
    out = []
    for item in _read(dest, BUILT_RECORD, _FORMAT_BUILT, revision, remedy):
        kind, tag, image_id = item.get("kind"), item.get("tag"), item.get("image_id")
        if (
            kind not in KINDS
            or not isinstance(tag, str)
            or not isinstance(image_id, str)
            or not _DIGEST.fullmatch(image_id)
        ):
            raise BundleError(f"{dest / BUILT_RECORD} has a malformed entry", remedy=remedy)
        out.append(BuiltRecord(str(kind), tag, image_id))
    return out


def write_pushed(dest: Path, revision: str, registry: str, images: Sequence[PushedRecord]) -> None:
    """Record what was pushed and verified (replacing an earlier push of this revision)."""
    doc = {
        "format": _FORMAT_PUSHED,
        "revision": revision,
        "registry": registry,
        "images": [asdict(r) for r in sorted(images, key=lambda r: KINDS.index(r.kind))],
    }
    _write(dest, PUSHED_RECORD, doc)


def read_pushed(dest: Path, revision: str) -> list[PushedRecord]:
    """The images `airgap push` verified in a registry for ``revision``.

    Raises:
        BundleError: no record, a malformed one, or one for another revision.
    """
    remedy = "push the images first: airgap push DEST --registry HOST:PORT"
    out = []
    for item in _read(dest, PUSHED_RECORD, _FORMAT_PUSHED, revision, remedy):
        fields = [item.get(k) for k in ("kind", "repository", "tag", "image_id", "digest")]
        if (
            not all(isinstance(v, str) for v in fields)
            or fields[0] not in KINDS
            or not _DIGEST.fullmatch(str(fields[3]))
            or not _DIGEST.fullmatch(str(fields[4]))
        ):
            raise BundleError(f"{dest / PUSHED_RECORD} has a malformed entry", remedy=remedy)
        out.append(PushedRecord(*(str(v) for v in fields)))
    return out


def find(records: Sequence[PushedRecord], kind: str) -> PushedRecord | None:
    """The record of ``kind``, if pushed."""
    return next((r for r in records if r.kind == kind), None)
