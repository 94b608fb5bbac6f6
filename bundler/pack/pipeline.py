"""The online side: turn a project folder into a signed bundle (orchestration only)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Literal

from packaging.utils import canonicalize_name, parse_wheel_filename

from ..errors import ProjectError
from ..formats import manifest as mf
from ..formats.archive import frame_params
from ..formats.signing import load_private_key
from ..layout import (
    APP_DIR,
    BASE_IMAGE_TAR,
    PREFIX_DIR,
    RUNTIME_DIR,
    RUNTIME_LIB,
    RUNTIME_PACKAGE,
    SBOM_FILE,
    SITE_DIR,
    WHEELS_DIR,
    WHEELS_REQUIREMENTS,
)
from ..progress import NullProgress, Progress
from ..target import Target
from .assemble import BundleMeta, SourceFile, collect_tree, normal_mode, write_bundle
from .checks import check_pack
from .lock import LockedRequirement, for_target, parse_lock, render_lock
from .project import Project, load_project
from .sitetree import bytecode_interpreter
from .treecache import (
    BuiltTrees,
    KeptFrames,
    TreeCache,
    TreeReport,
    TreeSpec,
    build_and_write,
    early_frame_checks,
)
from .wheels import PipDownloader, cached_picks, fetch_wheels, wheel_digest

# Whether site-packages ships .pyc files (see `airgap pack --help`).
BytecodeChoice = Literal["auto", "require", "none"]
RUNTIME_SOURCE = Path(__file__).parent.parent / "runtime"
RUNTIME_LOCK = RUNTIME_SOURCE / "requirements.lock"
# Runtime modules copied to the top of runtime/ rather than into runtime/airgap_runtime/.
TOPLEVEL_DIR = "_toplevel"


def source_date_epoch(environ: dict[str, str] | None = None) -> int:
    """The bundle's creation time: SOURCE_DATE_EPOCH when set (reproducible), else now.

    Raises:
        ProjectError: SOURCE_DATE_EPOCH is set but is not a non-negative integer.
    """
    env = os.environ if environ is None else environ
    raw = env.get("SOURCE_DATE_EPOCH")
    if raw is None or raw == "":
        return int(time.time())
    if not raw.isdigit():
        raise ProjectError(
            f"SOURCE_DATE_EPOCH={raw!r} is not a whole number of seconds",
            remedy="set it to e.g. $(git log -1 --format=%ct), or unset it",
        )
    return int(raw)


def runtime_sources() -> list[SourceFile]:
    """The scoring runtime's own files: ``runtime/airgap_runtime/**.py``.

    A sub-package named ``_toplevel`` holds modules that must be importable at the top level
    of the scoring process (e.g. the ``azureml.contrib.services`` compatibility shim): its
    contents go to ``runtime/`` itself, which is on the server's PYTHONPATH.
    """
    files = []
    for p in sorted(RUNTIME_SOURCE.rglob("*.py")):
        rel = p.relative_to(RUNTIME_SOURCE).as_posix()
        if rel.startswith(TOPLEVEL_DIR + "/"):
            dest = f"{RUNTIME_DIR}/{rel[len(TOPLEVEL_DIR) + 1 :]}"
        else:
            dest = f"{RUNTIME_DIR}/{RUNTIME_PACKAGE}/{rel}"
        files.append(SourceFile(dest, p.read_bytes(), 0o644))
    return files


def _app_files(project: Project) -> list[SourceFile]:
    files: list[SourceFile] = []
    entry = project.entry_script
    if project.source_dir is not None:
        files.extend(collect_tree(project.source_dir, APP_DIR))
    names = {f.path for f in files}
    entry_path = f"{APP_DIR}/{entry.name}"
    if entry_path not in names:
        files.append(SourceFile(entry_path, entry, normal_mode(entry.stat().st_mode)))
    return files


def _model_files(project: Project) -> list[SourceFile]:
    """Each model file or folder under ``model/``, keeping its own name (Azure ML's layout)."""
    files: list[SourceFile] = []
    for m in project.models:
        if m.path.is_dir():
            found = collect_tree(m.path, m.payload_path)
            if not found:
                raise ProjectError(f"model folder {m.path} is empty")
            files.extend(found)
        else:
            files.append(SourceFile(m.payload_path, m.path, 0o644))
    return files


def _to_manifest_target(target: Target) -> mf.Target:
    return mf.Target(
        python=target.python,
        implementation=target.implementation,
        abi=target.abi,
        platforms=target.platforms,
    )


def _base_image(
    project: Project, include: bool, workdir: Path
) -> tuple[mf.BaseImage | None, list[SourceFile]]:
    """Pin the base image by the local engine's image ID; save it when asked to carry it."""
    if project.base_image is None:
        if include:
            raise ProjectError(
                "--include-base-image given but bundle.toml names no base_image",
                remedy='add base_image = "name:tag" to bundle.toml',
            )
        return None, []
    if not include:
        from ..deploy import enginesocket

        try:
            digest = enginesocket.image_id(project.base_image)
        except enginesocket.NotHere:  # a tcp or ssh DOCKER_HOST: the SDK speaks those
            from ..deploy.engine import resolve_base_image

            digest = resolve_base_image(project.base_image)
        return mf.BaseImage(ref=project.base_image, digest=digest, included=False), []
    from ..deploy.engine import resolve_base_image, save_image

    digest = resolve_base_image(project.base_image, required=True)
    tar = workdir / "base-image.tar"
    save_image(project.base_image, tar, digest=digest)
    return (
        mf.BaseImage(ref=project.base_image, digest=digest, included=True),
        [SourceFile(BASE_IMAGE_TAR, tar, 0o644)],
    )


def _dockerfiles(
    project: Project, base: mf.BaseImage | None, created: int, *, has_prefix: bool
) -> list[SourceFile]:
    if base is None:
        return []
    from ..deploy.dockerfile import DockerfileSpec, render_dockerfiles

    spec = DockerfileSpec(
        base_ref=base.ref,
        base_digest=base.digest,
        name=project.name,
        version=project.version,
        created=created,
        entry_script=f"{APP_DIR}/{project.entry_script.name}",
        env=dict(project.env),
        has_prefix=has_prefix,
    )
    return [SourceFile(path, data, 0o644) for path, data in render_dockerfiles(spec).items()]


def pack(
    project_dir: Path,
    out: Path,
    key: Path,
    *,
    passphrase: bytes | None = None,
    level: int = 3,
    threads: int = 0,
    include_base_image: bool = False,
    include_wheels: bool = False,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    find_links: Sequence[Path] = (),
    warn: Callable[[str], None] | None = None,
    bytecode: BytecodeChoice = "auto",
    tree_cache: TreeCache | None = None,
    on_tree: Callable[[TreeReport], None] | None = None,
) -> mf.Manifest:
    """Build the bundle for the project in ``project_dir`` and write it to ``out``.

    ``find_links``: folders of locally built wheels (e.g. for pins that publish only a
    source distribution) that pip may take a locked wheel from; each is hash-checked
    against the lock like a downloaded one. ``warn`` receives one line per thing the bundle
    carries differently from a virtualenv install (see :func:`build_site_tree`), and when
    the tree ships without bytecode because no interpreter of the target's version exists
    here. Library code never prints: the CLI prints these as ``warning: ...``.

    ``tree_cache``: where built trees (site-packages and prefix, runtime/lib, with their
    bytecode) are reused from and stored (:mod:`bundler.pack.treecache`); None builds them
    afresh. A bundle is byte-identical either way. ``on_tree`` hears how each was obtained.

    Raises:
        ProjectError (also: the entry script or target cannot serve, every problem listed),
        LockError, DownloadError, SiteTreeError, KeyFileError, TreeCacheError,
        EngineUnavailableError (only with ``include_base_image``), BundleError.
    """
    progress = progress or NullProgress()
    warn = warn or (lambda _line: None)
    # The SBOM library takes a while to import: load it meanwhile (a failure there is
    # reported where the SBOM is written, by the import in _sbom_file).
    threading.Thread(target=_import_quietly, args=(".sbom",), daemon=True).start()
    project = load_project(project_dir)
    check_pack(project.entry_script, project.target, warn=warn)  # before any download
    private_key = load_private_key(key, passphrase)  # fail before any download
    python = _bytecode_python(project.target, bytecode, warn)  # and this too
    created = source_date_epoch()
    target = project.target
    source = _wheel_source(find_links)
    reqs = for_target(parse_lock(project.lock), target)
    runtime_reqs = for_target(parse_lock(RUNTIME_LOCK), target)
    frames_for = (frame_params(level, created), created)
    early = _early_checks(tree_cache, reqs, runtime_reqs, target, python, cache_dir, frames_for)
    with tempfile.TemporaryDirectory(prefix="airgap-pack-") as tmp, contextlib.ExitStack() as stack:
        if early is not None:
            stack.callback(early.close)  # when pack fails before build_and_write takes them
        work = Path(tmp)
        wheels = fetch_wheels(reqs, target, cache_dir=cache_dir, progress=progress, source=source)
        runtime_wheels = fetch_wheels(runtime_reqs, target, cache_dir=cache_dir, progress=progress)
        base, base_files = _base_image(project, include_base_image, work)

        def write(trees: BuiltTrees) -> mf.Manifest:
            files: list[SourceFile] = [
                *_app_files(project),
                *_model_files(project),
                *trees.files,
                *runtime_sources(),
                *base_files,
            ]
            has_prefix = any(f.path.startswith(PREFIX_DIR + "/") for f in files)
            files.extend(_dockerfiles(project, base, created, has_prefix=has_prefix))
            if project.mode == "dynamic" or include_wheels:
                files.extend(_wheel_files(wheels, render_lock(reqs)))
            sbom_trees = {
                SITE_DIR: (trees.folder(SITE_DIR, "site"), wheels),
                RUNTIME_LIB: (trees.folder(RUNTIME_LIB, "site"), runtime_wheels),
            }
            files.append(_sbom_file(project, created, base, files, sbom_trees, progress))
            installed = trees.installed(SITE_DIR)
            meta = BundleMeta(
                name=project.name,
                version=project.version,
                created=created,
                expires=project.expires_at(created),
                target=_to_manifest_target(target),
                entry_script=f"{APP_DIR}/{project.entry_script.name}",
                mode=project.mode,
                env=dict(project.env),
                packages=tuple(mf.Package(name=n, version=v) for n, v in sorted(installed)),
                base_image=base,
                smoke=project.smoke,
            )
            return write_bundle(
                out,
                files,
                meta,
                private_key,
                level=level,
                threads=threads,
                progress=progress,
                check=trees.check,
                frames=trees.frames,
            )

        return build_and_write(
            _tree_specs(wheels, runtime_wheels),
            write,
            cache=tree_cache,
            target=target,
            python=python,
            work=work,
            progress=progress,
            warn=warn,
            on_tree=on_tree,
            # The headers carry `created`: frames are worth keeping only when it is pinned.
            keep_frames_of=out if os.environ.get("SOURCE_DATE_EPOCH") else None,
            # Kept frames are checked on other threads while the rest of the pack runs.
            frames_for=frames_for,
            early=early,
        )


def _tree_specs(wheels: Sequence[Path], runtime_wheels: Sequence[Path]) -> list[TreeSpec]:
    # The runtime is started as `python -m`: its console scripts (a prefix) are not needed.
    return [
        TreeSpec(SITE_DIR, tuple(wheels), (("site", SITE_DIR), ("prefix", PREFIX_DIR))),
        TreeSpec(RUNTIME_LIB, tuple(runtime_wheels), (("site", RUNTIME_LIB),)),
    ]


def _early_checks(
    tree_cache: TreeCache | None,
    reqs: Sequence[LockedRequirement],
    runtime_reqs: Sequence[LockedRequirement],
    target: Target,
    python: Path | None,
    cache_dir: Path | None,
    frames_for: tuple[str, int],
) -> KeptFrames | None:
    """Kept frames' checks started from the wheel cache's pick records, before the wheels
    are re-hashed (see early_frame_checks: only work starts early, nothing is trusted)."""
    if tree_cache is None:
        return None
    picks = cached_picks(reqs, target, cache_dir)
    runtime_picks = cached_picks(runtime_reqs, target, cache_dir)
    if picks is None or runtime_picks is None:
        return None
    specs = _tree_specs(picks, runtime_picks)
    return early_frame_checks(tree_cache, specs, target, python, frames_for)


def _sbom_file(
    project: Project,
    created: int,
    base: mf.BaseImage | None,
    files: Sequence[SourceFile],
    trees: Mapping[str, tuple[Path, Sequence[Path]]],
    progress: Progress,
) -> SourceFile:
    """``sbom/bom.cdx.json`` from the built trees' METADATA files, the wheels' and the
    models' hashes (the I/O edge of :func:`build_sbom`, which is pure)."""
    # Imported here: cyclonedx-python-lib takes longer to import than the rest of the CLI.
    from .sbom import Distribution, Model, ModelFile, SbomInputs, build_sbom

    progress.start("writing the SBOM")
    dists: list[Distribution] = []
    for location, (tree, tree_wheels) in trees.items():
        by_name = {canonicalize_name(parse_wheel_filename(w.name)[0]): w for w in tree_wheels}
        for meta in sorted(tree.glob("*.dist-info/METADATA")):
            name = canonicalize_name(meta.parent.name.removesuffix(".dist-info").rsplit("-", 1)[0])
            wheel = by_name[name]  # the installer made one .dist-info per wheel
            dists.append(Distribution(meta.read_bytes(), location, wheel.name, wheel_digest(wheel)))
    models = []
    for m in project.models:
        found = [
            f for f in files if f.path == m.payload_path or f.path.startswith(m.payload_path + "/")
        ]
        hashed = []
        for f in found:
            with f.open() as src:
                hashed.append(ModelFile(f.path, _sha256_stream(src)))
        models.append(Model(m.payload_path, tuple(hashed), m.name, m.version))
    inputs = SbomInputs(
        name=project.name,
        version=project.version,
        created=created,
        tool_version=_tool_version(),
        distributions=tuple(dists),
        models=tuple(models),
        base_image=base,
    )
    data = build_sbom(inputs)
    progress.finish()
    return SourceFile(SBOM_FILE, data, 0o644)


def _import_quietly(module: str) -> None:
    with contextlib.suppress(Exception):
        importlib.import_module(module, __package__)


def _tool_version() -> str:
    try:
        return importlib.metadata.version("airgap-bundler")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        return "0+unknown"


def _sha256_stream(src: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := src.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def _wheel_source(find_links: Sequence[Path]) -> PipDownloader | None:
    """pip, also looking in ``find_links`` folders; None (the default source) without any.

    Raises:
        ProjectError: a folder does not exist.
    """
    if not find_links:
        return None
    missing = [str(d) for d in find_links if not d.is_dir()]
    if missing:
        raise ProjectError(
            f"--find-links folder(s) {', '.join(missing)} do not exist",
            remedy="pass folders holding the wheels you built",
        )
    args: list[str] = []
    for folder in find_links:
        args += ["--find-links", str(folder.resolve())]
    return PipDownloader(extra_args=tuple(args))


def _bytecode_python(
    target: Target, choice: BytecodeChoice, warn: Callable[[str], None]
) -> Path | None:
    """The interpreter that compiles the trees, or None for none (with a warning for auto).

    Raises:
        ProjectError: ``require`` and no interpreter of the target's version is here.
    """
    if choice == "none":
        return None
    python = bytecode_interpreter(target)
    if python is not None:
        return python
    advice = (
        f"install python{target.python} (or `pyenv install {target.python}`) here and pack again"
    )
    if choice == "require":
        raise ProjectError(
            f"--bytecode require: no Python {target.python} was found on this machine to "
            "compile site-packages for the target",
            remedy=f"{advice}, or pass --bytecode auto or none",
        )
    if target.implementation == "cp" and target.python_version >= (3, 7):
        warn(
            f"no Python {target.python} was found on this machine, so site-packages ships "
            "without bytecode and the isolated host compiles every module in memory at "
            f"each start; {advice} to include it (the bundle then differs from one packed "
            "where that Python exists: --bytecode require or none make it machine-independent)"
        )
    return None


def _wheel_files(wheels: Sequence[Path], requirements: str) -> list[SourceFile]:
    files = [SourceFile(f"{WHEELS_DIR}/{w.name}", w, 0o644) for w in wheels]
    files.append(SourceFile(WHEELS_REQUIREMENTS, requirements.encode(), 0o644))
    return files
