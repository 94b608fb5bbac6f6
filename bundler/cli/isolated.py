"""The isolated side's commands that need no Docker: verify, unpack, serve."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import UsageError, escape
from ..formats.manifest import Manifest
from ..formats.source import is_parts_index
from ..verify.delta import VerifiedDelta
from ..verify.unpack import TrustInputs
from ..verify.unpack import unpack as unpack_bundle
from ..verify.unpack import verify as verify_bundle
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
    progress,
    python_option,
    quiet_option,
    summary,
    tls_cert_option,
    tls_key_option,
    to_stderr,
    trust_lines,
    trust_options,
    trust_report,
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
@trust_options(RECHECK_HELP, policy=True)
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
    policy: Path | None,
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
    SCORING_TIMEOUT_MS pass through (see docs/runtime.md). --policy FILE re-checks
    the signatures kept at unpack against a trust policy. SIGTERM, SIGHUP and
    Ctrl-C stop it gracefully; a second Ctrl-C forces the stop (exit 130). The
    server never outlives this command, even if it is killed.
    --auth-key-file makes every route but GET / and OPTIONS ask for
    "Authorization: Bearer <key>"; --metrics-port serves Prometheus metrics on
    HOST:PORT/metrics. With --smoke, the bundle's smoke test is sent once healthy
    (with the first key of --auth-key-file, over https with --tls-cert); if it fails
    the server stops (exit 4).
    """
    from ..deploy.local import serve as serve_local

    need_trust(trust, policy, required=False)
    spec = smoke_spec_for(dest, trust, policy) if smoke else None
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
            click.echo(f"serving {escape(str(dest))} at {url}/score (Ctrl-C stops)", err=True)

    if metrics_port is not None and metrics_port == port:
        raise UsageError(
            f"--metrics-port {metrics_port} is the scoring port too", remedy="choose another port"
        )
    serve_local(
        dest,
        port=port,
        host=host,
        trust=list(trust) or None,
        policy=policy,
        on_ready=ready,
        python=python,
        tls_cert=tls_cert,
        tls_key=tls_key,
        auth_key_file=auth_key_file,
        metrics_port=metrics_port,
    )


# ---- Docker: build, run, stop (bundler/docker_run.py, bundler/engine.py) -----------------


@cli.command()
# A folder, FIFO or device is refused by open_bundle, in one line (formats/source.py).
@click.argument("bundle", type=click.Path(path_type=Path, exists=True))
@trust_options(policy=True, signatures=True)
@click.option(
    "--resume",
    is_flag=True,
    help="Parts index: skip parts the state file records as checked and unchanged since.",
)
@click.option(
    "--wait",
    type=click.FloatRange(0),
    default=0,
    metavar="SECONDS",
    help="Parts index: wait for missing or growing parts, checking each as it arrives, until "
    "none has arrived for this long.",
)
@click.option(
    "--state",
    "state_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Parts index: the check state file (default: BUNDLE.split-state beside the parts).",
)
@quiet_option
@json_option
@funnel
def verify(
    bundle: Path,
    trust: tuple[Path, ...],
    policy: Path | None,
    signatures: tuple[Path, ...],
    resume: bool,
    wait: float,
    state_file: Path | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Check a bundle's signatures and every hash, writing nothing (isolated side).

    \b
    Example:
      airgap verify iris.airgap --trust keys/airgap.pub
      airgap verify iris.airgap --trust /etc/airgap/trusted/ --json
      airgap verify iris.airgap --policy /etc/airgap/policy.toml   # e.g. 2 of 3 keys
      airgap verify iris.airgap.split.json --trust keys/airgap.pub --wait 600 --resume
    BUNDLE may be a split bundle's part index (`airgap split`): each part is hashed
    against the signed index as it arrives (a line per part; recorded in a state file
    beside the parts, the one thing written), then the bundle they join into is fully
    verified through the parts, without joining them on disk.
    Exit status 0 when every check passes, 3 when the bundle is rejected (2 for a
    malformed policy). Co-signatures (`airgap sign`) in the bundle and in BUNDLE.sig
    (or --signatures FILE) are counted once per distinct key.
    For a delta: both signatures, its descriptor and every carried file (the base is
    checked when it is applied).
    """
    need_trust(trust, policy)
    if is_parts_index(bundle):
        keys = tuple(TrustInputs(trust, policy).packer_key_files())
        verify_split(
            bundle, keys, resume, wait, state_file, quiet, as_json,
            policy=policy, signatures=signatures,
        )  # fmt: skip
        return
    if resume or wait or state_file is not None:
        raise UsageError(
            "--resume, --wait and --state apply to a split bundle's part index",
            remedy="pass the .split.json file, or drop them",
        )
    verified = verify_bundle(
        bundle,
        list(trust),
        progress=progress(quiet or as_json),
        policy=policy,
        signature_files=list(signatures) or None,
    )
    m = verified.manifest
    delta = verified.descriptor if isinstance(verified, VerifiedDelta) else None
    if as_json:
        emit_json(
            {
                "ok": True,
                "verified": True,
                "trusted_key": str(verified.key.source),
                **summary(m, bundle),
                **trust_report(verified),
                "delta": None if delta is None else delta_summary(delta),
            }
        )
        return
    if delta is not None:
        click.echo(
            f"OK: delta {escape(m.name)} {escape(delta.base.version)} -> {escape(m.version)}, "
            f"{delta.payload.file_count} carried files, signed by {m.signer[:16]}... "
            f"({escape(str(verified.key.source))}); applies to "
            f"{escape(delta.base.name)} {escape(delta.base.version)}"
        )
        for line in trust_lines(verified):
            click.echo(line)
        return
    # Name and version come from the bundle: escaped, so they cannot forge lines (JSON is
    # safe as it is).
    click.echo(
        f"OK: {escape(m.name)} {escape(m.version)}, {m.payload.file_count} files, signed by "
        f"{m.signer[:16]}... ({escape(str(verified.key.source))})"
    )
    for line in trust_lines(verified):
        click.echo(line)


def verify_split(
    index: Path,
    trust: tuple[Path, ...],
    resume: bool,
    wait: float,
    state_file: Path | None,
    quiet: bool,
    as_json: bool,
    *,
    policy: Path | None = None,
    signatures: tuple[Path, ...] = (),
) -> None:
    """`verify` of a part index: a line per part as it is judged, then the bundle's (trusted
    by ``policy`` when given, as a whole bundle is)."""
    from ..verify.parts import PartResult, verify_parts

    def on_part(result: PartResult) -> None:
        if as_json or quiet:
            return
        detail = f" ({result.detail})" if result.detail and not result.ok else ""
        to_stderr(f"{result.file}: {result.status}{detail}")

    verified, checked = verify_parts(
        index,
        list(trust),
        resume=resume,
        wait=wait,
        state_path=state_file,
        on_part=on_part,
        warn=lambda line: to_stderr(f"warning: {line}"),
        progress=progress(quiet or as_json),
        policy=policy,
        signature_files=list(signatures) or None,
    )
    m = verified.manifest
    if as_json:
        emit_json(
            {
                "ok": True,
                "verified": True,
                "trusted_key": str(verified.key.source),
                "parts": [r.to_json_dict() for r in checked.results],
                **summary(m),
                **trust_report(verified),
                "bundle_size": checked.index.bundle.size,
            }
        )
        return
    click.echo(
        f"OK: {m.name} {m.version}, {len(checked.index.parts)} parts, "
        f"{m.payload.file_count} files, signed by {m.signer[:16]}... ({verified.key.source})"
    )
    for line in trust_lines(verified):
        click.echo(line)


@cli.command()
# A folder, FIFO or device is refused by open_bundle, in one line (formats/source.py).
@click.argument("bundle", type=click.Path(path_type=Path, exists=True))
@click.argument("dest", type=click.Path(path_type=Path))
@trust_options(policy=True, signatures=True)
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
@click.option(
    "--no-sync",
    is_flag=True,
    help="Skip the final syncfs/fsync (tmpfs, scratch disks): a crash still leaves DEST "
    "as it was or complete, but a power loss may leave truncated files in the new DEST.",
)
@quiet_option
@json_option
@funnel
def unpack(
    bundle: Path,
    dest: Path,
    trust: tuple[Path, ...],
    policy: Path | None,
    signatures: tuple[Path, ...],
    allow_downgrade: bool,
    no_host_check: bool,
    no_sync: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Verify a bundle, then install it into DEST atomically (isolated side).

    \b
    Example:
      airgap unpack iris.airgap /srv/models/iris --trust keys/airgap.pub
      airgap unpack iris.airgap /srv/models/iris --policy policy.toml
      airgap unpack iris.airgap.split.json /srv/models/iris --trust keys/airgap.pub
    BUNDLE may be a split bundle's part index: the parts are read in place, never
    joined on disk, and each is hashed against the signed index before its bytes
    are used (the state file of `verify --resume` is not trusted here).
    Every check runs before DEST changes; DEST is replaced in one rename, or left
    exactly as it was. An older version than the one at DEST is refused unless
    --allow-downgrade. A bundle whose target (architecture, OS, C library) does not
    fit this host is refused (exit 1) unless it has a base image for the Docker path
    (then a warning) or --no-host-check is given. The co-signatures are kept in
    DEST/.airgap so serve/run/build --policy can count them again. The new tree is
    synced to disk before the swap; --no-sync skips that (for tmpfs or scratch). A delta
    (`airgap delta`) applies only to a DEST holding exactly its base version, checked file
    by file first, and is trusted as a full bundle (--policy, co-signatures, expiry):
      airgap unpack iris-1.1.delta.airgap /srv/models/iris --trust keys/airgap.pub
    """
    from ..deploy.hostcheck import unpack_verdict
    from ..deploy.hostprobe import this_host

    def host_check(manifest: Manifest) -> None:
        warning = unpack_verdict(manifest, this_host())
        if warning:
            click.echo(f"warning: {escape(warning)}", err=True)

    need_trust(trust, policy)
    verified = unpack_bundle(
        bundle,
        dest,
        list(trust),
        allow_downgrade=allow_downgrade,
        progress=progress(quiet or as_json),
        before_write=None if no_host_check else host_check,
        policy=policy,
        signature_files=list(signatures) or None,
        sync=not no_sync,
    )
    m = verified.manifest
    if isinstance(verified, VerifiedDelta):
        d = verified.descriptor
        if as_json:
            emit_json(
                {"ok": True, "dest": str(dest), **summary(m), **trust_report(verified),
                 "delta": delta_summary(d), "reused": verified.reused}
            )  # fmt: skip
            return
        how = ", ".join(f"{n} by {k}" for k, n in sorted(verified.reused.items()))
        click.echo(
            f"applied delta {escape(m.name)} {escape(d.base.version)} -> {escape(m.version)} "
            f"to {escape(str(dest))} ({m.payload.file_count} files: {d.payload.file_count} "
            f"carried{', ' + how if how else ''})"
        )
        for line in trust_lines(verified):
            click.echo(line)
        return
    if as_json:
        emit_json(
            {"ok": True, "dest": str(dest), **summary(m), **trust_report(verified), "delta": None}
        )
        return
    click.echo(
        f"unpacked {escape(m.name)} {escape(m.version)} into {escape(str(dest))} "
        f"({m.payload.file_count} files)"
    )
    for line in trust_lines(verified):
        click.echo(line)
