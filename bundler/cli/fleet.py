"""The fleet commands: push to an in-network registry, deploy to Kubernetes or Docker Swarm,
status, undeploy."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ._common import (
    RECHECK_HELP,
    cli,
    dest_arg,
    emit_json,
    funnel,
    json_option,
    to_stderr,
    trust_options,
)


@cli.command("push")
@dest_arg
@click.option(
    "--registry",
    required=True,
    metavar="HOST:PORT[/PREFIX]",
    help="The in-network registry (and optional path prefix) to push to.",
)
@click.option(
    "--credentials",
    type=click.Path(path_type=Path, dir_okay=False),
    help='File with {"username": ..., "password": ...} or a Docker config.json (default: '
    "the Docker configuration). Never on the command line.",
)
@click.option(
    "--ca-cert",
    type=click.Path(path_type=Path, dir_okay=False),
    help="CA certificate of the registry's TLS (default: /etc/docker/certs.d/HOST:PORT/ca.crt "
    "when present, else the system's).",
)
@click.option(
    "--plain-http", is_flag=True, help="The registry speaks HTTP without TLS (loopback only)."
)
@click.option(
    "--image",
    "kinds",
    multiple=True,
    type=click.Choice(["normal", "baked", "data", "data-init"]),
    help="Push only these of the built images (repeatable; default: all built).",
)
@trust_options(RECHECK_HELP)
@click.option("-q", "--quiet", is_flag=True, help="Do not show the push log.")
@json_option
@funnel
def push_cmd(
    dest: Path,
    registry: str,
    credentials: Path | None,
    ca_cert: Path | None,
    plain_http: bool,
    kinds: tuple[str, ...],
    trust: tuple[Path, ...],
    quiet: bool,
    as_json: bool,
) -> None:
    """Push the images `airgap build` made for DEST to an in-network registry.

    The registry's manifest for each tag is fetched back and checked: its digest must be the
    one the engine pushed and its config the image ID that was built. The verified digests
    are recorded in DEST/.airgap/pushed.json, and `airgap deploy` pins them.

    \b
    Example:
      airgap build /srv/iris --variant all --fleet
      airgap push /srv/iris --registry registry.site.internal:5000/models
      airgap push /srv/iris --registry 127.0.0.1:5000 --plain-http --image baked
    """
    from ..deploy.registry import parse_registry, push
    from ..errors import UsageError

    ref = parse_registry(registry)
    if plain_http and not ref.is_loopback:
        raise UsageError(
            f"--plain-http sends images and credentials in the clear to {ref.host}",
            remedy="give the registry TLS (--ca-cert), or use it over loopback",
        )
    result = push(
        dest,
        ref,
        credentials_file=credentials,
        ca_file=ca_cert,
        plain_http=plain_http,
        kinds=kinds or None,
        trust=trust or None,
        on_line=None if quiet or as_json else to_stderr,
    )
    if as_json:
        emit_json(
            {
                "ok": True,
                "name": result.name,
                "version": result.version,
                "registry": result.registry,
                "images": [
                    {
                        "kind": i.kind,
                        "tag": f"{i.repository}:{i.tag}",
                        "pinned": i.pinned,
                        "image_id": i.image_id,
                    }
                    for i in result.images
                ],
            }
        )
        return
    for i in result.images:
        click.echo(f"pushed {i.kind}: {i.pinned} (verified: config {i.image_id[:19]})")


@cli.group("deploy")
def deploy_group() -> None:
    """Deploy an unpacked bundle to an orchestrator (Kubernetes manifests, Docker Swarm)."""


@deploy_group.command("k8s")
@dest_arg
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder to write (replaced if this command wrote it before).",
)
@click.option(
    "--packages",
    type=click.Choice(["copy", "volume", "baked"]),
    default="copy",
    show_default=True,
    help="copy: an init container copies the data image into an emptyDir (any cluster); "
    "volume: the data image as an image volume (ImageVolume, Kubernetes 1.33+); baked: "
    "packages inside the serving image.",
)
@click.option("--replicas", default=2, show_default=True, type=click.IntRange(1, 1000))
@click.option("--namespace", help="Namespace of every object (default: none set).")
@click.option("--cpu", "cpu_request", default="500m", show_default=True, help="CPU request.")
@click.option(
    "--memory", "memory_request", default="512Mi", show_default=True, help="Memory request."
)
@click.option("--memory-limit", default="2Gi", show_default=True, help="Memory limit.")
@click.option(
    "--auth-key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The server's auth keys file, as a Secret (see `airgap serve --help`).",
)
@click.option(
    "--tls-cert",
    type=click.Path(path_type=Path, dir_okay=False),
    help="TLS certificate, as a Secret with --tls-key.",
)
@click.option("--tls-key", type=click.Path(path_type=Path, dir_okay=False))
@trust_options(RECHECK_HELP)
@json_option
@funnel
def deploy_k8s_cmd(
    dest: Path,
    out: Path,
    packages: str,
    replicas: int,
    namespace: str | None,
    cpu_request: str,
    memory_request: str,
    memory_limit: str,
    auth_key_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    trust: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Write Kubernetes manifests, a kustomization and a Helm chart for DEST.

    Images are pinned by the digests `airgap push` verified. Nothing talks to a cluster:
    apply the folder with your own tools.

    \b
    Example:
      airgap deploy k8s /srv/iris -o iris-k8s --replicas 3
      kubectl apply -k iris-k8s          # or: helm install iris iris-k8s/chart
    """
    from ..deploy.kube import write_kubernetes

    result = write_kubernetes(
        dest,
        out,
        packages=packages,  # type: ignore[arg-type]  # click.Choice guarantees the value
        replicas=replicas,
        namespace=namespace,
        cpu_request=cpu_request,
        memory_request=memory_request,
        memory_limit=memory_limit,
        auth_key_file=auth_key_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        trust=trust or None,
    )
    if as_json:
        emit_json({"ok": True, "out": result.out, "files": list(result.files)})
        return
    click.echo(f"wrote {len(result.files)} files to {result.out} ({packages} packages)")
    click.echo(f"  kubectl apply -k {result.out}    or    helm install NAME {result.out}/chart")


def _print_status(st: object) -> None:
    from ..deploy.swarm import ServiceStatus

    assert isinstance(st, ServiceStatus)
    click.echo(f"{st.service}: {st.ready}/{st.replicas} healthy, image {st.image}")
    if st.update_state:
        click.echo(f"  update: {st.update_state}")
    for t in st.tasks:
        err = f" ({t.error})" if t.error else ""
        click.echo(f"  replica {t.slot}: {t.state}, {t.health or 'no health yet'}{err}")


def _status_json(st: object) -> dict[str, object]:
    from dataclasses import asdict

    from ..deploy.swarm import ServiceStatus

    assert isinstance(st, ServiceStatus)
    return {"ok": True, **asdict(st)}


@deploy_group.command("swarm")
@dest_arg
@click.option(
    "--replicas",
    type=click.IntRange(1, 1000),
    help="Replicas (new service: 3; --update: the running service's).",
)
@click.option(
    "-p",
    "--port",
    type=click.IntRange(1, 65535),
    help="Published port with --endpoint-mode vip (new service: 6789; --update: the running "
    "service's). Swarm publishes it on every interface of every node.",
)
@click.option(
    "--packages",
    type=click.Choice(["baked", "mounted"]),
    default="baked",
    show_default=True,
    help="baked: packages in the image (any node); mounted: DEST's site-packages bind-mounted "
    "(every node must hold DEST at this path).",
)
@click.option(
    "--endpoint-mode",
    type=click.Choice(["vip", "dnsrr"]),
    help="vip (new service default): publish --port through Swarm's routing mesh (needs IPVS "
    "in the kernel); dnsrr: "
    "publish nothing, replicas answer as tasks.SERVICE on --network for your load balancer.",
)
@click.option("--network", help="Overlay network to join (made attachable when missing).")
@click.option(
    "--cpus",
    type=click.FloatRange(0.01, 1024),
    help="CPU limit of each replica, as docker's --cpus (new service: none; --update: the "
    "running service's).",
)
@click.option(
    "--update",
    is_flag=True,
    help="Roll the running service to this bundle (start-first, rollback on failure).",
)
@click.option(
    "--timeout",
    default=300.0,
    show_default=True,
    type=click.FloatRange(1),
    help="Seconds to wait for every replica to be healthy.",
)
@click.option(
    "--smoke",
    "smoke_url",
    metavar="URL",
    help="Once every replica is healthy, send the bundle's signed smoke test to URL (the "
    "published port, or your balancer in front); exit 4 if it fails.",
)
@click.option(
    "--smoke-auth-key-file",
    "smoke_key_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="For --smoke: send its first line as `Authorization: Bearer KEY`.",
)
@click.option(
    "--smoke-cacert",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="For --smoke: CA certificate (PEM) to check an https:// URL with.",
)
@trust_options(RECHECK_HELP)
@json_option
@funnel
def deploy_swarm_cmd(
    dest: Path,
    replicas: int | None,
    port: int | None,
    packages: str,
    endpoint_mode: str | None,
    network: str | None,
    cpus: float | None,
    update: bool,
    timeout: float,
    smoke_url: str | None,
    smoke_key_file: Path | None,
    smoke_cacert: Path | None,
    trust: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Run DEST's bundle as a Docker Swarm service, from the registry, pinned by digest.

    \b
    Example:
      airgap deploy swarm /srv/iris --replicas 3 --port 6789
      airgap deploy swarm /srv/iris-1.0.1 --update     # rolling update, no downtime
      airgap deploy swarm /srv/iris --endpoint-mode dnsrr --network models  # own balancer
      airgap deploy swarm /srv/iris-1.0.1 --update --smoke http://lb.site.internal:8080
      airgap status /srv/iris
      airgap undeploy /srv/iris

    With --smoke, a failed smoke test exits 4 and leaves the service as it is (roll back
    with `airgap deploy swarm OLD_DEST --update`); answers of none or 502/503/504 are
    retried for 30 s while a balancer in front finds the new replicas.
    """
    from ..deploy.smoke import run_through_balancer, target_url
    from ..deploy.swarm import deploy
    from ..errors import EXIT_SMOKE
    from .ops import smoke_extras, smoke_spec_for

    spec = None
    if smoke_url is not None:
        # Before deploying: a bundle without a smoke test, or a bad URL, fails at once.
        spec = smoke_spec_for(dest, trust)
        target_url(smoke_url, spec)
    headers, context = smoke_extras(smoke_key_file, smoke_cacert)
    st = deploy(
        dest,
        replicas=replicas,
        port=port,
        packages=packages,  # type: ignore[arg-type]  # click.Choice guarantees the value
        endpoint_mode=endpoint_mode,  # type: ignore[arg-type]
        network=network,
        cpus=cpus,
        update=update,
        timeout=timeout,
        trust=trust or None,
        on_line=None if as_json else to_stderr,
    )
    result = None
    if spec is not None and smoke_url is not None:
        result = run_through_balancer(
            spec, smoke_url, wait=30.0, headers=headers, ssl_context=context
        )
    if as_json:
        extra = {"smoke": result.to_json_dict()} if result is not None else {}
        emit_json({**_status_json(st), **extra, "ok": result is None or result.ok})
    else:
        _print_status(st)
        if result is not None:
            click.echo(result.summary(), err=not result.ok)
    if result is not None and not result.ok:
        sys.exit(EXIT_SMOKE)


@cli.command("status")
@dest_arg
@trust_options(RECHECK_HELP)
@json_option
@funnel
def status_cmd(dest: Path, trust: tuple[Path, ...], as_json: bool) -> None:
    """Report the Swarm service of DEST's bundle: replicas wanted, healthy, and each task.

    \b
    Example:
      airgap status /srv/iris --json
    """
    from ..deploy.swarm import status

    st = status(dest, trust=trust or None)
    if as_json:
        emit_json(_status_json(st))
        return
    _print_status(st)


@cli.command("undeploy")
@dest_arg
@trust_options(RECHECK_HELP)
@json_option
@funnel
def undeploy_cmd(dest: Path, trust: tuple[Path, ...], as_json: bool) -> None:
    """Remove the Swarm service of DEST's bundle.

    \b
    Example:
      airgap undeploy /srv/iris
    """
    from ..deploy.swarm import undeploy

    name = undeploy(dest, trust=trust or None)
    if as_json:
        emit_json({"ok": True, "service": name})
        return
    click.echo(f"removed service {name}")
