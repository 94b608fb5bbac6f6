"""airgap-bundler: signed, reproducible bundles for models in networks with no internet.

The public API is the names in ``__all__``; everything else may change between releases.
(They are suffixed so they do not shadow the ``bundler.pack`` and ``bundler.verify`` modules.)
They are imported on first use (PEP 562), so ``airgap`` and ``import bundler.x`` load only
the modules they need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import BundleError, BundleRejected
    from .formats.manifest import Manifest
    from .inspecting import read_manifest_unverified as inspect_bundle
    from .pack.cosign import cosign as cosign_bundle
    from .pack.pipeline import pack as pack_bundle
    from .verify.tree import check_unpacked
    from .verify.unpack import unpack as unpack_bundle
    from .verify.unpack import verify as verify_bundle

# public name -> (module, attribute)
_API = {
    "BundleError": (".errors", "BundleError"),
    "BundleRejected": (".errors", "BundleRejected"),
    "Manifest": (".formats.manifest", "Manifest"),
    "check_unpacked": (".verify.tree", "check_unpacked"),
    "cosign_bundle": (".pack.cosign", "cosign"),
    "inspect_bundle": (".inspecting", "read_manifest_unverified"),
    "pack_bundle": (".pack.pipeline", "pack"),
    "unpack_bundle": (".verify.unpack", "unpack"),
    "verify_bundle": (".verify.unpack", "verify"),
}

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
assert sorted(_API) == __all__


def __getattr__(name: str) -> Any:
    try:
        module, attr = _API[name]
    except KeyError:
        raise AttributeError(f"module 'bundler' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
