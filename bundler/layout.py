"""Names of the paths inside a bundle's payload and inside an unpacked destination."""

from __future__ import annotations

from typing import Final, Literal, get_args

PackageMode = Literal["mounted", "dynamic", "baked"]
PACKAGE_MODES: Final[tuple[str, ...]] = get_args(PackageMode)

# Top-level folders of the payload (and so of an unpacked DEST). Every payload path starts
# with one of these; the manifest parser refuses any other first component.
APP_DIR: Final = "app"  # the entry script and the optional source folder
MODEL_DIR: Final = "model"  # the model file or folder (AZUREML_MODEL_DIR points here)
SITE_DIR: Final = "site-packages"  # prebuilt tree for mounted and baked modes
WHEELS_DIR: Final = "wheels"  # wheels + requirements.txt for dynamic mode
RUNTIME_DIR: Final = "runtime"  # the scoring runtime: runtime/airgap_runtime + runtime/lib
DOCKER_DIR: Final = "docker"  # Dockerfile, Dockerfile.baked, optional base-image.tar
# The install prefix beside site-packages, as a virtualenv has one: bin/ (console-script and
# .data/scripts launchers), include/ (.data/headers), and .data/data files other than those
# under lib/pythonX.Y/site-packages (which are purelib, so they go into site-packages/).
PREFIX_DIR: Final = "prefix"
SBOM_DIR: Final = "sbom"  # since format revision 1.3: bom.cdx.json, the CycloneDX SBOM
PAYLOAD_ROOTS: Final = frozenset(
    {APP_DIR, MODEL_DIR, SITE_DIR, WHEELS_DIR, RUNTIME_DIR, DOCKER_DIR, PREFIX_DIR, SBOM_DIR}
)

WHEELS_REQUIREMENTS: Final = f"{WHEELS_DIR}/requirements.txt"
RUNTIME_PACKAGE: Final = "airgap_runtime"  # importable as `python -m airgap_runtime`
RUNTIME_LIB: Final = f"{RUNTIME_DIR}/lib"  # the runtime's own dependency tree (gunicorn)
DOCKERFILE: Final = f"{DOCKER_DIR}/Dockerfile"
DOCKERFILE_BAKED: Final = f"{DOCKER_DIR}/Dockerfile.baked"
BASE_IMAGE_TAR: Final = f"{DOCKER_DIR}/base-image.tar"
SBOM_FILE: Final = f"{SBOM_DIR}/bom.cdx.json"

# Inside an unpacked DEST, beside the payload tree: the verified manifest and signature,
# kept so `run`/`serve` can re-check the tree and `unpack` can refuse a rollback.
STATE_DIR: Final = ".airgap"
STATE_MANIFEST: Final = f"{STATE_DIR}/manifest.json"
STATE_SIGNATURE: Final = f"{STATE_DIR}/manifest.json.sig"
STATE_SIGNER: Final = f"{STATE_DIR}/signer.pub"  # the trusted key that verified it
STATE_VENV: Final = f"{STATE_DIR}/venv"  # the local runner's cached virtualenv
# Revision 1.4: the co-signatures seen at unpack (bundle members and detached files), in the
# detached-file format, so a later re-check with --policy can count them again.
STATE_COSIGNATURES: Final = f"{STATE_DIR}/cosignatures.json"

# Members of the outer (uncompressed) tar, in this order.
OUTER_PAYLOAD: Final = "payload.tar.zst"
OUTER_MANIFEST: Final = "manifest.json"
OUTER_SIGNATURE: Final = "manifest.json.sig"
# Revision 1.4: optional co-signatures after the signature, one member per key,
# "manifest.json.sig.<64 hex key id>", in increasing key id order.
OUTER_COSIGNATURE_PREFIX: Final = f"{OUTER_SIGNATURE}."
# A detached signature file sits beside the bundle: "iris.airgap" -> "iris.airgap.sig".
DETACHED_SUFFIX: Final = ".sig"
# A delta bundle (docs/format.md §13) starts with its signed descriptor, then the payload,
# the manifest (zstd-compressed: in a small delta it is most of the bytes) and its signature.
OUTER_DELTA: Final = "delta.json"
OUTER_DELTA_SIGNATURE: Final = "delta.json.sig"
OUTER_MANIFEST_ZST: Final = "manifest.json.zst"

# Where things live inside the image built by `airgap build`.
IMAGE_ROOT: Final = "/opt/airgap"
IMAGE_SITE_MOUNT: Final = "/opt/airgap/site-packages"
IMAGE_WHEELS_MOUNT: Final = "/opt/airgap/wheels"
IMAGE_PREFIX_MOUNT: Final = "/opt/airgap/prefix"
SCORING_PORT: Final = 5001
