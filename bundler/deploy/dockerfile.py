"""The generated Dockerfiles (normal and baked) and image naming. Pure: no I/O.

The image holds the base, the scoring runtime, the model and the app code; site-packages is
mounted read-only at run time (mounted mode), or installed at start from mounted wheels
(dynamic mode), or copied in by the baked variant. Layers go from least to most often changed,
so a code change rebuilds only the last one.

Pinning the base image. An image made by `docker import` (and so every image on an isolated
host, where nothing is pulled) has no repository digest, only its image ID: the sha256 of its
config, which `docker save` / `docker load` keep. The classic builder of Docker 20.10 accepts
``FROM sha256:<image id>`` and resolves it from the local image store only, so the Dockerfile
names the base by image ID; a tag could point at anything by the time the bundle is built.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from ..errors import ProjectError
from ..layout import (
    APP_DIR,
    DOCKERFILE,
    DOCKERFILE_BAKED,
    IMAGE_PREFIX_MOUNT,
    IMAGE_ROOT,
    IMAGE_SITE_MOUNT,
    MODEL_DIR,
    PREFIX_DIR,
    RUNTIME_DIR,
    RUNTIME_LIB,
    RUNTIME_PACKAGE,
    SCORING_PORT,
    SITE_DIR,
)

Variant = Literal["normal", "baked"]
VARIANTS: Final[tuple[Variant, ...]] = ("normal", "baked")

# The unprivileged user the server runs as. Numeric, because a minimal base image may have
# neither useradd nor an /etc/passwd entry for it, and a RUN step is what we avoid.
IMAGE_USER: Final = "10001:10001"
# Build argument carrying the payload sha256: the Dockerfile is itself part of the payload,
# so it cannot contain the payload's digest; `airgap build` passes it from the verified manifest.
REVISION_ARG: Final = "AIRGAP_PAYLOAD_SHA256"

# Image labels. The OCI ones describe the image; ours let `airgap run` find the image built
# from one exact bundle (by revision) and variant, whatever tag it was given.
LABEL_TITLE: Final = "org.opencontainers.image.title"
LABEL_VERSION: Final = "org.opencontainers.image.version"
LABEL_CREATED: Final = "org.opencontainers.image.created"
LABEL_REVISION: Final = "org.opencontainers.image.revision"
LABEL_BASE_NAME: Final = "org.opencontainers.image.base.name"
LABEL_BASE_DIGEST: Final = "org.opencontainers.image.base.digest"
LABEL_VARIANT: Final = "airgap-bundler.variant"

_ENV_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IMAGE_ID: Final = re.compile(r"^sha256:[0-9a-f]{64}$")
_FROM: Final = re.compile(r"^FROM\s+(\S+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class DockerfileSpec:
    """What the Dockerfiles say about one bundle (all known before the payload is written)."""

    name: str
    version: str
    created: int  # epoch seconds (SOURCE_DATE_EPOCH when set), as in the manifest
    entry_script: str  # payload path, e.g. "app/score.py"
    base_ref: str  # bundle.toml's base image reference, kept for people and the label
    base_digest: str | None  # "sha256:<image id>", or None when no engine answered at pack
    env: Mapping[str, str] = field(default_factory=dict)  # manifest env for the scoring process
    has_prefix: bool = False  # the payload has prefix/ (launchers, headers, data files)


def image_path(payload_path: str) -> str:
    """Where a payload file lives inside the image."""
    return f"{IMAGE_ROOT}/{payload_path}"


def runtime_env(spec: DockerfileSpec) -> dict[str, str]:
    """The environment the image sets; ours last so a manifest entry cannot move the mounts."""
    env = dict(spec.env)
    env.update(
        {
            "AZUREML_ENTRY_SCRIPT": image_path(spec.entry_script),
            "AZUREML_MODEL_DIR": image_path(MODEL_DIR),
            "AZUREML_EXTRA_PYTHON_LIB_PATH": IMAGE_SITE_MOUNT,
            # Mounted beside site-packages (or copied, baked); `airgap run` empties it for
            # the dynamic mode, where pip's --target folder has its own bin/.
            **({"AIRGAP_PREFIX": IMAGE_PREFIX_MOUNT} if spec.has_prefix else {}),
            "PYTHONPATH": f"{image_path(RUNTIME_DIR)}:{image_path(RUNTIME_LIB)}",
            # The image's files are read-only to the server user: no .pyc writes to attempt.
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            # A numeric user has no home; pip (dynamic mode) and libraries want a writable one.
            "HOME": "/tmp",  # noqa: S108 - a private tmpfs per container (see bundler.deploy.engine)
        }
    )
    return env


def _quote(value: str, what: str) -> str:
    """A double-quoted Dockerfile word: no variable expansion, no line continuation."""
    if any(c in value for c in "\n\r\x00"):
        raise ProjectError(
            f"{what} contains a newline or NUL, which a Dockerfile cannot carry",
            remedy="put it on one line in bundle.toml",
        )
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def rfc3339(epoch: int) -> str:
    """The OCI `created` label's format, in UTC."""
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def health_probe(timeout: int) -> str:
    """Python source that exits 0 when GET / on the server's port answers 200: over https when
    the container has AIRGAP_TLS_CERT (the certificate is for clients to check; the probe of
    our own server on loopback sends nothing secret and does not verify it)."""
    return "\n".join(
        [
            "import os, sys, urllib.request as u",
            f"url, ctx = 'http://127.0.0.1:{SCORING_PORT}/', None",
            "if os.environ.get('AIRGAP_TLS_CERT'):",
            "    import ssl",
            "    url, ctx = 'https' + url[4:], ssl.create_default_context()",
            "    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE",
            f"sys.exit(0 if u.urlopen(url, timeout={timeout}, context=ctx).status == 200 else 1)",
        ]
    )


def _healthcheck() -> str:
    # No curl in a minimal image: the base's own python3 asks GET / on the server's port.
    cmd = json.dumps(["python3", "-c", health_probe(4)])
    # start-period covers dynamic mode, which installs the wheels before it listens.
    return f"HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 CMD {cmd}"


def render_dockerfile(spec: DockerfileSpec, *, baked: bool = False) -> str:
    """The Dockerfile text: the normal image (mounted and dynamic modes), or the baked one.

    Raises:
        ProjectError: an env name or value, or the name/version, cannot be written safely.
    """
    variant: Variant = "baked" if baked else "normal"
    for name in spec.env:
        if not _ENV_NAME.fullmatch(name):
            raise ProjectError(
                f"environment variable name {name!r} is not valid",
                remedy="use letters, digits and underscores, not starting with a digit",
            )
    if spec.base_digest is not None and not _IMAGE_ID.fullmatch(spec.base_digest):
        raise ProjectError(f"base image digest {spec.base_digest!r} is not 'sha256:' + 64 hex")
    if spec.base_digest:
        base = spec.base_digest
        pin = f"# Base image {spec.base_ref}, pinned by image ID (see docs/docker.md)."
    else:
        base = spec.base_ref
        pin = (
            f"# Base image {spec.base_ref} is NOT pinned: no Docker engine answered at pack\n"
            "# time, so `airgap build` refuses this bundle (see docs/docker.md)."
        )
    lines = [
        f"# Generated by airgap-bundler for {spec.name} {spec.version} ({variant} image).",
        "# Built by `airgap build` with networking disabled; no step needs the network.",
        pin,
        f"FROM {base}",
        "",
        "# Least to most often changed: runtime, (baked: packages), model, app code.",
        f"COPY {RUNTIME_DIR}/ {image_path(RUNTIME_DIR)}/",
    ]
    if variant == "baked":
        lines.append(f"COPY {SITE_DIR}/ {IMAGE_SITE_MOUNT}/")
        if spec.has_prefix:
            lines.append(f"COPY {PREFIX_DIR}/ {IMAGE_PREFIX_MOUNT}/")
    lines += [
        f"COPY {MODEL_DIR}/ {image_path(MODEL_DIR)}/",
        f"COPY {APP_DIR}/ {image_path(APP_DIR)}/",
        "",
    ]
    env = runtime_env(spec)
    lines.append(
        "ENV " + " \\\n    ".join(f"{k}={_quote(v, f'env {k}')}" for k, v in sorted(env.items()))
    )
    lines += [
        f"WORKDIR {image_path(APP_DIR)}",
        f"USER {IMAGE_USER}",
        f"EXPOSE {SCORING_PORT}",
        _healthcheck(),
        "ENTRYPOINT " + json.dumps(["python3", "-m", RUNTIME_PACKAGE]),
        "CMD []",
        "",
        "# Metadata last: the revision changes with every bundle and must not bust the layers.",
        f"ARG {REVISION_ARG}=unknown",
    ]
    labels = {
        LABEL_TITLE: spec.name,
        LABEL_VERSION: spec.version,
        LABEL_CREATED: rfc3339(spec.created),
        LABEL_BASE_NAME: spec.base_ref,
        LABEL_VARIANT: variant,
    }
    if spec.base_digest:
        labels[LABEL_BASE_DIGEST] = spec.base_digest
    label_words = [f"{k}={_quote(v, f'label {k}')}" for k, v in sorted(labels.items())]
    # The one expanded value: the build argument, passed from the verified manifest.
    label_words.append(f'{LABEL_REVISION}="${{{REVISION_ARG}}}"')
    lines.append("LABEL " + " \\\n      ".join(label_words))
    return "\n".join(lines) + "\n"


def render_dockerfiles(spec: DockerfileSpec) -> dict[str, bytes]:
    """Both Dockerfiles keyed by payload path (docker/Dockerfile, docker/Dockerfile.baked).

    Raises:
        ProjectError: as render_dockerfile.
    """
    return {
        DOCKERFILE: render_dockerfile(spec).encode("utf-8"),
        DOCKERFILE_BAKED: render_dockerfile(spec, baked=True).encode("utf-8"),
    }


def dockerfile_base(text: str) -> str | None:
    """The image the (single-stage) Dockerfile starts FROM, or None when there is no FROM."""
    m = _FROM.search(text)
    return m.group(1) if m else None


# ---- image naming -------------------------------------------------------------------------

_REPO_BAD: Final = re.compile(r"[^a-z0-9._-]+")
_TAG_BAD: Final = re.compile(r"[^A-Za-z0-9_.-]+")


def default_tag(name: str, version: str, variant: Variant = "normal") -> str:
    """``name:version`` (``name:version-baked``) made valid for Docker.

    Docker repository names are lowercase letters, digits and separators; tags are at most
    128 of [A-Za-z0-9_.-] not starting with a separator. PEP 440 local versions ("1.0+cpu")
    need the "+" replaced.
    """
    repo = _REPO_BAD.sub("-", name.lower()).strip("._-") or "airgap-model"
    tag = _TAG_BAD.sub("-", version).lstrip(".-") or "latest"
    if variant == "baked":
        tag += "-baked"
    return f"{repo}:{tag[:128]}"


def variant_tag(tag: str, variant: Variant) -> str:
    """The tag for ``variant`` given the user's --tag: ``repo:t`` becomes ``repo:t-baked``."""
    if variant == "normal":
        return tag
    repo, sep, t = tag.rpartition(":")
    if not sep or "/" in t:  # no tag part (a ':' may belong to a registry host:port)
        return f"{tag}:latest-baked"
    return f"{repo}:{t}-baked"


# ---- the data images of a fleet ------------------------------------------------------------

DataKind = Literal["data", "data-init"]
# Inside the data images: the parts at the top (data) or under one folder to copy (data-init).
DATA_INIT_SOURCE: Final = "/airgap-data"
DATA_INIT_TARGET: Final = "/airgap-target"
DATAFILE: Final = "Dockerfile.airgap-data"


def data_roots(has_prefix: bool) -> tuple[str, ...]:
    """The payload parts a data image carries, one layer each, least often changed first."""
    return (SITE_DIR, *((PREFIX_DIR,) if has_prefix else ()), MODEL_DIR)


def render_data_dockerfile(
    name: str,
    version: str,
    created: int,
    *,
    has_prefix: bool,
    kind: DataKind,
    base_digest: str | None = None,
) -> str:
    """The Dockerfile of a data image, generated on the isolated side from the verified
    manifest (it is not in the payload: it only copies listed, re-hashed files).

    ``data``: ``FROM scratch``, one layer per part at ``/site-packages``, ``/prefix``,
    ``/model``: for a Kubernetes image volume. ``data-init``: the same parts under
    /airgap-data on the pinned base image, whose ``cp`` copies them into an ``emptyDir``
    mounted at /airgap-target: an init container, for clusters without image volumes.

    Raises:
        ProjectError: the name/version cannot be written safely; data-init without a digest.
    """
    if kind == "data-init":
        if base_digest is None or not _IMAGE_ID.fullmatch(base_digest):
            raise ProjectError("the data-init image needs the bundle's pinned base image")
        lines = [
            f"# Generated by airgap-bundler for {name} {version} (data-init image).",
            f"FROM {base_digest}",
        ]
        lines += [f"COPY {r}/ {DATA_INIT_SOURCE}/{r}/" for r in data_roots(has_prefix)]
        lines += [
            f"USER {IMAGE_USER}",
            "ENTRYPOINT "
            + json.dumps(["cp", "-R", f"{DATA_INIT_SOURCE}/.", f"{DATA_INIT_TARGET}/"]),
        ]
    else:
        lines = [
            f"# Generated by airgap-bundler for {name} {version} (data image, for a volume).",
            "FROM scratch",
        ]
        lines += [f"COPY {r}/ /{r}/" for r in data_roots(has_prefix)]
    labels = {
        LABEL_TITLE: name,
        LABEL_VERSION: version,
        LABEL_CREATED: rfc3339(created),
        LABEL_VARIANT: kind,
    }
    words = [f"{k}={_quote(v, f'label {k}')}" for k, v in sorted(labels.items())]
    words.append(f'{LABEL_REVISION}="${{{REVISION_ARG}}}"')
    lines += [f"ARG {REVISION_ARG}=unknown", "LABEL " + " \\\n      ".join(words)]
    return "\n".join(lines) + "\n"


def data_tag(name: str, version: str, kind: DataKind) -> str:
    """``name-data:version`` (``name-data-init:version``)."""
    repo, _, tag = default_tag(name, version).rpartition(":")
    return f"{repo}-{kind}:{tag}"
