"""The isolated side's commands that need no Docker: verify, unpack, serve."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import UsageError
from ..formats.manifest import Manifest
from ..verify.delta import VerifiedDelta
from ..verify.unpack import unpack as unpack_bundle
from ..verify.unpack import verify as verify_bundle
from ._common import (
    auth_key_file_option,
    cli,
    dest_arg,
    emit_json,
    funnel,
    json_option,
    metrics_port_option,
    progress,
    python_option,
    quiet_option,
    recheck_trust,
    summary,
    tls_cert_option,
    tls_key_option,
    trust_option,
)
from .delta import delta_summary
from .ops import own_server_extras, smoke_after_start, smoke_flag, smoke_spec_for


@cli.command("serve")
@dest_arg
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
@recheck_trust
@python_option
@tls_cert_option
@tls_key_option
@auth_key_file_option
@metrics_port_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line once healthy.")
@smoke_flag
@funnel
def serve_cmd(
    dest: Path,
    port: int,
    host: str,
    trust: tuple[Path, ...],
    python: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    auth_key_file: Path | None,
    metrics_port: int | None,
    as_json: bool,
    smoke: bool,
) -> None:
    """Serve an unpacked bundle locally, without Docker (isolated side).

    \b
    Example:
      airgap serve /srv/iris --port 5001      # Ctrl-C stops it
      curl -d '{"data": [[5.1, 3.5, 1.4, 0.2]]}' http://127.0.0.1:5001/score
      airgap serve /srv/iris --tls-cert cert.pem --tls-key key.pem   # HTTPS
    DEST is re-checked against its signed manifest first (exit 3 if changed). The
    server runs in a virtualenv cached in DEST/.airgap/venv, made from a host Python
    of the bundle's version (or --python), with only the bundle's packages on its path.
    A bundle for another architecture, C library or Python is refused first (exit 1).
    No network is used. Environment variables such as WORKER_COUNT and
    SCORING_TIMEOUT_MS pass through (see docs/runtime.md). SIGTERM, SIGHUP and
    Ctrl-C stop it gracefully; a second Ctrl-C forces the stop (exit 130). The
    server never outlives this command, even if it is killed.
    --auth-key-file makes every route but GET / and OPTIONS ask for
    "Authorization: Bearer <key>"; --metrics-port serves Prometheus metrics on
    HOST:PORT/metrics. With --smoke, the bundle's smoke test is sent once healthy
    (with the first key of --auth-key-file, over https with --tls-cert); if it fails
    the server stops (exit 4).
    """
    from ..deploy.local import serve as serve_local

    spec = smoke_spec_for(dest, trust) if smoke else None
    headers, context = own_server_extras(auth_key_file, tls=tls_cert is not None)

    def ready(url: str) -> None:
        # A failed smoke test raises here: serve() stops the server, the funnel exits 4.
        result = (
            smoke_after_start(spec, url, headers=headers, ssl_context=context)
            if spec is not None
            else None
        )
        if as_json:
            line: dict[str, object] = {"ok": True, "url": url, "scoring_uri": url + "/score"}
            if result is not None:
                line["smoke"] = result.to_json_dict()
            click.echo(json.dumps(line))
        else:
            if result is not None:
                click.echo(result.summary(), err=True)
            click.echo(f"serving {dest} at {url}/score (Ctrl-C stops)", err=True)

    if metrics_port is not None and metrics_port == port:
        raise UsageError(
            f"--metrics-port {metrics_port} is the scoring port too", remedy="choose another port"
        )
    serve_local(
        dest,
        port=port,
        host=host,
        trust=list(trust) or None,
        on_ready=ready,
        python=python,
        tls_cert=tls_cert,
        tls_key=tls_key,
        auth_key_file=auth_key_file,
        metrics_port=metrics_port,
    )


# ---- Docker: build, run, stop (bundler/docker_run.py, bundler/engine.py) -----------------


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@trust_option
@quiet_option
@json_option
@funnel
def verify(bundle: Path, trust: tuple[Path, ...], quiet: bool, as_json: bool) -> None:
    """Check a bundle's signature and every hash, writing nothing (isolated side).

    \b
    Example:
      airgap verify iris.airgap --trust keys/airgap.pub
      airgap verify iris.airgap --trust /etc/airgap/trusted/ --json
    Exit status 0 when every check passes, 3 when the bundle is rejected. For a
    delta: both signatures, its descriptor and every carried file (the base is
    checked when it is applied).
    """
    verified = verify_bundle(bundle, list(trust), progress=progress(quiet or as_json))
    m = verified.manifest
    delta = verified.descriptor if isinstance(verified, VerifiedDelta) else None
    if as_json:
        emit_json(
            {
                "ok": True,
                "verified": True,
                "trusted_key": str(verified.key.source),
                **summary(m, bundle),
                "delta": None if delta is None else delta_summary(delta),
            }
        )
        return
    if delta is not None:
        click.echo(
            f"OK: delta {m.name} {delta.base.version} -> {m.version}, "
            f"{delta.payload.file_count} carried files, signed by {m.signer[:16]}... "
            f"({verified.key.source}); it applies only to a DEST holding "
            f"{delta.base.name} {delta.base.version}"
        )
        return
    click.echo(
        f"OK: {m.name} {m.version}, {m.payload.file_count} files, signed by "
        f"{m.signer[:16]}... ({verified.key.source})"
    )


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.argument("dest", type=click.Path(path_type=Path))
@trust_option
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
@quiet_option
@json_option
@funnel
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
    (then a warning) or --no-host-check is given. A delta (`airgap delta`) applies
    only to a DEST holding exactly its base version, checked file by file first:
      airgap unpack iris-1.1.delta.airgap /srv/models/iris --trust keys/airgap.pub
    """
    from ..deploy.hostcheck import unpack_verdict
    from ..deploy.hostprobe import this_host

    def host_check(manifest: Manifest) -> None:
        warning = unpack_verdict(manifest, this_host())
        if warning:
            click.echo(f"warning: {warning}", err=True)

    verified = unpack_bundle(
        bundle,
        dest,
        list(trust),
        allow_downgrade=allow_downgrade,
        progress=progress(quiet or as_json),
        before_write=None if no_host_check else host_check,
    )
    m = verified.manifest
    if isinstance(verified, VerifiedDelta):
        d = verified.descriptor
        if as_json:
            emit_json(
                {"ok": True, "dest": str(dest), **summary(m), "delta": delta_summary(d),
                 "reused": verified.reused}
            )  # fmt: skip
            return
        how = ", ".join(f"{n} by {k}" for k, n in sorted(verified.reused.items()))
        click.echo(
            f"applied delta {m.name} {d.base.version} -> {m.version} to {dest} "
            f"({m.payload.file_count} files: {d.payload.file_count} carried"
            f"{', ' + how if how else ''})"
        )
        return
    if as_json:
        emit_json({"ok": True, "dest": str(dest), **summary(m), "delta": None})
        return
    click.echo(f"unpacked {m.name} {m.version} into {dest} ({m.payload.file_count} files)")
