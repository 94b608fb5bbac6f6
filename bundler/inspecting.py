"""Read a bundle's manifest without verifying it, for `airgap inspect`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import BundleError
from .formats.archive import cosignature_member, read_outer
from .formats.cosign import parse_signature_file
from .formats.manifest import Manifest, parse_manifest
from .formats.source import open_bundle
from .layout import DETACHED_SUFFIX, OUTER_SIGNATURE


@dataclass(frozen=True)
class PresentSignature:
    """A signature found in or beside a bundle, NOT verified: ``key_id`` is only claimed."""

    source: str
    key_id: str


def read_manifest_unverified(bundle: Path) -> Manifest:
    """The manifest, strictly parsed but NOT signature-checked; reads no payload byte.

    Raises:
        BundleError: the file cannot be read; BundleRejected subclasses: malformed bundle.
    """
    return read_unverified(bundle)[0]


def read_unverified(bundle: Path) -> tuple[Manifest, list[PresentSignature]]:
    """The manifest as ``read_manifest_unverified``, and the signatures present: the first
    one (with the signer the manifest names), co-signature members, and the entries of
    ``BUNDLE.sig`` when that file is there (strictly parsed, not verified).

    Raises:
        BundleError: the file cannot be read; BundleRejected subclasses: malformed bundle or
            signature file.
    """
    with open_bundle(bundle) as f:
        try:
            outer = read_outer(f)
        except OSError as e:
            raise BundleError(f"cannot read bundle {bundle}: {e.strerror}") from e
    manifest = parse_manifest(outer.manifest)
    outer.check_times(manifest.created)  # §2, as verify checks it (not trusted here)
    present = [PresentSignature(OUTER_SIGNATURE, manifest.signer)]
    present += [PresentSignature(cosignature_member(k), k) for k, _ in outer.cosignatures]
    beside = bundle.with_name(bundle.name + DETACHED_SUFFIX)
    if beside.is_file():
        with open_bundle(beside, "signature file") as sf:
            data = sf.read(1 << 20)
        present += [
            PresentSignature(c.source, c.key_id)
            for c in parse_signature_file(data, outer.manifest, beside.name)
        ]
    return manifest, present
