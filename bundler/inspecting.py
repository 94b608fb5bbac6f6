"""Read a bundle's manifest, and a delta's descriptor, unverified, for `airgap inspect`."""

from __future__ import annotations

from pathlib import Path

from .errors import BundleError
from .formats.archive import read_outer
from .formats.delta import DeltaDescriptor, first_member, parse_descriptor, read_delta_outer
from .formats.manifest import Manifest, parse_manifest
from .formats.source import open_bundle
from .layout import OUTER_DELTA


def read_unverified(bundle: Path) -> tuple[Manifest, DeltaDescriptor | None]:
    """The manifest, and for a delta its descriptor, strictly parsed but NOT signature-checked;
    reads no payload byte.

    Raises:
        BundleError: the file cannot be read; BundleRejected subclasses: malformed bundle.
    """
    with open_bundle(bundle) as f:
        try:
            if first_member(f) == OUTER_DELTA:
                outer = read_delta_outer(f)
                return parse_manifest(outer.manifest), parse_descriptor(outer.descriptor)
            return parse_manifest(read_outer(f).manifest), None
        except OSError as e:
            raise BundleError(f"cannot read bundle {bundle}: {e.strerror}") from e


def read_manifest_unverified(bundle: Path) -> Manifest:
    """The manifest, strictly parsed but NOT signature-checked (a delta's new manifest too).

    Raises:
        BundleError: the file cannot be read; BundleRejected subclasses: malformed bundle.
    """
    return read_unverified(bundle)[0]
