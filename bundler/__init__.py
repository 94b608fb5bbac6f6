"""airgap-bundler: signed, reproducible bundles for models in networks with no internet.

The public API is the names in ``__all__``; everything else may change between releases.
(They are suffixed so they do not shadow the ``bundler.pack`` and ``bundler.verify`` modules.)
"""

from __future__ import annotations

from .errors import BundleError, BundleRejected
from .formats.manifest import Manifest
from .inspecting import read_manifest_unverified as inspect_bundle
from .pack.cosign import cosign as cosign_bundle
from .pack.pipeline import pack as pack_bundle
from .verify.tree import check_unpacked
from .verify.unpack import unpack as unpack_bundle
from .verify.unpack import verify as verify_bundle

__all__ = [
    "BundleError",
    "BundleRejected",
    "Manifest",
    "check_unpacked",
    "cosign_bundle",
    "inspect_bundle",
    "pack_bundle",
    "unpack_bundle",
    "verify_bundle",
]
