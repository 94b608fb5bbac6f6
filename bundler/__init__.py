"""airgap-bundler: signed, reproducible bundles for models in networks with no internet.

The public API is the names in ``__all__``; everything else may change between releases.
"""

from __future__ import annotations

from .errors import BundleError, BundleRejected
from .formats.manifest import Manifest
from .verify.tree import check_unpacked
from .verify.unpack import unpack, verify

__all__ = [
    "BundleError",
    "BundleRejected",
    "Manifest",
    "check_unpacked",
    "unpack",
    "verify",
]
