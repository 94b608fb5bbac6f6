"""The Docker commands: build, run (and run --local), stop."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import BundleError, UsageError
from ..formats.smoke import SmokeSpec
from ._common import (
    RECHECK_HELP,
    auth_key_file_option,
    cli,
    dest_arg,
    emit_json,
    funnel,
    json_option,
    metrics_port_option,
    need_trust,
    python_option,
    tls_cert_option,
    tls_key_option,
    to_stderr,
    trust_options,
)
from .ops import own_server_extras, smoke_after_start, smoke_flag, smoke_spec_for


@cli.command("build")
@dest_arg
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
@click.option(
    "--fleet",
    is_flag=True,
    help="Also build the data-only images (site-packages, prefix, model) that `airgap push` "
    "sends to a registry for Kubernetes.",
)
@trust_options(RECHECK_HELP, policy=True)
@click.option("-q", "--quiet", is_flag=True, help="Do not show the build log.")
@json_option
@funnel
def build_cmd(
    dest: Path,
    tag: str | None,
    variant: str,
    fleet: bool,
    trust: tuple[Path, ...],
    policy: Path | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Build the Docker image of an unpacked bundle, with networking disabled.

    \b
    Example:
      airgap build /srv/iris
      airgap build /srv/iris --tag iris:prod --variant all
      airgap build /srv/iris --variant all --fleet     # then: airgap push
    The base image must be in the engine with the digest the bundle pins; when it is
    not, it is loaded from DEST/docker/base-image.tar (pack --include-base-image).
    Nothing is pulled. Every file sent to the engine is checked against the manifest.
    """
    from ..deploy.docker import build

    need_trust(trust, policy, required=False)
    result = build(
        dest,
        tag=tag,
        variant=variant,  # type: ignore[arg-type]  # click.Choice guarantees the value
        trust=trust or None,
        policy=policy,
        on_line=None if quiet or as_json else to_stderr,
        fleet=fleet,
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
@dest_arg
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
@trust_options(RECHECK_HELP, policy=True)
@python_option
@tls_cert_option
@tls_key_option
@auth_key_file_option
@metrics_port_option
@json_option
@smoke_flag
@funnel
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
    policy: Path | None,
    python: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    auth_key_file: Path | None,
    metrics_port: int | None,
    as_json: bool,
    smoke: bool,
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
    --tls-cert/--tls-key are mounted read-only (never copied into the image); the key
    must be readable by its group, which the container's user joins.
    --auth-key-file FILE is mounted read-only at /run/secrets/airgap-auth-keys (it
    must belong to uid 10001, the image's user); --metrics-port publishes the
    metrics on 127.0.0.1 only. With --smoke, the bundle's smoke test is sent once
    healthy (with the first key of --auth-key-file, over https with --tls-cert); if
    it fails the container is stopped and removed (exit 4).
    """
    if metrics_port is not None and metrics_port == port:
        raise UsageError(
            f"--metrics-port {metrics_port} is the scoring port too", remedy="choose another port"
        )
    if smoke and no_network:
        raise UsageError(
            "--smoke needs a published port; --no-network publishes none",
            remedy="drop --smoke, or drop --no-network",
        )
    need_trust(trust, policy, required=False)
    spec = smoke_spec_for(dest, trust, policy) if smoke else None
    if local:
        _run_local(
            dest,
            port,
            bind,
            mode,
            detach,
            no_network,
            trust,
            python,
            as_json,
            spec=spec,
            policy=policy,
            tls_cert=tls_cert,
            tls_key=tls_key,
            auth_key_file=auth_key_file,
            metrics_port=metrics_port,
        )
        return
    if python is not None:
        raise UsageError(
            "--python is for the local runner; the image runs its own python3",
            remedy="add --local, or drop --python",
        )
    from ..deploy.docker import RunOptions, follow, start, stop

    options = RunOptions(
        mode=mode,  # type: ignore[arg-type]  # click.Choice guarantees the value
        port=port,
        bind=bind,
        network=not no_network,
        timeout=timeout,
        trust=trust or None,
        policy=policy,
        tls_cert=tls_cert,
        tls_key=tls_key,
        auth_key_file=auth_key_file,
        metrics_port=metrics_port,
    )
    running = start(dest, options, on_log=to_stderr)
    result = None
    if spec is not None and running.scoring_uri is not None:
        try:
            headers, context = own_server_extras(auth_key_file, tls=tls_cert is not None)
            result = smoke_after_start(
                spec, running.scoring_uri, headers=headers, ssl_context=context
            )
        except BundleError:
            stop(dest)  # a failed smoke test leaves nothing running
            raise
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
                "metrics_uri": running.metrics_uri,
                "seconds": round(running.seconds, 3),
                "detached": detach,
                **({"smoke": result.to_json_dict()} if result is not None else {}),
            }
        )
    else:
        if result is not None:
            click.echo(result.summary())
        where = running.scoring_uri or (
            f"inside the container only (--no-network): docker exec {running.name} ..."
        )
        click.echo(f"{running.name} ({running.mode}) healthy after {running.seconds:.1f}s")
        click.echo(f"scoring URI: {where}")
        if running.metrics_uri:
            click.echo(f"metrics: {running.metrics_uri}")
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
    *,
    spec: SmokeSpec | None = None,
    policy: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    auth_key_file: Path | None = None,
    metrics_port: int | None = None,
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
    from ..deploy.local import serve as serve_local

    headers, context = own_server_extras(auth_key_file, tls=tls_cert is not None)

    def ready(url: str) -> None:
        result = (
            smoke_after_start(spec, url, headers=headers, ssl_context=context)
            if spec is not None
            else None
        )
        extra = {"smoke": result.to_json_dict()} if result is not None else {}
        if as_json:
            emit_json({"ok": True, "local": True, "scoring_uri": url + "/score", **extra})
        else:
            if result is not None:
                click.echo(result.summary(), err=True)
            click.echo(f"serving {dest} locally at {url}/score (Ctrl-C stops)", err=True)

    serve_local(
        dest,
        port=port,
        host=bind,
        trust=list(trust) or None,
        policy=policy,
        on_ready=ready,
        python=python,
        tls_cert=tls_cert,
        tls_key=tls_key,
        auth_key_file=auth_key_file,
        metrics_port=metrics_port,
    )


@cli.command("stop")
@click.argument("dest", type=click.Path(path_type=Path, file_okay=False))
@json_option
@funnel
def stop_cmd(dest: Path, as_json: bool) -> None:
    """Stop and remove the container `airgap run` started for DEST.

    \b
    Example:
      airgap stop /srv/iris
    Finds it by the DEST path it serves; stopping nothing is not an error.
    """
    from ..deploy.docker import stop

    stopped = stop(dest)
    if as_json:
        emit_json({"ok": True, "stopped": [{"name": s.name, "was": s.status} for s in stopped]})
        return
    if not stopped:
        click.echo(f"no container is serving {dest}")
    for s in stopped:
        click.echo(f"stopped and removed {s.name} (was {s.status})")


# ---- core commands: keys, pack, inspect, verify, unpack --------------------------------
