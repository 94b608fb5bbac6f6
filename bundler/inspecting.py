"""Read a bundle's manifest (and a delta's descriptor) without verifying it, for `airgap
inspect`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import BundleError
from .formats.archive import cosignature_member, read_outer
from .formats.cosign import parse_signature_file
from .formats.delta import DeltaDescriptor, first_member, parse_descriptor, read_delta_outer
from .formats.manifest import Manifest, parse_manifest
from .formats.source import open_bundle
from .layout import DETACHED_SUFFIX, OUTER_DELTA, OUTER_SIGNATURE


@dataclass(frozen=True)
class PresentSignature:
    """A signature found in or beside a bundle, NOT verified: ``key_id`` is only claimed."""

    source: str
    key_id: str


def read_manifest_unverified(bundle: Path) -> Manifest:
    """The manifest, strictly parsed but NOT signature-checked (a delta's new manifest too);
    reads no payload byte.

    Raises:
        BundleError: the file cannot be read; BundleRejected subclasses: malformed bundle.
    """
    return read_unverified(bundle)[0]


def read_unverified(
    bundle: Path,
) -> tuple[Manifest, list[PresentSignature], DeltaDescriptor | None]:
    """The manifest, the signatures present (claimed key ids, NOT verified), and for a delta
    its descriptor, strictly parsed; reads no payload byte.

    Raises:
        BundleError: the file cannot be read; BundleRejected subclasses: malformed bundle.
    """
    with open_bundle(bundle) as f:
        try:
            if first_member(f) == OUTER_DELTA:
                delta = read_delta_outer(f)
                manifest = parse_manifest(delta.manifest)
                present = [PresentSignature(OUTER_SIGNATURE, manifest.signer)]
                present += [
                    PresentSignature(cosignature_member(k), k) for k, _ in delta.cosignatures
                ]
                return manifest, present, parse_descriptor(delta.descriptor)
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
    return manifest, present, None
