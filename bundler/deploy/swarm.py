"""`airgap deploy swarm`, `status`, `undeploy`: the bundle as a Docker Swarm service.

The service runs the image `airgap push` verified in the registry, pinned by digest, with N
replicas behind Swarm's routing mesh, the image's health check (tighter, so a rollout moves
in seconds), and rolling updates that start the new task first, wait until it is healthy, and
roll back on failure. Swarm itself restarts a replica whose container dies.

What Swarm cannot do (README, "Fleet"): a published port listens on every interface of every
node (no bind address), and GPUs are generic resources without a scheduler that knows them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from ..errors import BundleError, OrchestratorError, UsageError
from ..layout import PREFIX_DIR, SCORING_PORT, SITE_DIR
from ..verify.tree import check_unpacked
from .dockerfile import health_probe
from .engine import BindMount, DockerEngine, ServiceSpec, SwarmServices, TaskInfo
from .kube import dns_label
from .records import find, read_pushed

SwarmPackages = Literal["baked", "mounted"]
EndpointMode = Literal["vip", "dnsrr"]
LABEL_SERVICE: Final = "airgap-bundler.service"
LABEL_REVISION: Final = "airgap-bundler.revision"
DEFAULT_TIMEOUT: Final = 300.0
_POLL: Final = 0.5
LineSink = Callable[[str], None]


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica of the service."""

    slot: int | None
    state: str
    health: str | None
    image: str
    error: str


@dataclass(frozen=True)
class ServiceStatus:
    """What `airgap status` reports."""

    service: str
    image: str  # the pinned reference the service runs (or moves to)
    replicas: int  # wanted
    ready: int  # running, healthy and on the wanted image
    update_state: str | None  # Swarm's UpdateStatus.State (updating, completed, rollback_...)
    tasks: tuple[ReplicaStatus, ...]


def service_name(bundle_name: str) -> str:
    """The service's name: the bundle name as a DNS label (as the Kubernetes objects)."""
    return dns_label(bundle_name)


def _connect(engine: DockerEngine | None) -> tuple[DockerEngine, SwarmServices]:
    eng = engine or DockerEngine.connect()
    services = SwarmServices(eng)
    if not services.active():
        raise OrchestratorError(
            "this Docker engine is not a Swarm manager",
            remedy="run `docker swarm init` on this host (or on a manager node), or deploy to "
            "Kubernetes: airgap deploy k8s DEST -o DIR",
        )
    return eng, services


def _spec(
    dest: Path,
    packages: SwarmPackages,
    replicas: int,
    port: int | None,
    endpoint_mode: EndpointMode,
    network: str | None,
    cpus: float | None,
    trust: Sequence[Path] | None,
) -> tuple[ServiceSpec, str]:
    manifest = check_unpacked(dest, trust=trust, roots=())
    pushed = read_pushed(dest, manifest.payload.sha256)
    kind = "baked" if packages == "baked" else "normal"
    record = find(pushed, kind)
    if record is None:
        flag = " --variant baked" if kind == "baked" else ""
        raise BundleError(
            f"the {kind} image of this bundle was not pushed",
            remedy=f"airgap build DEST{flag}, then airgap push DEST --registry HOST:PORT",
        )
    mounts: tuple[BindMount, ...] = ()
    env: dict[str, str] = {}
    if packages == "mounted":
        # Every node that runs a task must hold DEST at this same path (one node, or shared
        # storage): Swarm has no image volumes. The tree is re-checked here, on this node only.
        check_unpacked(dest, trust=trust, roots=(SITE_DIR, PREFIX_DIR))
        paths = {f.path.split("/", 1)[0] for f in manifest.files}
        if SITE_DIR in paths:
            mounts += (BindMount(str(dest / SITE_DIR), "/opt/airgap/site-packages"),)
        else:
            env["AZUREML_EXTRA_PYTHON_LIB_PATH"] = ""
        if PREFIX_DIR in paths:
            mounts += (BindMount(str(dest / PREFIX_DIR), "/opt/airgap/prefix"),)
    name = service_name(manifest.name)
    spec = ServiceSpec(
        name=name,
        image=record.pinned,
        replicas=replicas,
        published_port=port,
        target_port=SCORING_PORT,
        endpoint_mode=endpoint_mode,
        networks=(network,) if network else (),
        health_argv=("python3", "-c", health_probe(2)),
        env=env,
        labels={
            LABEL_SERVICE: name,
            LABEL_REVISION: manifest.payload.sha256,
            "org.opencontainers.image.version": manifest.version,
        },
        mounts=mounts,
        cpus=cpus,
    )
    return spec, manifest.version


def deploy(
    dest: Path,
    *,
    replicas: int | None = None,
    port: int | None = None,
    packages: SwarmPackages = "baked",
    endpoint_mode: EndpointMode | None = None,
    network: str | None = None,
    cpus: float | None = None,
    update: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    trust: Sequence[Path] | None = None,
    engine: DockerEngine | None = None,
    on_line: LineSink | None = None,
) -> ServiceStatus:
    """Create the service for DEST's bundle, or (``update``) roll the running one to it; wait
    until every replica runs the new digest and is healthy.

    ``endpoint_mode`` "vip" publishes ``port`` through Swarm's routing mesh (every node, every
    interface; the kernel needs IPVS). "dnsrr" publishes nothing: the replicas answer on the
    overlay ``network`` as ``tasks.<service>``, for the site's own load balancer in front.
    ``cpus`` limits each replica's CPU (docker's ``--cpus``). A new service defaults to 3
    replicas, vip, port 6789 and no CPU limit; an update keeps the running service's
    replicas, endpoint mode, port, network and CPU limit unless they are given.

    Raises:
        SignatureError (exit 3): DEST's stored manifest does not verify.
        BundleError: the image was not pushed.
        OrchestratorError: no Swarm; the service exists (without ``update``) or does not
            (with it); the rollout failed and Swarm rolled back; or it did not finish in time.
    """
    dest = Path(os.path.abspath(dest))
    name = service_name(check_unpacked(dest, trust=trust, roots=()).name)
    _, services = _connect(engine)
    existing = services.find(name)
    if update and existing is None:
        raise OrchestratorError(
            f"no service {name} runs on this Swarm",
            remedy="deploy it first: airgap deploy swarm DEST (without --update)",
        )
    if not update and existing is not None:
        raise OrchestratorError(
            f"service {name} already runs on this Swarm",
            remedy="move it to this bundle with: airgap deploy swarm DEST --update",
        )
    current = (
        _current_settings(existing)
        if existing is not None
        else _Settings(3, "vip", 6789, None, None)
    )
    mode: EndpointMode = endpoint_mode or current.endpoint_mode
    if replicas is not None and replicas < 1:
        raise UsageError("--replicas must be at least 1")
    if cpus is not None and not 0.01 <= cpus <= 1024:
        raise UsageError("--cpus must be between 0.01 and 1024")
    wanted = replicas or current.replicas
    net = network or current.network
    if mode == "dnsrr":
        if net is None:
            raise UsageError(
                "--endpoint-mode dnsrr needs --network: the overlay network your load "
                "balancer reaches the replicas on"
            )
        published = None  # Swarm refuses a routing-mesh port on a DNS round-robin service
    else:
        published = port or current.port or 6789
    limit = cpus if cpus is not None else current.cpus
    spec, version = _spec(dest, packages, wanted, published, mode, net, limit, trust)
    if network:
        services.ensure_network(network)
    if update:
        if on_line:
            on_line(f"rolling {spec.name} to {version} ({spec.image}), one replica at a time")
        services.update(spec)
    else:
        if on_line:
            on_line(f"creating {spec.name}: {wanted} replicas of {spec.image}")
        services.create(spec)
    return _wait(services, spec, timeout, on_line, updating=update)


@dataclass(frozen=True)
class _Settings:
    replicas: int
    endpoint_mode: EndpointMode
    port: int | None
    network: str | None  # a name or an ID
    cpus: float | None


def _current_settings(service: dict[str, Any]) -> _Settings:
    spec = service.get("Spec", {})
    replicas = int(spec.get("Mode", {}).get("Replicated", {}).get("Replicas", 3) or 3)
    endpoint = spec.get("EndpointSpec") or {}
    mode: EndpointMode = "dnsrr" if endpoint.get("Mode") == "dnsrr" else "vip"
    ports = endpoint.get("Ports") or []
    port = int(ports[0]["PublishedPort"]) if ports and ports[0].get("PublishedPort") else None
    nets = spec.get("TaskTemplate", {}).get("Networks") or []
    network = str(nets[0]["Target"]) if nets and nets[0].get("Target") else None
    nano = (spec.get("TaskTemplate", {}).get("Resources") or {}).get("Limits", {}).get("NanoCPUs")
    cpus = int(nano) / 1e9 if nano else None
    return _Settings(replicas, mode, port, network, cpus)


def _replicas(services: SwarmServices, tasks: Sequence[TaskInfo]) -> tuple[ReplicaStatus, ...]:
    out = []
    for t in tasks:
        if t.desired != "running":
            continue
        health = services.container_health(t.container) if t.container else None
        out.append(ReplicaStatus(t.slot, t.state, health, t.image, t.error))
    return tuple(sorted(out, key=lambda r: (r.slot or 0, r.state)))


def _status(services: SwarmServices, name: str) -> ServiceStatus:
    current = services.find(name)
    if current is None:
        raise OrchestratorError(
            f"no service {name} runs on this Swarm", remedy="airgap deploy swarm DEST"
        )
    spec = current.get("Spec", {})
    image = str(spec.get("TaskTemplate", {}).get("ContainerSpec", {}).get("Image", ""))
    wanted = int(spec.get("Mode", {}).get("Replicated", {}).get("Replicas", 0))
    tasks = _replicas(services, services.tasks(name))
    ready = sum(
        1 for t in tasks if t.state == "running" and t.health == "healthy" and t.image == image
    )
    update = current.get("UpdateStatus") or {}
    return ServiceStatus(
        service=name,
        image=image,
        replicas=wanted,
        ready=ready,
        update_state=update.get("State"),
        tasks=tasks,
    )


def _wait(
    services: SwarmServices,
    spec: ServiceSpec,
    timeout: float,
    on_line: LineSink | None,
    *,
    updating: bool,
) -> ServiceStatus:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        st = _status(services, spec.name)
        if st.update_state in (
            "rollback_started",
            "rollback_completed",
            "rollback_paused",
            "paused",
        ):
            errors = sorted({t.error for t in st.tasks if t.error})
            raise OrchestratorError(
                f"the rollout of {spec.name} failed and Swarm rolled it back "
                f"({st.update_state}){': ' + errors[0] if errors else ''}",
                remedy=f"see `docker service ps {spec.name} --no-trunc`; the previous version "
                "keeps serving",
            )
        running = [t for t in st.tasks if t.state == "running"]
        done = (
            st.image == spec.image
            and st.ready == spec.replicas
            and len(running) == spec.replicas
            and (not updating or st.update_state in (None, "completed"))
        )
        line = f"{st.ready}/{spec.replicas} replicas healthy on the new image"
        if on_line and line != last:
            on_line(line)
            last = line
        if done:
            return st
        if time.monotonic() > deadline:
            raise OrchestratorError(
                f"{spec.name} did not get {spec.replicas} healthy replicas within "
                f"{timeout:.0f}s ({st.ready} are)",
                remedy=f"see `docker service ps {spec.name} --no-trunc` and the replicas' logs",
            )
        time.sleep(_POLL)


def status(
    dest: Path, *, trust: Sequence[Path] | None = None, engine: DockerEngine | None = None
) -> ServiceStatus:
    """The service of DEST's bundle: replicas wanted and healthy, each task's state.

    Raises:
        OrchestratorError: no Swarm, or no such service.
    """
    dest = Path(os.path.abspath(dest))
    manifest = check_unpacked(dest, trust=trust, roots=())
    _, services = _connect(engine)
    return _status(services, service_name(manifest.name))


def undeploy(
    dest: Path, *, trust: Sequence[Path] | None = None, engine: DockerEngine | None = None
) -> str:
    """Remove the service of DEST's bundle; returns its name.

    Raises:
        OrchestratorError: no Swarm, or no such service.
    """
    dest = Path(os.path.abspath(dest))
    manifest = check_unpacked(dest, trust=trust, roots=())
    _, services = _connect(engine)
    name = service_name(manifest.name)
    if not services.remove(name):
        raise OrchestratorError(f"no service {name} runs on this Swarm")
    return name
