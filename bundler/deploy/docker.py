"""The isolated side's Docker path: build, run and stop the images of an unpacked bundle.

Every file handed to the engine comes from the verified manifest: the build context is a tar
made here from the listed DEST files (hashed while they are copied), the base image tar is
hashed while it is streamed to `docker load`, and site-packages is re-checked before it is
mounted. The engine is reached through bundler.deploy.engine only.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import os
import ssl
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, Literal

from ..errors import (
    BundleError,
    ContainerError,
    ImageBuildError,
    TreeModifiedError,
)
from ..formats.manifest import FileEntry, Manifest
from ..layout import (
    APP_DIR,
    BASE_IMAGE_TAR,
    DOCKERFILE,
    DOCKERFILE_BAKED,
    IMAGE_PREFIX_MOUNT,
    IMAGE_ROOT,
    IMAGE_SITE_MOUNT,
    IMAGE_WHEELS_MOUNT,
    MODEL_DIR,
    PREFIX_DIR,
    RUNTIME_DIR,
    SCORING_PORT,
    SITE_DIR,
    WHEELS_DIR,
    WHEELS_REQUIREMENTS,
    PackageMode,
)
from ..preflight import Need, build_need, free_space, require, tree_need
from ..verify.tree import check_unpacked, open_regular
from .authkeys import CONTAINER_KEY_PATH, check_container_key_file
from .dockerfile import (
    DATAFILE,
    IMAGE_USER,
    LABEL_REVISION,
    LABEL_VARIANT,
    REVISION_ARG,
    DataKind,
    Variant,
    data_roots,
    data_tag,
    default_tag,
    dockerfile_base,
    health_probe,
    render_data_dockerfile,
    variant_tag,
)
from .engine import (
    BindMount,
    ContainerInfo,
    ContainerSpec,
    DockerEngine,
    Engine,
    PortBinding,
)
from .hostcheck import require as require_host
from .hostprobe import engine_facts, image_facts
from .local import client_host
from .records import BuiltRecord, write_built

# The runtime's metrics port inside the container (published on the host's --metrics-port).
CONTAINER_METRICS_PORT: Final = 9464

# Container labels: `airgap stop DEST` finds the container by the DEST path it serves.
LABEL_DEST: Final = "airgap-bundler.dest"
LABEL_NAME: Final = "airgap-bundler.name"
LABEL_MODE: Final = "airgap-bundler.mode"
CHUNK: Final = 1024 * 1024  # bytes per read when copying files
DEFAULT_PORT: Final = 6789
DEFAULT_START_TIMEOUT: Final = 300.0  # seconds; dynamic mode installs every wheel first
_POLL: Final = 0.1  # seconds between readiness probes from the host
_EXEC_POLL: Final = 0.25  # seconds between probes run inside an isolated container
_PROBE: Final = health_probe(2)
# Where --tls-cert/--tls-key are mounted (read-only, never copied into a layer).
IMAGE_TLS_CERT: Final = f"{IMAGE_ROOT}/tls/cert.pem"
IMAGE_TLS_KEY: Final = f"{IMAGE_ROOT}/tls/key.pem"

VariantChoice = Literal["auto", "normal", "baked", "all"]
LineSink = Callable[[str], None]


def _connect(engine: Engine | None) -> Engine:
    return engine if engine is not None else DockerEngine.connect()


# ---- build --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltImage:
    """One image `airgap build` made."""

    variant: str  # "normal", "baked", or (with --fleet) "data", "data-init"
    tag: str
    image_id: str
    seconds: float


@dataclass(frozen=True)
class BuildResult:
    """What `airgap build` did."""

    name: str
    version: str
    revision: str  # the payload sha256, also the image's revision label
    base_ref: str
    base_digest: str
    base_loaded: bool  # True when the base image came from DEST/docker/base-image.tar
    images: tuple[BuiltImage, ...]


def _variants(choice: VariantChoice, manifest: Manifest) -> tuple[Variant, ...]:
    if choice == "all":
        return ("normal", "baked")
    if choice == "auto":
        return ("baked",) if manifest.mode == "baked" else ("normal",)
    return (choice,)


class _HashingReader:
    """Reads exactly one file for tarfile while hashing it; checked against the manifest."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.sha256.update(data)
        return data


def _open_listed(dest: Path, entry: FileEntry) -> IO[bytes]:
    return open_regular(dest / entry.path, entry.path)


def _add_verified(tar: tarfile.TarFile, dest: Path, entry: FileEntry, mtime: int) -> None:
    """Copy one listed file into ``tar``, refusing it unless its bytes match the manifest."""
    info = tarfile.TarInfo(entry.path)
    info.size, info.mode, info.mtime = entry.size, entry.mode, mtime
    with _open_listed(dest, entry) as f:
        reader = _HashingReader(f)
        try:
            tar.addfile(info, reader)  # reads exactly entry.size bytes, or raises
        except OSError as e:  # tarfile's "unexpected end of data": the file shrank
            raise TreeModifiedError(
                "file changed since unpack", member=entry.path, remedy="unpack the bundle again"
            ) from e
        grown = f.read(1)
    if grown or reader.sha256.hexdigest() != entry.sha256:
        raise TreeModifiedError(
            "file changed since unpack", member=entry.path, remedy="unpack the bundle again"
        )


def build_context(
    dest: Path, manifest: Manifest, variant: Variant, out: IO[bytes]
) -> tuple[str, int]:
    """Write the build context tar for ``variant`` to ``out``: only what the Dockerfile needs.

    Returns the Dockerfile's path inside the context and the number of files. Never the
    whole DEST: no wheels, no base image tar, nothing unlisted.

    Raises:
        TreeModifiedError: a listed file differs from the manifest or cannot be read.
    """
    dockerfile = DOCKERFILE_BAKED if variant == "baked" else DOCKERFILE
    baked_roots = {SITE_DIR, PREFIX_DIR} if variant == "baked" else set()
    roots = {RUNTIME_DIR, MODEL_DIR, APP_DIR} | baked_roots
    files = manifest.file_map()
    if dockerfile not in files:
        raise ImageBuildError(
            f"the bundle has no {dockerfile}",
            remedy="pack it again with this version of airgap-bundler",
        )
    chosen = [files[dockerfile]] + [f for f in manifest.files if f.path.split("/", 1)[0] in roots]
    count = 0
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        # Every COPY source folder exists in the context, even with no files (a project
        # with no packages still has a site-packages folder to COPY in the baked image).
        for root in sorted(roots):
            d = tarfile.TarInfo(root)
            d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, manifest.created
            tar.addfile(d)
        for entry in chosen:
            _add_verified(tar, dest, entry, manifest.created)
            count += 1
    return dockerfile, count


def _verified_chunks(dest: Path, entry: FileEntry) -> Iterator[bytes]:
    """The base image tar in chunks, hashed as it goes; the last chunk is held back until the
    whole file matched the manifest, so the engine never receives a complete altered tar."""
    digest = hashlib.sha256()
    size = 0
    with _open_listed(dest, entry) as f:
        held = b""
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if held:
                yield held
            held = chunk
        if size != entry.size or digest.hexdigest() != entry.sha256:
            raise TreeModifiedError(
                "file changed since unpack", member=entry.path, remedy="unpack the bundle again"
            )
        if held:
            yield held


def _ensure_base(engine: Engine, dest: Path, manifest: Manifest, on_line: LineSink | None) -> bool:
    """Make sure the engine has the pinned base image; load it from DEST if carried."""
    base = manifest.base_image
    if base is None:
        raise ImageBuildError(
            f"bundle {manifest.name} {manifest.version} names no base image, so it has no "
            "Dockerfile",
            remedy='add base_image = "name:tag" to bundle.toml and pack again, or serve it '
            "without Docker: airgap serve DEST",
        )
    if base.digest is None:
        ref = base.ref
        raise ImageBuildError(
            f"bundle {manifest.name} {manifest.version} does not pin its base image by digest "
            "(no Docker engine answered when it was packed)",
            remedy=f"pack it again on a machine whose engine has {ref} "
            f"(`docker image inspect {ref}` works there), ideally with --include-base-image",
        )
    if engine.image_id(base.digest) == base.digest:
        return False
    entry = manifest.file_map().get(BASE_IMAGE_TAR)
    if entry is None:
        raise ImageBuildError(
            f"the Docker engine lacks the base image {base.ref} ({base.digest}) and the bundle "
            "does not carry it",
            remedy=f"on a machine that has it, run `docker save {base.ref} -o base.tar` (its "
            f"ID must be {base.digest}), carry base.tar here and run `docker load -i "
            "base.tar`; or pack again with --include-base-image",
        )
    if on_line:
        on_line(f"loading base image {base.ref} ({base.digest}) from {BASE_IMAGE_TAR}")
    for line in engine.load_image(_verified_chunks(dest, entry)):
        if on_line:
            on_line(line)
    # The image ID is the hash of the image config, which names every layer's content hash,
    # and the engine checks those while loading: this match proves the right image loaded.
    if engine.image_id(base.digest) != base.digest:
        raise ImageBuildError(
            f"{BASE_IMAGE_TAR} did not provide the pinned base image {base.digest}",
            remedy="the bundle's base image tar is not the image it pins; pack it again",
        )
    return True


def build(
    dest: Path,
    *,
    tag: str | None = None,
    variant: VariantChoice = "auto",
    trust: Sequence[Path] | None = None,
    engine: Engine | None = None,
    on_line: LineSink | None = None,
    policy: Path | None = None,
    fleet: bool = False,
) -> BuildResult:
    """Build the image(s) of the bundle unpacked at ``dest`` with networking disabled.

    ``fleet`` also builds the data-only images (site-packages, prefix and model; see
    :func:`bundler.deploy.dockerfile.render_data_dockerfile`) that `airgap push` sends to a
    registry for Kubernetes. Every image built is recorded in DEST/.airgap/images.json, which
    `airgap push` checks the registry's copy against.

    ``variant`` "auto" builds what `airgap run DEST` needs by default: the baked image for a
    baked-mode bundle, else the normal one (used by the mounted and dynamic modes). The
    default tag is ``name:version`` (``name:version-baked``). ``on_line`` gets the build log.

    Raises:
        SignatureError, TreeModifiedError (exit 3): the stored manifest or a file used does
            not verify.
        EngineUnavailableError: no engine answers.
        HostMismatchError: the engine's architecture, or the base image's C library or
            Python, does not fit the bundle's target (checked before anything is built).
        InsufficientSpaceError: the Docker data root (when local) or the temporary folder
            lacks the room the contexts, layers and base image take (checked before any of it).
        ImageBuildError: the base image is not pinned or missing, or the build failed.
    """
    dest = Path(os.path.abspath(dest))
    # The signature of the stored manifest is checked here; the files the build reads are
    # each checked while they are copied into the context (no second pass over the tree).
    manifest = check_unpacked(dest, trust=trust, roots=(), policy=policy)
    eng = _connect(engine)
    # The engine's architecture first (no image work), then the image's own libc and Python.
    require_host(manifest, engine_facts(eng), subject="the Docker engine", doing="build")
    require_build_space(eng, manifest, _variants(variant, manifest))
    base_loaded = _ensure_base(eng, dest, manifest, on_line)
    assert manifest.base_image is not None and manifest.base_image.digest is not None
    base_ref, base_digest = manifest.base_image.ref, manifest.base_image.digest
    require_host(
        manifest,
        image_facts(eng, base_digest),
        subject=f"the base image {base_ref} ({base_digest[:19]})",
        doing="build",
    )
    images = []
    for v in _variants(variant, manifest):
        want = variant_tag(tag, v) if tag else default_tag(manifest.name, manifest.version, v)
        start = time.monotonic()
        with tempfile.TemporaryFile(prefix="airgap-context-") as ctx:
            dockerfile, _ = build_context(dest, manifest, v, ctx)
            ctx.seek(0)
            _check_from(ctx, dockerfile, manifest.base_image.digest)
            ctx.seek(0)
            image_id = eng.build(
                ctx,
                dockerfile=dockerfile,
                tag=want,
                buildargs={REVISION_ARG: manifest.payload.sha256},
                on_line=on_line,
            )
        images.append(BuiltImage(v, want, image_id, time.monotonic() - start))
    if fleet:
        images += _build_data_images(eng, dest, manifest, on_line)
    write_built(
        dest,
        manifest.payload.sha256,
        [BuiltRecord(i.variant, i.tag, i.image_id) for i in images],
    )
    return BuildResult(
        name=manifest.name,
        version=manifest.version,
        revision=manifest.payload.sha256,
        base_ref=manifest.base_image.ref,
        base_digest=manifest.base_image.digest,
        base_loaded=base_loaded,
        images=tuple(images),
    )


def _build_data_images(
    eng: Engine, dest: Path, manifest: Manifest, on_line: LineSink | None
) -> list[BuiltImage]:
    """The data and data-init images: the listed parts, re-hashed while the context is made."""
    assert manifest.base_image is not None
    has_prefix = any(f.path.startswith(PREFIX_DIR + "/") for f in manifest.files)
    roots = data_roots(has_prefix)
    chosen = [f for f in manifest.files if f.path.split("/", 1)[0] in roots]
    built = []
    kinds: tuple[DataKind, ...] = ("data", "data-init")
    for kind in kinds:
        text = render_data_dockerfile(
            manifest.name,
            manifest.version,
            manifest.created,
            has_prefix=has_prefix,
            kind=kind,
            base_digest=manifest.base_image.digest,
        ).encode()
        want = data_tag(manifest.name, manifest.version, kind)
        start = time.monotonic()
        with tempfile.TemporaryFile(prefix="airgap-context-") as ctx:
            with tarfile.open(fileobj=ctx, mode="w", format=tarfile.PAX_FORMAT) as tar:
                info = tarfile.TarInfo(DATAFILE)
                info.size, info.mode, info.mtime = len(text), 0o644, manifest.created
                tar.addfile(info, io.BytesIO(text))
                for root in roots:
                    d = tarfile.TarInfo(root)
                    d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, manifest.created
                    tar.addfile(d)
                for entry in chosen:
                    _add_verified(tar, dest, entry, manifest.created)
            ctx.seek(0)
            image_id = eng.build(
                ctx,
                dockerfile=DATAFILE,
                tag=want,
                buildargs={REVISION_ARG: manifest.payload.sha256},
                on_line=on_line,
            )
        built.append(BuiltImage(kind, want, image_id, time.monotonic() - start))
    return built


def context_files(manifest: Manifest, variant: Variant) -> list[FileEntry]:
    """The manifest files `build_context` puts in ``variant``'s context (without checking)."""
    dockerfile = DOCKERFILE_BAKED if variant == "baked" else DOCKERFILE
    roots = {RUNTIME_DIR, MODEL_DIR, APP_DIR} | (
        {SITE_DIR, PREFIX_DIR} if variant == "baked" else set()
    )
    return [f for f in manifest.files if f.path == dockerfile or f.path.split("/", 1)[0] in roots]


def build_space(
    engine: Engine, manifest: Manifest, variants: Sequence[Variant]
) -> list[tuple[Path, Need, str]]:
    """Where `build` writes and how much: the Docker data root (when the engine is local)
    and the temporary folder holding the context tar, as (path, need, what) triples."""
    base = manifest.base_image
    load = base is not None and base.digest is not None
    load = load and base is not None and engine.image_id(str(base.digest)) != base.digest
    tar = manifest.file_map().get(BASE_IMAGE_TAR)
    base_bytes = tar.size if load and tar is not None else 0
    contexts = [[(f.path, f.size) for f in context_files(manifest, v)] for v in variants]
    checks: list[tuple[Path, Need, str]] = []
    root = engine.data_root()
    if root is not None and Path(root).is_dir():
        block = free_space(Path(root)).block_size
        # Each variant adds its own context and layers; the base image is loaded once.
        needs = [
            build_need(files, base_bytes if i == 0 else 0, block)
            for i, files in enumerate(contexts)
        ]
        total = Need(sum(n.bytes for n in needs), sum(n.inodes for n in needs))
        checks.append((Path(root), total, "the Docker data root"))
    tmp = Path(tempfile.gettempdir())
    block = free_space(tmp).block_size
    # One context tar at a time, as a single file: its size is the files plus tar headers.
    biggest = max(
        (sum(512 + -(-s // 512) * 512 for _, s in files) for files in contexts), default=0
    )
    checks.append((tmp, tree_need([("context.tar", biggest)], block), "the temporary folder"))
    return checks


def require_build_space(engine: Engine, manifest: Manifest, variants: Sequence[Variant]) -> None:
    """The build preflight: refuse before loading or building anything when it cannot fit.

    Raises:
        InsufficientSpaceError: naming the place, the bytes needed and free.
    """
    try:
        checks = build_space(engine, manifest, variants)
    except OSError as e:
        raise BundleError(f"cannot ask for free space: {e}") from e
    for path, need, what in checks:
        require(
            path,
            need,
            doing=f"build {manifest.name} {manifest.version} ({what})",
            remedy="free space there (`docker system prune` removes unused images) or move "
            "it (the engine's data-root in /etc/docker/daemon.json, TMPDIR for the temporary "
            "folder)",
        )


def _check_from(ctx: IO[bytes], dockerfile: str, digest: str) -> None:
    """The signed Dockerfile must start FROM the image the signed manifest pins."""
    with tarfile.open(fileobj=ctx, mode="r") as tar:
        member = tar.extractfile(dockerfile)
        text = member.read().decode("utf-8", "replace") if member else ""
    found = dockerfile_base(text)
    if found != digest:
        raise ImageBuildError(
            f"{dockerfile} starts FROM {found}, but the manifest pins {digest}",
            remedy="the bundle is inconsistent; pack it again",
        )


# ---- run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    """How `airgap run` starts the container."""

    mode: PackageMode | None = None  # None: the mode the bundle was packed for
    port: int = DEFAULT_PORT  # host port; 0 lets the engine pick a free one
    bind: str = "127.0.0.1"  # host address the port is published on
    network: bool = True  # False: --network none, reachable only from inside (docker exec)
    timeout: float = DEFAULT_START_TIMEOUT  # seconds to wait for GET / to answer 200
    trust: Sequence[Path] | None = None  # None: the key that verified the bundle at unpack
    policy: Path | None = None  # a trust policy file the stored signatures must meet (1.4)
    tls_cert: Path | None = None  # PEM certificate chain: serve HTTPS (with tls_key)
    tls_key: Path | None = None  # its PEM key, readable by its group (the container joins it)
    # Key auth: the file is bind-mounted read-only at CONTAINER_KEY_PATH (never copied into
    # an environment variable or a layer). It must belong to the image's user (IMAGE_USER).
    auth_key_file: Path | None = None
    metrics_port: int | None = None  # host port for the metrics, published on 127.0.0.1


@dataclass(frozen=True)
class Running:
    """A container serving a bundle."""

    container_id: str
    name: str
    image: str
    mode: PackageMode
    dest: str
    host_port: int | None
    scoring_uri: str | None  # None with --network none
    seconds: float  # from the call to the first healthy answer
    metrics_uri: str | None = None  # with --metrics-port (and a network)


def container_name(manifest: Manifest, dest: Path) -> str:
    """One container per DEST: the bundle name plus a hash of the DEST path."""
    repo = default_tag(manifest.name, manifest.version).split(":", 1)[0].replace("/", "-")
    return f"airgap-{repo}-{hashlib.sha256(str(dest).encode()).hexdigest()[:8]}"


def _roots_for(mode: PackageMode) -> set[str]:
    return {"mounted": {SITE_DIR, PREFIX_DIR}, "dynamic": {WHEELS_DIR}, "baked": set()}[mode]


def _run_env_and_mounts(
    dest: Path, manifest: Manifest, mode: PackageMode
) -> tuple[dict[str, str], tuple[BindMount, ...]]:
    paths = manifest.file_map()
    if mode == "dynamic":
        if WHEELS_REQUIREMENTS not in paths:
            raise ContainerError(
                f"bundle {manifest.name} carries no wheels for dynamic mode",
                remedy="run in mounted mode, or pack again with --include-wheels",
            )
        # The runtime refuses both package paths at once; the image sets the mounted one.
        env = {
            "AZUREML_EXTRA_PYTHON_LIB_PATH": "",
            "AZUREML_EXTRA_REQUIREMENTS_TXT": f"{IMAGE_WHEELS_MOUNT}/requirements.txt",
            "AIRGAP_PREFIX": "",
        }
        return env, (BindMount(str(dest / WHEELS_DIR), IMAGE_WHEELS_MOUNT),)
    if mode == "mounted":
        if not any(p.startswith(SITE_DIR + "/") for p in paths):
            if manifest.mode == "dynamic":
                raise ContainerError(
                    f"bundle {manifest.name} was packed for dynamic mode and has no "
                    "site-packages tree",
                    remedy="run it with --mode dynamic",
                )
            return {"AZUREML_EXTRA_PYTHON_LIB_PATH": ""}, ()  # no packages at all
        mounts = [BindMount(str(dest / SITE_DIR), IMAGE_SITE_MOUNT)]
        if any(p.startswith(PREFIX_DIR + "/") for p in paths):
            mounts.append(BindMount(str(dest / PREFIX_DIR), IMAGE_PREFIX_MOUNT))
        return {}, tuple(mounts)
    return {}, ()


def _auth_and_metrics(
    options: RunOptions,
) -> tuple[dict[str, str], tuple[BindMount, ...], tuple[PortBinding, ...]]:
    """The environment, mounts and extra ports for --auth-key-file and --metrics-port: the
    key file's path only (the key is read inside the container from the read-only mount)."""
    env: dict[str, str] = {}
    mounts: tuple[BindMount, ...] = ()
    ports: tuple[PortBinding, ...] = ()
    if options.auth_key_file is not None:
        source = check_container_key_file(options.auth_key_file, IMAGE_USER)
        env["AIRGAP_AUTH_KEY_FILE"] = CONTAINER_KEY_PATH
        mounts = (BindMount(str(source), CONTAINER_KEY_PATH),)
    if options.metrics_port is not None:
        env["AIRGAP_METRICS_PORT"] = str(CONTAINER_METRICS_PORT)
        # Loopback only: metrics tell a lot about the model and carry no auth of their own.
        ports = (PortBinding(CONTAINER_METRICS_PORT, "127.0.0.1", options.metrics_port),)
    return env, mounts, ports


def _find_image(engine: Engine, manifest: Manifest, variant: Variant) -> str:
    found = engine.images_with_labels(
        {LABEL_REVISION: manifest.payload.sha256, LABEL_VARIANT: variant}
    )
    if not found:
        flag = " --variant baked" if variant == "baked" else ""
        raise ContainerError(
            f"no {variant} image of {manifest.name} {manifest.version} is built from this "
            f"bundle (revision {manifest.payload.sha256[:12]})",
            remedy=f"build it first: airgap build DEST{flag}",
        )
    return found[0]


def _tls_mounts(
    options: RunOptions,
) -> tuple[dict[str, str], tuple[BindMount, ...], tuple[int, ...]]:
    """The environment, read-only file mounts and group for --tls-cert/--tls-key."""
    if options.tls_cert is None and options.tls_key is None:
        return {}, (), ()
    if options.tls_cert is None or options.tls_key is None:
        raise ContainerError(
            "TLS needs both a certificate and its key", remedy="pass --tls-cert and --tls-key"
        )
    cert, key = Path(os.path.abspath(options.tls_cert)), Path(os.path.abspath(options.tls_key))
    for path in (cert, key):
        if not path.is_file():
            raise ContainerError(f"no such file: {path}", remedy="check --tls-cert/--tls-key")
    info = key.stat()
    if not info.st_mode & 0o044:
        # The server runs as an unprivileged user of its own: it joins the key's group.
        raise ContainerError(
            f"{key} is readable by its owner only, and the server in the container runs "
            f"as user {IMAGE_USER}",
            remedy=f"make it readable by its group, and only the group: chmod 640 {key}",
        )
    env = {"AIRGAP_TLS_CERT": IMAGE_TLS_CERT, "AIRGAP_TLS_KEY": IMAGE_TLS_KEY}
    mounts = (BindMount(str(cert), IMAGE_TLS_CERT), BindMount(str(key), IMAGE_TLS_KEY))
    return env, mounts, (info.st_gid,)


def _http_ok(url: str) -> bool:
    context = None
    if url.startswith("https:"):
        # Our own container's readiness; the certificate is for its clients to check.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as r:  # noqa: S310
            return bool(r.status == 200)
    except (OSError, urllib.error.URLError, http.client.HTTPException):
        # Refused, reset by the port proxy before the server listens, or not yet a 200.
        return False


def _emit_logs(engine: Engine, container: str, on_log: LineSink | None) -> None:
    if on_log is None:
        return
    for line in engine.logs(container, tail=200).splitlines():
        on_log(line)


def _wait_healthy(
    engine: Engine,
    container: str,
    url: str | None,
    timeout: float,
    on_log: LineSink | None,
) -> ContainerInfo:
    deadline = time.monotonic() + timeout
    while True:
        info = engine.inspect(container)
        if info is None or info.status in ("exited", "dead"):
            _emit_logs(engine, container, on_log)
            code = info.exit_code if info else None
            raise ContainerError(
                f"the container exited during start (status {code})",
                remedy="see the container log above",
            )
        if url is not None:
            ok = _http_ok(url)
        else:
            ok = engine.exec_probe(container, ["python3", "-c", _PROBE])[0] == 0
        if ok:
            return info
        if time.monotonic() > deadline:
            _emit_logs(engine, container, on_log)
            raise ContainerError(
                f"the server did not answer GET / within {timeout:.0f}s",
                remedy="see the container log above; raise --timeout for a slow init()",
            )
        time.sleep(_POLL if url is not None else _EXEC_POLL)


def start(
    dest: Path,
    options: RunOptions | None = None,
    *,
    engine: Engine | None = None,
    on_log: LineSink | None = None,
) -> Running:
    """Start the bundle at ``dest`` in a container and wait until GET / answers 200.

    Mounted mode re-checks DEST's site-packages against the signed manifest before mounting
    it read-only; dynamic mode re-checks and mounts the wheels; baked mode mounts nothing.
    On a failed start the container's log goes to ``on_log`` and the container is removed.

    Raises:
        TreeModifiedError (exit 3): a file to be mounted changed since unpack.
        EngineUnavailableError: no engine answers (the remedy names the local runner).
        ContainerError: no image built, already running, or the server did not come up.
    """
    began = time.monotonic()
    options = options or RunOptions()
    dest = Path(os.path.abspath(dest))
    # Verify before anything is mounted: a changed file is refused, naming it.
    manifest = check_unpacked(dest, trust=options.trust, roots=(), policy=options.policy)
    mode = options.mode or manifest.mode
    if _roots_for(mode):
        manifest = check_unpacked(
            dest, trust=options.trust, roots=_roots_for(mode), policy=options.policy
        )
    env, mounts = _run_env_and_mounts(dest, manifest, mode)
    tls_env, tls_mounts, groups = _tls_mounts(options)
    env, mounts = {**env, **tls_env}, mounts + tls_mounts
    secure_env, secure_mounts, extra_ports = _auth_and_metrics(options)
    env, mounts = {**env, **secure_env}, mounts + secure_mounts
    eng = _connect(engine)
    image = _find_image(eng, manifest, "baked" if mode == "baked" else "normal")
    name = container_name(manifest, dest)
    for old in eng.containers_with_labels({LABEL_DEST: str(dest)}):
        if old.status in ("running", "restarting", "created"):
            where = f" on port {old.host_port}" if old.host_port else ""
            raise ContainerError(
                f"{manifest.name} from {dest} is already running as {old.name}{where}",
                remedy="stop it first: airgap stop DEST",
            )
        eng.stop(old.id)  # a leftover from an earlier run that exited
    spec = ContainerSpec(
        image=image,
        name=name,
        env=env,
        labels={
            LABEL_DEST: str(dest),
            LABEL_NAME: manifest.name,
            LABEL_MODE: mode,
            LABEL_REVISION: manifest.payload.sha256,
        },
        mounts=mounts,
        port=PortBinding(SCORING_PORT, options.bind, options.port) if options.network else None,
        network=options.network,
        groups=groups,
        extra_ports=extra_ports,
    )
    container = eng.run(spec)
    try:
        info = eng.inspect(container)
        port = info.host_port if info else None
        if options.network and not port:
            raise ContainerError("the engine did not publish the scoring port")
        scheme = "https" if tls_env else "http"
        base = f"{scheme}://{client_host(options.bind)}:{port}" if options.network else None
        info = _wait_healthy(eng, container, f"{base}/" if base else None, options.timeout, on_log)
    except BaseException:
        # Ctrl-C or a failed start: leave nothing running behind.
        with contextlib.suppress(BundleError):
            eng.stop(container, timeout=2)
        raise
    return Running(
        container_id=container,
        name=name,
        image=image,
        mode=mode,
        dest=str(dest),
        host_port=info.host_port,
        scoring_uri=f"{base}/score" if base else None,
        seconds=time.monotonic() - began,
        metrics_uri=(
            f"http://127.0.0.1:{options.metrics_port}/metrics"
            if options.metrics_port is not None and options.network
            else None
        ),
    )


def follow(running: Running, *, engine: Engine | None = None, on_log: LineSink) -> int | None:
    """Stream the container's log until it exits or Ctrl-C; then stop and remove it.

    Returns the container's exit status, or None when it was stopped by Ctrl-C.
    """
    eng = _connect(engine)
    code: int | None = None
    try:
        for line in eng.follow_logs(running.container_id):
            on_log(line)
        info = eng.inspect(running.container_id)
        code = info.exit_code if info else None
    except KeyboardInterrupt:
        code = None
    finally:
        with contextlib.suppress(BundleError):
            eng.stop(running.container_id)
    return code


@dataclass(frozen=True)
class Stopped:
    """A container `airgap stop` removed."""

    name: str
    status: str  # what it was doing before it was stopped


def stop(dest: Path, *, engine: Engine | None = None) -> list[Stopped]:
    """Stop and remove every container serving ``dest`` (found by its DEST label).

    Raises:
        EngineUnavailableError: no engine answers.
        ContainerError: the engine refused to stop one.
    """
    dest = Path(os.path.abspath(dest))
    eng = _connect(engine)
    stopped = []
    for c in eng.containers_with_labels({LABEL_DEST: str(dest)}):
        eng.stop(c.id)
        stopped.append(Stopped(c.name, c.status))
    return stopped
