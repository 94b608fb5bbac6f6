"""The `airgap` command: parse options, call one library function, print; one error funnel."""

from __future__ import annotations

import datetime
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from .errors import EXIT_ERROR, BundleError, UsageError
from .formats.manifest import Manifest
from .formats.signing import (
    PRIVATE_KEY_NAME,
    PUBLIC_KEY_NAME,
    generate_keypair,
    private_key_is_encrypted,
)
from .inspecting import read_manifest_unverified
from .progress import NullProgress, Progress
from .verify.unpack import unpack as unpack_bundle
from .verify.unpack import verify as verify_bundle

P = ParamSpec("P")
R = TypeVar("R")


def _funnel(fn: Callable[P, R]) -> Callable[P, R]:
    """The one place an expected failure becomes a message and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except BundleError as e:
            ctx = click.get_current_context(silent=True)
            as_json = bool(ctx and ctx.params.get("as_json"))
            if as_json:
                click.echo(
                    json.dumps({"ok": False, "error": e.diagnostics(), "exit_code": e.exit_code})
                )
            click.echo(e.diagnostics(), err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def emit_json(data: Any) -> None:
    """Print one JSON document for automation (`--json`)."""
    click.echo(json.dumps(data, indent=2, sort_keys=True))


# Options and arguments several commands share.
_TRUST_HELP = "Trusted public key file, or a folder of *.pub / *.pem keys (repeatable)."
_trust_option = click.option(
    "--trust",
    "trust",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help=_TRUST_HELP,
    envvar="AIRGAP_TRUST",
)
_recheck_trust = click.option(
    "--trust",
    "trust",
    multiple=True,
    type=click.Path(path_type=Path),
    envvar="AIRGAP_TRUST",
    help="Re-check DEST against this trusted key (repeatable; default: the key that "
    "verified it at unpack).",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for automation.")
_python_option = click.option(
    "--python",
    "python",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Make the virtualenv from this interpreter instead of searching the host "
    "(it must be the bundle's Python version and implementation).",
)
_quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress display.")
_dest_arg = click.argument("dest", type=click.Path(path_type=Path, file_okay=False, exists=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="airgap-bundler", prog_name="airgap")
def cli() -> None:
    """Carry a model, its Python packages and its server into a network with no internet.

    \b
    Online side:    keygen, lock, pack, inspect
    Isolated side:  verify, unpack, serve (local), build / run / stop (Docker)

    \b
    Exit codes: 0 ok, 1 error, 2 usage, 3 bundle rejected.
    """


# ---- commands are registered below; each body is one library call wrapped in _funnel ----


# ---- lock (bundler/lock.py) --------------------------------------------------------------


@cli.command("lock")
@click.argument("requirements_in", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Where to write the lock (default: requirements.lock beside REQUIREMENTS_IN).",
)
@click.option("--upgrade", is_flag=True, help="Re-resolve to the newest allowed versions.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for automation.")
@_funnel
def lock_cmd(requirements_in: Path, output: Path | None, upgrade: bool, as_json: bool) -> None:
    """Resolve REQUIREMENTS_IN into a hashed lock with pip-tools (pip-compile).

    Every package is pinned with == and carries the sha256 hash of each of its files,
    which is what `airgap pack` requires. Resolution is for this interpreter's Python
    version; the index comes from pip's configuration.

    \b
    Example:
        airgap lock requirements.in -o requirements.lock
    """
    from .lock import compile_lock

    out = output if output is not None else requirements_in.with_name("requirements.lock")
    reqs = compile_lock(requirements_in, out, upgrade=upgrade)
    if as_json:
        emit_json(
            {
                "ok": True,
                "output": str(out),
                "packages": [
                    {"name": r.name, "version": r.version, "hashes": len(r.hashes)} for r in reqs
                ],
            }
        )
        return
    click.echo(f"wrote {out}: {len(reqs)} packages, each pinned and hashed")


# ---- local runner: serve (bundler/local.py) -----------------------------------------------


@cli.command("serve")
@_dest_arg
@click.option(
    "-p",
    "--port",
    default=5001,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="TCP port of the scoring server.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (0.0.0.0: every interface).",
)
@_recheck_trust
@_python_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line once healthy.")
@_funnel
def serve_cmd(
    dest: Path, port: int, host: str, trust: tuple[Path, ...], python: Path | None, as_json: bool
) -> None:
    """Serve an unpacked bundle locally, without Docker (isolated side).

    \b
    Example:
      airgap serve /srv/iris --port 5001      # Ctrl-C stops it
      curl -d '{"data": [[5.1, 3.5, 1.4, 0.2]]}' http://127.0.0.1:5001/score
    DEST is re-checked against its signed manifest first (exit 3 if changed). The
    server runs in a virtualenv cached in DEST/.airgap/venv, made from a host Python
    of the bundle's version (or --python), with only the bundle's packages on its path.
    A bundle for another architecture, C library or Python is refused first (exit 1).
    No network is used. Environment variables such as WORKER_COUNT and
    SCORING_TIMEOUT_MS pass through (see docs/runtime.md).
    """
    from .local import serve as serve_local

    def ready(url: str) -> None:
        if as_json:
            click.echo(json.dumps({"ok": True, "url": url, "scoring_uri": url + "/score"}))
        else:
            click.echo(f"serving {dest} at {url}/score (Ctrl-C stops)", err=True)

    serve_local(
        dest, port=port, host=host, trust=list(trust) or None, on_ready=ready, python=python
    )


# ---- Docker: build, run, stop (bundler/docker_run.py, bundler/engine.py) -----------------


def _to_stderr(line: str) -> None:
    click.echo(line, err=True)


@cli.command("build")
@_dest_arg
@click.option(
    "-t", "--tag", help="Image tag (default: NAME:VERSION from the bundle; baked adds -baked)."
)
@click.option(
    "--variant",
    type=click.Choice(["auto", "normal", "baked", "all"]),
    default="auto",
    show_default=True,
    help="normal: for --mode mounted/dynamic; baked: packages inside; auto: what the "
    "bundle's mode runs with.",
)
@_recheck_trust
@click.option("-q", "--quiet", is_flag=True, help="Do not show the build log.")
@_json_option
@_funnel
def build_cmd(
    dest: Path, tag: str | None, variant: str, trust: tuple[Path, ...], quiet: bool, as_json: bool
) -> None:
    """Build the Docker image of an unpacked bundle, with networking disabled.

    \b
    Example:
      airgap build /srv/iris
      airgap build /srv/iris --tag iris:prod --variant all
    The base image must be in the engine with the digest the bundle pins; when it is
    not, it is loaded from DEST/docker/base-image.tar (pack --include-base-image).
    Nothing is pulled. Every file sent to the engine is checked against the manifest.
    """
    from .docker_run import build

    result = build(
        dest,
        tag=tag,
        variant=variant,  # type: ignore[arg-type]  # click.Choice guarantees the value
        trust=trust or None,
        on_line=None if quiet or as_json else _to_stderr,
    )
    if as_json:
        emit_json(
            {
                "ok": True,
                "name": result.name,
                "version": result.version,
                "revision": result.revision,
                "base_image": {
                    "ref": result.base_ref,
                    "digest": result.base_digest,
                    "loaded": result.base_loaded,
                },
                "images": [
                    {"variant": i.variant, "tag": i.tag, "id": i.image_id, "seconds": i.seconds}
                    for i in result.images
                ],
            }
        )
        return
    if result.base_loaded:
        click.echo(f"loaded base image {result.base_ref} ({result.base_digest[:19]})")
    for i in result.images:
        click.echo(f"built {i.tag} ({i.variant}, {i.image_id[:19]}) in {i.seconds:.1f}s")


@cli.command("run")
@_dest_arg
@click.option(
    "-p",
    "--port",
    default=6789,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Host port of the scoring URI (0: any free port).",
)
@click.option(
    "--mode",
    type=click.Choice(["mounted", "dynamic", "baked"]),
    help="mounted: site-packages mounted read-only; dynamic: wheels installed at start, "
    "offline; baked: packages inside the image. Default: the bundle's mode.",
)
@click.option("-d", "--detach", is_flag=True, help="Return once healthy; stop with airgap stop.")
@click.option(
    "--bind",
    default="127.0.0.1",
    show_default=True,
    help="Host address the port is published on (0.0.0.0: every interface).",
)
@click.option(
    "--no-network",
    is_flag=True,
    help="Run with --network none: reachable only from inside the container.",
)
@click.option(
    "--timeout",
    default=300.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Seconds to wait for the server to answer GET /.",
)
@click.option("--local", is_flag=True, help="No Docker: serve DEST with the local runner.")
@_recheck_trust
@_python_option
@_json_option
@_funnel
def run_cmd(
    dest: Path,
    port: int,
    mode: str | None,
    detach: bool,
    bind: str,
    no_network: bool,
    timeout: float,
    local: bool,
    trust: tuple[Path, ...],
    python: Path | None,
    as_json: bool,
) -> None:
    """Run an unpacked bundle's image and wait until it answers (isolated side).

    \b
    Example:
      airgap run /srv/iris                   # follows the log; Ctrl-C stops it
      airgap run /srv/iris --detach --port 6789
      curl -d '{"data": [[5.1, 3.5, 1.4, 0.2]]}' http://127.0.0.1:6789/score
      airgap stop /srv/iris
    In mounted mode DEST/site-packages is re-checked against the signed manifest and
    mounted read-only; a file changed since unpack is refused (exit 3). Build the
    image first with `airgap build DEST`. Without Docker, use --local (airgap serve).
    """
    if local:
        _run_local(dest, port, bind, mode, detach, no_network, trust, python, as_json)
        return
    if python is not None:
        raise UsageError(
            "--python is for the local runner; the image runs its own python3",
            remedy="add --local, or drop --python",
        )
    from .docker_run import RunOptions, follow, start

    options = RunOptions(
        mode=mode,  # type: ignore[arg-type]  # click.Choice guarantees the value
        port=port,
        bind=bind,
        network=not no_network,
        timeout=timeout,
        trust=trust or None,
    )
    running = start(dest, options, on_log=_to_stderr)
    if as_json:
        emit_json(
            {
                "ok": True,
                "container": running.name,
                "id": running.container_id,
                "image": running.image,
                "mode": running.mode,
                "port": running.host_port,
                "scoring_uri": running.scoring_uri,
                "seconds": round(running.seconds, 3),
                "detached": detach,
            }
        )
    else:
        where = running.scoring_uri or (
            f"inside the container only (--no-network): docker exec {running.name} ..."
        )
        click.echo(f"{running.name} ({running.mode}) healthy after {running.seconds:.1f}s")
        click.echo(f"scoring URI: {where}")
    if detach:
        if not as_json:
            click.echo(f"stop it with: airgap stop {dest}")
        return
    if not as_json:
        click.echo("following the log; Ctrl-C stops and removes the container", err=True)
    code = follow(running, on_log=click.echo)
    if code not in (None, 0):
        raise BundleError(f"the container exited with status {code}")


def _run_local(
    dest: Path,
    port: int,
    bind: str,
    mode: str | None,
    detach: bool,
    no_network: bool,
    trust: tuple[Path, ...],
    python: Path | None,
    as_json: bool,
) -> None:
    """`run --local`: the local runner (bundler/local.py), in the foreground."""
    for given, flag in ((mode, "--mode"), (detach, "--detach"), (no_network, "--no-network")):
        if given:
            raise UsageError(
                f"{flag} needs Docker; the local runner serves in the bundle's own mode, "
                "in the foreground",
                remedy=f"drop {flag}, or run without --local",
            )
    if port == 0:
        raise UsageError("--local needs a fixed --port", remedy="pass e.g. --port 6789")
    from .local import serve as serve_local

    def ready(url: str) -> None:
        if as_json:
            emit_json({"ok": True, "local": True, "scoring_uri": url + "/score"})
        else:
            click.echo(f"serving {dest} locally at {url}/score (Ctrl-C stops)", err=True)

    serve_local(
        dest, port=port, host=bind, trust=list(trust) or None, on_ready=ready, python=python
    )


@cli.command("stop")
@click.argument("dest", type=click.Path(path_type=Path, file_okay=False))
@_json_option
@_funnel
def stop_cmd(dest: Path, as_json: bool) -> None:
    """Stop and remove the container `airgap run` started for DEST.

    \b
    Example:
      airgap stop /srv/iris
    Finds it by the DEST path it serves; stopping nothing is not an error.
    """
    from .docker_run import stop

    stopped = stop(dest)
    if as_json:
        emit_json({"ok": True, "stopped": [{"name": s.name, "was": s.status} for s in stopped]})
        return
    if not stopped:
        click.echo(f"no container is serving {dest}")
    for s in stopped:
        click.echo(f"stopped and removed {s.name} (was {s.status})")


# ---- core commands: keys, pack, inspect, verify, unpack --------------------------------


class _TerminalProgress:
    """A one-line progress display on stderr, only when stderr is a terminal."""

    def __init__(self) -> None:
        self._label = ""
        self._unit = "B"
        self._total: int | None = None
        self._done = 0
        self._last = 0.0

    def start(self, label: str, total: int | None = None, unit: str = "B") -> None:
        self._label, self._total, self._unit = label, total, unit
        self._done, self._last = 0, 0.0
        self._draw(force=True)

    def advance(self, amount: int = 1) -> None:
        self._done += amount
        self._draw()

    def finish(self) -> None:
        self._done = self._total if self._total is not None else self._done
        self._draw(force=True)
        click.echo("", err=True)

    def _draw(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        if self._total and self._unit == "B":
            pct = 100 * self._done / self._total
            text = f"\r{self._label}: {pct:5.1f}% ({_human(self._done)} of {_human(self._total)})"
        elif self._total:
            text = f"\r{self._label}: {self._done} of {self._total} {self._unit}"
        else:
            text = f"\r{self._label} ..."
        click.echo(text.ljust(72), err=True, nl=False)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _progress(quiet: bool) -> Progress:
    if quiet or not sys.stderr.isatty():
        return NullProgress()
    return _TerminalProgress()


def _passphrase(env_var: str | None, *, prompt: str, confirm: bool) -> bytes | None:
    if env_var:
        value = os.environ.get(env_var)
        if value is None:
            raise UsageError(f"--passphrase-env names {env_var}, which is not set")
        return value.encode("utf-8")
    if prompt and sys.stdin.isatty():
        text = click.prompt(
            prompt, hide_input=True, confirmation_prompt=confirm, default="", show_default=False
        )
        return text.encode("utf-8") or None
    return None


@cli.command()
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for airgap.key (private, mode 0600) and airgap.pub.",
)
@click.option(
    "--passphrase-env",
    metavar="VAR",
    help="Encrypt the private key with the passphrase in this environment variable.",
)
@click.option("--no-passphrase", is_flag=True, help="Do not prompt; leave the key unencrypted.")
@click.option("--force", is_flag=True, help="Replace an existing key pair.")
@_json_option
@_funnel
def keygen(
    out_dir: Path, passphrase_env: str | None, no_passphrase: bool, force: bool, as_json: bool
) -> None:
    """Make an Ed25519 signing key pair and print its key id.

    \b
    Example:
      airgap keygen --out ~/.airgap-keys
      airgap keygen --out keys --passphrase-env AIRGAP_KEY_PASS
    The private key is PKCS#8 PEM, encrypted when a passphrase is given (env var or prompt).
    Give airgap.pub to the isolated side; it is what `--trust` takes.
    """
    passphrase = (
        None
        if no_passphrase
        else _passphrase(passphrase_env, prompt="Passphrase (empty for none)", confirm=True)
    )
    kid = generate_keypair(out_dir, passphrase, force=force)
    if as_json:
        emit_json(
            {
                "ok": True,
                "key_id": kid,
                "private_key": str(out_dir / PRIVATE_KEY_NAME),
                "public_key": str(out_dir / PUBLIC_KEY_NAME),
                "encrypted": bool(passphrase),
            }
        )
        return
    click.echo(f"key id: {kid}")
    click.echo(f"private key: {out_dir / PRIVATE_KEY_NAME} (keep it on the online side)")
    click.echo(f"public key:  {out_dir / PUBLIC_KEY_NAME} (pass it to --trust)")


@cli.command()
@click.argument("project_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Bundle file to write.",
)
@click.option(
    "--key",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Ed25519 private key (airgap.key from `airgap keygen`).",
)
@click.option("--passphrase-env", metavar="VAR", help="The key's passphrase is in this variable.")
@click.option(
    "--level",
    default=3,
    show_default=True,
    type=click.IntRange(1, 19),
    help="zstd compression level.",
)
@click.option(
    "--threads",
    default=0,
    show_default=True,
    type=click.IntRange(0, 256),
    help="Compression threads (0: one per core; output is the same for any count).",
)
@click.option(
    "--include-base-image", is_flag=True, help="Carry the base image (docker save) in the bundle."
)
@click.option(
    "--include-wheels",
    is_flag=True,
    help="Carry the wheels and requirements file (always done in dynamic mode).",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Wheel cache (default: $AIRGAP_CACHE_DIR/wheels or ~/.cache/airgap-bundler/wheels).",
)
@click.option(
    "--find-links",
    "find_links",
    multiple=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Also take locked wheels from this folder (e.g. wheels you built for pins that "
    "publish only a source distribution); hash-checked against the lock. Repeatable.",
)
@_quiet_option
@_json_option
@_funnel
def pack(
    project_dir: Path,
    out: Path,
    key: Path,
    passphrase_env: str | None,
    level: int,
    threads: int,
    include_base_image: bool,
    include_wheels: bool,
    cache_dir: Path | None,
    find_links: tuple[Path, ...],
    quiet: bool,
    as_json: bool,
) -> None:
    """Build a signed bundle from a project folder holding bundle.toml (online side).

    \b
    Example:
      airgap pack examples/iris-sklearn -o iris.airgap --key keys/airgap.key
      SOURCE_DATE_EPOCH=1700000000 airgap pack proj -o proj.airgap --key k.key
    Downloads the locked wheels for the target (hash-checked, cached), builds the
    site-packages tree, and writes one signed, zstd-compressed file. With the same
    inputs and SOURCE_DATE_EPOCH the bundle is byte-identical.
    """
    from .pack import pack as do_pack

    passphrase = None
    if private_key_is_encrypted(key):
        passphrase = _passphrase(passphrase_env, prompt="Key passphrase", confirm=False)
    warnings: list[str] = []
    manifest = do_pack(
        project_dir,
        out,
        key,
        passphrase=passphrase,
        level=level,
        threads=threads,
        include_base_image=include_base_image,
        include_wheels=include_wheels,
        cache_dir=cache_dir,
        progress=_progress(quiet),
        find_links=find_links,
        warn=warnings.append,
    )
    if as_json:
        emit_json({"ok": True, "bundle": str(out), "warnings": warnings, **_summary(manifest, out)})
        return
    for line in warnings:
        click.echo(f"warning: {line}", err=True)
    click.echo(
        f"wrote {out}: {manifest.name} {manifest.version}, "
        f"{manifest.payload.file_count} files, {_human(out.stat().st_size)}"
    )
    click.echo(f"signed by {manifest.signer}")


def _summary(manifest: Manifest, bundle: Path | None = None) -> dict[str, Any]:
    base = manifest.base_image
    info: dict[str, Any] = {
        "name": manifest.name,
        "version": manifest.version,
        "created": manifest.created,
        "created_utc": _utc(manifest.created),
        "expires": manifest.expires,
        "signer": manifest.signer,
        "target": {
            "python": manifest.target.python,
            "implementation": manifest.target.implementation,
            "abi": manifest.target.abi,
            "platforms": list(manifest.target.platforms),
        },
        "mode": manifest.mode,
        "entry_script": manifest.entry_script,
        "base_image": None
        if base is None
        else {"ref": base.ref, "digest": base.digest, "included": base.included},
        "packages": [f"{p.name}=={p.version}" for p in manifest.packages],
        "file_count": manifest.payload.file_count,
        "unpacked_size": manifest.payload.unpacked_size,
        "payload_size": manifest.payload.size,
        "payload_sha256": manifest.payload.sha256,
    }
    if bundle is not None:
        info["bundle_size"] = bundle.stat().st_size
    return info


def _utc(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _print_summary(info: dict[str, Any]) -> None:
    click.echo(f"name:      {info['name']}")
    click.echo(f"version:   {info['version']}")
    click.echo(f"created:   {info['created_utc']}")
    if info["expires"] is not None:
        click.echo(f"expires:   {_utc(info['expires'])}")
    click.echo(f"signer:    {info['signer']}")
    t = info["target"]
    click.echo(
        f"target:    {t['implementation']}{t['python']} {t['abi']} "
        f"{', '.join(t['platforms'][:3])}{' ...' if len(t['platforms']) > 3 else ''}"
    )
    click.echo(f"mode:      {info['mode']}  (entry script {info['entry_script']})")
    if info["base_image"]:
        b = info["base_image"]
        carried = "carried in the bundle" if b["included"] else "not carried"
        click.echo(f"base:      {b['ref']} {b['digest'] or '(not pinned)'} ({carried})")
    click.echo(
        f"files:     {info['file_count']}, {_human(info['unpacked_size'])} unpacked, "
        f"{_human(info['payload_size'])} compressed"
    )
    click.echo(f"packages:  {len(info['packages'])}")
    for p in info["packages"]:
        click.echo(f"  {p}")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@_json_option
@_funnel
def inspect(bundle: Path, as_json: bool) -> None:
    """Show what a bundle holds, from its manifest alone (instant on any size).

    \b
    Example:
      airgap inspect iris.airgap
      airgap inspect iris.airgap --json | jq .packages
    The signature is NOT checked here: use `airgap verify` before trusting anything.
    """
    manifest = read_manifest_unverified(bundle)
    info = _summary(manifest, bundle)
    info["ok"] = True
    info["verified"] = False
    if as_json:
        emit_json(info)
        return
    _print_summary(info)
    click.echo("(not verified: run `airgap verify BUNDLE --trust KEY`)")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@_trust_option
@_quiet_option
@_json_option
@_funnel
def verify(bundle: Path, trust: tuple[Path, ...], quiet: bool, as_json: bool) -> None:
    """Check a bundle's signature and every hash, writing nothing (isolated side).

    \b
    Example:
      airgap verify iris.airgap --trust keys/airgap.pub
      airgap verify iris.airgap --trust /etc/airgap/trusted/ --json
    Exit status 0 when every check passes, 3 when the bundle is rejected.
    """
    verified = verify_bundle(bundle, list(trust), progress=_progress(quiet or as_json))
    m = verified.manifest
    if as_json:
        emit_json(
            {
                "ok": True,
                "verified": True,
                "trusted_key": str(verified.key.source),
                **_summary(m, bundle),
            }
        )
        return
    click.echo(
        f"OK: {m.name} {m.version}, {m.payload.file_count} files, signed by "
        f"{m.signer[:16]}... ({verified.key.source})"
    )


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.argument("dest", type=click.Path(path_type=Path))
@_trust_option
@click.option(
    "--allow-downgrade",
    is_flag=True,
    help="Replace an installed newer version with this older one.",
)
@click.option(
    "--no-host-check",
    is_flag=True,
    help="Unpack even if the bundle's target platform does not fit this host.",
)
@_quiet_option
@_json_option
@_funnel
def unpack(
    bundle: Path,
    dest: Path,
    trust: tuple[Path, ...],
    allow_downgrade: bool,
    no_host_check: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Verify a bundle, then install it into DEST atomically (isolated side).

    \b
    Example:
      airgap unpack iris.airgap /srv/models/iris --trust keys/airgap.pub
    Every check runs before DEST changes; DEST is replaced in one rename, or left
    exactly as it was. An older version than the one at DEST is refused unless
    --allow-downgrade. A bundle whose target (architecture, OS, C library) does not
    fit this host is refused (exit 1) unless it has a base image for the Docker path
    (then a warning) or --no-host-check is given.
    """
    from .hostcheck import unpack_verdict
    from .hostprobe import this_host

    def host_check(manifest: Manifest) -> None:
        warning = unpack_verdict(manifest, this_host())
        if warning:
            click.echo(f"warning: {warning}", err=True)

    verified = unpack_bundle(
        bundle,
        dest,
        list(trust),
        allow_downgrade=allow_downgrade,
        progress=_progress(quiet or as_json),
        before_write=None if no_host_check else host_check,
    )
    m = verified.manifest
    if as_json:
        emit_json({"ok": True, "dest": str(dest), **_summary(m)})
        return
    click.echo(f"unpacked {m.name} {m.version} into {dest} ({m.payload.file_count} files)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv``; return the exit code instead of exiting (for tests)."""
    try:
        cli.main(
            args=list(argv) if argv is not None else None, prog_name="airgap", standalone_mode=True
        )
    except SystemExit as e:
        code = e.code
        if code is None:
            return 0
        return code if isinstance(code, int) else EXIT_ERROR
    return 0
