"""Read a bundle's manifest without verifying it, for `airgap inspect`."""

from __future__ import annotations

from pathlib import Path

from .errors import BundleError
from .formats.archive import read_outer
from .formats.manifest import Manifest, parse_manifest
from .formats.source import open_bundle


def read_manifest_unverified(bundle: Path) -> Manifest:
    """The manifest, strictly parsed but NOT signature-checked; reads no payload byte.

    Raises:
        BundleError: the file cannot be read; BundleRejected subclasses: malformed bundle.
    """
    with open_bundle(bundle) as f:
        try:
            outer = read_outer(f)
            manifest = parse_manifest(outer.manifest)
            outer.check_times(manifest.created)  # §2, as verify checks it (not trusted here)
            return manifest
        except OSError as e:
            raise BundleError(f"cannot read bundle {bundle}: {e.strerror}") from e
