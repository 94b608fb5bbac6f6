"""The Docker engine behind a small interface; every docker/requests error becomes ours here.

Only this module imports the docker SDK. It talks to the local engine only: nothing here can
pull, push or log in to a registry, and image builds run with networking disabled.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Protocol

import docker
import docker.errors
import docker.types
import requests.exceptions

from ..errors import (
    BundleError,
    ContainerError,
    EngineUnavailableError,
    ImageBuildError,
    OrchestratorError,
    RegistryError,
)
from ..layout import SCORING_PORT

LOCAL_RUNNER_HINT: Final = "or serve without Docker: airgap serve DEST (or airgap run DEST --local)"
NO_ENGINE_REMEDY: Final = (
    "start the Docker engine (dockerd) and check DOCKER_HOST and your access to its socket, "
    + LOCAL_RUNNER_HINT
)
CHUNK: Final = 1024 * 1024  # bytes per read when streaming image tars


@dataclass(frozen=True)
class PortBinding:
    """Publish the container's ``container_port`` on ``host_ip:host_port`` (0: any free port)."""

    container_port: int
    host_ip: str
    host_port: int


@dataclass(frozen=True)
class BindMount:
    """A host folder mounted into the container."""

    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class ContainerSpec:
    """Everything `airgap run` asks of the engine for one container."""

    image: str
    name: str
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[BindMount, ...] = ()
    port: PortBinding | None = None
    network: bool = True  # False: --network none (only loopback inside the container)
    groups: tuple[int, ...] = ()  # supplementary group ids (to read a mounted TLS key)
    extra_ports: tuple[PortBinding, ...] = ()  # e.g. the metrics port


@dataclass(frozen=True)
class ContainerInfo:
    """What the engine says about one container right now."""

    id: str
    name: str
    status: str  # created, running, exited, dead, ...
    exit_code: int | None
    health: str | None  # starting, healthy, unhealthy, or None without a HEALTHCHECK
    labels: Mapping[str, str]
    host_port: int | None  # where the scoring port is published, if it is


class Engine(Protocol):
    """What the Docker path needs from a container engine."""

    def image_id(self, ref: str) -> str | None:
        """The image ID ("sha256:...") ``ref`` names, or None when the engine lacks it."""

    def save_image(self, ref: str, out: IO[bytes]) -> int:
        """Write ``docker save ref`` to ``out``; return the bytes written."""

    def load_image(self, chunks: Iterable[bytes]) -> list[str]:
        """``docker load`` the tar streamed by ``chunks``; return what the engine reports."""

    def build(
        self,
        context: IO[bytes],
        *,
        dockerfile: str,
        tag: str,
        buildargs: Mapping[str, str],
        on_line: Callable[[str], None] | None = None,
    ) -> str:
        """Build from a tar ``context`` with networking disabled; return the image ID."""

    def images_with_labels(self, labels: Mapping[str, str]) -> list[str]:
        """IDs of the images carrying all ``labels``, newest first."""

    def run(self, spec: ContainerSpec) -> str:
        """Create and start a detached container; return its ID."""

    def inspect(self, container: str) -> ContainerInfo | None:
        """The container's state, or None once it no longer exists."""

    def containers_with_labels(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        """Every container (running or not) carrying all ``labels``."""

    def logs(self, container: str, *, tail: int | None = None) -> str:
        """The container's log so far (stdout and stderr), the last ``tail`` lines if given."""

    def follow_logs(self, container: str) -> Iterator[str]:
        """The container's log lines as they come, from the start, until it stops."""

    def exec_probe(self, container: str, argv: list[str]) -> tuple[int, str]:
        """Run ``argv`` inside the running container; return its exit code and output."""

    def stop(self, container: str, *, timeout: int = 10) -> None:
        """Stop (SIGTERM, then SIGKILL after ``timeout`` s) and remove the container."""

    def run_once(self, image: str, argv: list[str], *, timeout: float) -> tuple[int, str]:
        """Run ``argv`` in a throwaway container of ``image`` with no network; return its
        exit status and output. The container is removed whatever happens."""

    def platform(self) -> str:
        """The engine's operating system and architecture, e.g. ``linux/x86_64``."""

    def server_version(self) -> str:
        """The engine's version string, e.g. "20.10.24+dfsg1"."""

    def data_root(self) -> str | None:
        """The engine's data root (``docker info``: DockerRootDir) when the engine runs on
        this machine (a local socket), so its free space can be read here; else None."""


@contextlib.contextmanager
def _translated(action: str, error: type[BundleError], remedy: str | None = None) -> Iterator[None]:
    """Turn the SDK's and requests' exceptions into ``error`` naming ``action``."""
    try:
        yield
    except BundleError:
        raise
    except requests.exceptions.ConnectionError as e:
        raise EngineUnavailableError(
            f"lost the Docker engine while trying to {action}: {_first_line(e)}",
            remedy=NO_ENGINE_REMEDY,
        ) from e
    except requests.exceptions.RequestException as e:
        raise error(f"cannot {action}: {_first_line(e)}", remedy=remedy) from e
    except docker.errors.APIError as e:
        raise error(f"cannot {action}: {_api_message(e)}", remedy=remedy) from e
    except docker.errors.DockerException as e:
        raise error(f"cannot {action}: {_first_line(e)}", remedy=remedy) from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _api_message(e: docker.errors.APIError) -> str:
    explanation = getattr(e, "explanation", None)
    if isinstance(explanation, bytes):
        explanation = explanation.decode("utf-8", "replace")
    return str(explanation or e).strip().splitlines()[0]


def _stream_errors(item: Mapping[str, Any]) -> str | None:
    """The error text of one JSON message from a build or load stream, if it is one."""
    if "error" in item or "errorDetail" in item:
        detail = item.get("errorDetail") or {}
        return str(item.get("error") or detail.get("message") or item).strip()
    return None


class DockerEngine:
    """The local Docker engine through the docker SDK (API version negotiated)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._api = client.api

    @classmethod
    def connect(cls, *, timeout: int = 60) -> DockerEngine:
        """Connect to the engine DOCKER_HOST names (default: the local socket).

        ``version="auto"`` asks the engine for its API version, so a newer client library
        works with Debian's 20.10 engine; it is also what tells us whether anything answers.

        Raises:
            EngineUnavailableError: nothing answers, with the remedy and the local runner.
        """
        try:
            client = docker.from_env(version="auto", timeout=timeout, use_ssh_client=False)
            client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise EngineUnavailableError(
                f"no Docker engine answers ({_first_line(e)})", remedy=NO_ENGINE_REMEDY
            ) from e
        return cls(client)

    def close(self) -> None:
        """Release the HTTP connections."""
        self._client.close()

    def server_version(self) -> str:
        """The engine's version string, e.g. "20.10.24+dfsg1"."""
        with _translated("ask the engine its version", EngineUnavailableError):
            return str(self._client.version().get("Version", "unknown"))

    # ---- images ---------------------------------------------------------------------------

    def image_id(self, ref: str) -> str | None:
        with _translated(f"inspect image {ref}", ImageBuildError):
            try:
                return str(self._api.inspect_image(ref)["Id"])
            except docker.errors.ImageNotFound:
                return None
            except docker.errors.APIError as e:
                # An invalid reference ("Foo:bar") is a 400, not a 404: the engine lacks it.
                if e.status_code == 400:
                    return None
                raise

    def save_image(self, ref: str, out: IO[bytes]) -> int:
        written = 0
        with _translated(f"save image {ref}", ImageBuildError):
            for chunk in self._api.get_image(ref, chunk_size=CHUNK):
                out.write(chunk)
                written += len(chunk)
        return written

    def load_image(self, chunks: Iterable[bytes]) -> list[str]:
        loaded: list[str] = []
        with _translated("load the base image", ImageBuildError):
            for item in self._api.load_image(chunks, quiet=True):
                if not isinstance(item, dict):
                    continue
                err = _stream_errors(item)
                if err:
                    raise ImageBuildError(f"the engine refused the base image tar: {err}")
                text = str(item.get("stream", "")).strip()
                if text:
                    loaded.append(text)
        return loaded

    def build(
        self,
        context: IO[bytes],
        *,
        dockerfile: str,
        tag: str,
        buildargs: Mapping[str, str],
        on_line: Callable[[str], None] | None = None,
    ) -> str:
        image_id: str | None = None
        tail: list[str] = []
        with _translated(f"build {tag}", ImageBuildError):
            stream = self._api.build(
                fileobj=context,
                custom_context=True,
                dockerfile=dockerfile,
                tag=tag,
                buildargs=dict(buildargs),
                # No network for any step, never pull the base, and no proxy settings
                # copied from ~/.docker/config.json into build arguments.
                network_mode="none",
                pull=False,
                use_config_proxy=False,
                rm=True,
                forcerm=True,
                decode=True,
            )
            for item in stream:
                if not isinstance(item, dict):
                    continue
                err = _stream_errors(item)
                if err:
                    raise ImageBuildError(
                        f"building {tag} failed: {err}" + (f" (after: {tail[-1]})" if tail else ""),
                        remedy="see the build output above",
                    )
                if "aux" in item and isinstance(item["aux"], dict):
                    image_id = str(item["aux"].get("ID") or image_id or "") or None
                text = str(item.get("stream", "")).rstrip("\n")
                for line in text.splitlines():
                    tail = [*tail[-19:], line]
                    if on_line is not None:
                        on_line(line)
        if image_id is None:
            image_id = self.image_id(tag)
        if image_id is None:
            raise ImageBuildError(f"the engine reported no image for {tag}")
        return image_id

    def images_with_labels(self, labels: Mapping[str, str]) -> list[str]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        with _translated("list images", ImageBuildError):
            found = self._api.images(filters=filters)
        found.sort(key=lambda i: int(i.get("Created", 0)), reverse=True)
        return [str(i["Id"]) for i in found]

    def tag_image(self, image: str, repository: str, tag: str) -> None:
        """Give ``image`` (an ID or reference) the name ``repository:tag``."""
        with _translated(f"tag {image} as {repository}:{tag}", RegistryError):
            self._api.tag(image, repository, tag=tag, force=True)

    def push_image(
        self,
        repository: str,
        tag: str,
        *,
        auth: Mapping[str, str] | None,
        on_line: Callable[[str], None] | None = None,
    ) -> str:
        """Push ``repository:tag``; return the manifest digest the registry answered with.

        ``auth`` ({"username", "password"} or {"identitytoken"}) is sent to the engine only;
        None lets the engine use its own configuration (~/.docker/config.json).

        Raises:
            RegistryError: the engine or the registry refused the push.
        """
        digest: str | None = None
        with _translated(f"push {repository}:{tag}", RegistryError):
            stream = self._api.push(
                repository,
                tag=tag,
                auth_config=dict(auth) if auth else None,
                stream=True,
                decode=True,
            )
            for item in stream:
                if not isinstance(item, dict):
                    continue
                err = _stream_errors(item)
                if err:
                    raise RegistryError(
                        f"pushing {repository}:{tag} failed: {err}",
                        remedy="check the registry address, its TLS certificate "
                        "(/etc/docker/certs.d/HOST:PORT/ca.crt) and the credentials",
                    )
                aux = item.get("aux")
                if isinstance(aux, dict) and isinstance(aux.get("Digest"), str):
                    digest = aux["Digest"]
                status = item.get("status")
                if on_line is not None and isinstance(status, str) and "id" not in item:
                    on_line(status)
        if digest is None:
            raise RegistryError(f"the engine reported no digest for the push of {repository}:{tag}")
        return digest

    @property
    def client(self) -> Any:
        """The docker SDK client, for the Swarm module (services are not in the Protocol)."""
        return self._client

    def remove_image(self, ref: str) -> None:
        """Remove an image (tests and benchmarks use this to start from a fresh engine)."""
        with (
            _translated(f"remove image {ref}", ImageBuildError),
            contextlib.suppress(docker.errors.ImageNotFound),
        ):
            self._api.remove_image(ref, force=True)

    # ---- containers -----------------------------------------------------------------------

    def run(self, spec: ContainerSpec) -> str:
        ports: dict[str, Any] = {}
        if spec.port is not None:
            host_port = spec.port.host_port or None  # None: the engine picks a free port
            ports[f"{spec.port.container_port}/tcp"] = (spec.port.host_ip, host_port)
        for extra in spec.extra_ports if spec.port is not None else ():
            ports[f"{extra.container_port}/tcp"] = (extra.host_ip, extra.host_port or None)
        mounts = [
            docker.types.Mount(m.target, m.source, type="bind", read_only=m.read_only)
            for m in spec.mounts
        ]
        with _translated(f"start container {spec.name}", ContainerError):
            container = self._client.containers.run(
                spec.image,
                name=spec.name,
                detach=True,
                environment=dict(spec.env),
                labels=dict(spec.labels),
                mounts=mounts,
                ports=ports or None,
                network_mode=None if spec.network else "none",
                # Hardening that costs nothing: the image is immutable at run time, the server
                # writes only to a private /tmp, and it can gain no privileges. /tmp must allow
                # exec: dynamic mode installs extension modules there and maps them.
                read_only=True,
                tmpfs={"/tmp": "rw,exec,nosuid,nodev,mode=1777"},  # noqa: S108 - per container
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                init=True,
                group_add=[str(g) for g in spec.groups] or None,
            )
            return str(container.id)

    def inspect(self, container: str) -> ContainerInfo | None:
        with _translated(f"inspect container {container[:12]}", ContainerError):
            try:
                data = self._api.inspect_container(container)
            except docker.errors.NotFound:
                return None
        return _info(data)

    def containers_with_labels(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        with _translated("list containers", ContainerError):
            found = self._api.containers(all=True, filters=filters)
        infos = []
        for c in found:
            info = self.inspect(str(c["Id"]))
            if info is not None:
                infos.append(info)
        return infos

    def logs(self, container: str, *, tail: int | None = None) -> str:
        with _translated(f"read the log of {container[:12]}", ContainerError):
            try:
                data = self._api.logs(container, stdout=True, stderr=True, tail=tail or "all")
            except docker.errors.NotFound:
                return ""
        return bytes(data).decode("utf-8", "replace")

    def follow_logs(self, container: str) -> Iterator[str]:
        with _translated(f"follow the log of {container[:12]}", ContainerError):
            pending = b""
            for chunk in self._api.logs(container, stream=True, follow=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace")
            if pending:
                yield pending.decode("utf-8", "replace")

    def exec_probe(self, container: str, argv: list[str]) -> tuple[int, str]:
        with _translated(f"run a command in {container[:12]}", ContainerError):
            exec_id = self._api.exec_create(container, argv, stdout=True, stderr=True)["Id"]
            output = self._api.exec_start(exec_id)
            code = self._api.exec_inspect(exec_id).get("ExitCode")
        text = bytes(output).decode("utf-8", "replace")
        return (int(code) if code is not None else 1), text

    def stop(self, container: str, *, timeout: int = 10) -> None:
        with _translated(f"stop container {container[:12]}", ContainerError):
            with contextlib.suppress(docker.errors.NotFound):
                self._api.stop(container, timeout=timeout)
            # A container being removed already (409) or gone (404) is what we want anyway.
            for attempt in range(20):
                try:
                    self._api.remove_container(container, force=True)
                    return
                except docker.errors.NotFound:
                    return
                except docker.errors.APIError as e:
                    if e.status_code != 409 or attempt == 19:
                        raise
                    time.sleep(0.1)

    def run_once(self, image: str, argv: list[str], *, timeout: float) -> tuple[int, str]:
        with _translated(f"run {argv[0]} in image {image[:19]}", ImageBuildError):
            container = self._api.create_container(
                image,
                command=argv[1:],
                entrypoint=argv[:1],
                # The same hardening as `airgap run`, and no network at all: this only asks
                # the image's Python what it is.
                host_config=self._api.create_host_config(
                    network_mode="none",
                    read_only=True,
                    cap_drop=["ALL"],
                    security_opt=["no-new-privileges"],
                ),
                labels={"airgap-bundler.probe": "1"},
            )
            cid = str(container["Id"])
            try:
                self._api.start(cid)
                try:
                    result = self._api.wait(cid, timeout=timeout)
                except requests.exceptions.RequestException as e:
                    raise ImageBuildError(
                        f"{argv[0]} in image {image[:19]} did not finish within {timeout:.0f}s"
                    ) from e
                output = bytes(self._api.logs(cid, stdout=True, stderr=True))
            finally:
                with contextlib.suppress(docker.errors.APIError):
                    self._api.remove_container(cid, force=True)
        return int(result.get("StatusCode", 1)), output.decode("utf-8", "replace")

    def platform(self) -> str:
        with _translated("ask the engine its platform", EngineUnavailableError):
            info = self._client.info()
        return f"{str(info.get('OSType', 'unknown')).lower()}/{info.get('Architecture', 'unknown')}"

    def data_root(self) -> str | None:
        # The SDK names a unix-socket engine http+docker://; tcp:// and ssh:// engines are
        # elsewhere, and a path of theirs that happens to exist here says nothing about them.
        if not str(self._api.base_url).startswith("http+docker://"):
            return None
        with _translated("ask the engine its data root", EngineUnavailableError):
            root = self._client.info().get("DockerRootDir")
        return str(root) if root else None


# ---- Docker Swarm services ----------------------------------------------------------------


@dataclass(frozen=True)
class ServiceSpec:
    """A replicated Swarm service of one image, with a health check and safe rollouts."""

    name: str
    image: str  # repository@sha256:...: pinned, so a moved tag changes nothing
    replicas: int
    published_port: int | None  # None: nothing published (dnsrr behind the site's balancer)
    target_port: int
    health_argv: tuple[str, ...]
    endpoint_mode: str = "vip"  # vip: Swarm's routing mesh (needs IPVS); dnsrr: DNS only
    networks: tuple[str, ...] = ()  # overlay networks to join
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[BindMount, ...] = ()
    user: str = "10001:10001"
    health_interval: float = 2.0
    health_start: float = 120.0
    stop_grace: float = 30.0
    monitor: float = 10.0  # how long a new task must stay healthy before the next one moves
    cpus: float | None = None  # CPU limit per replica (docker's --cpus; NanoCPUs); None: none


@dataclass(frozen=True)
class TaskInfo:
    """One task (replica) of a service, as the Swarm reports it."""

    id: str
    slot: int | None
    state: str  # running, starting, shutdown, failed, ...
    desired: str
    image: str
    container: str | None
    error: str


_NS: Final = 1_000_000_000


def _service_parts(spec: ServiceSpec) -> dict[str, Any]:
    health = docker.types.Healthcheck(
        test=["CMD", *spec.health_argv],
        interval=int(spec.health_interval * _NS),
        timeout=int(max(spec.health_interval, 2.0) * _NS),
        retries=3,
        start_period=int(spec.health_start * _NS),
    )
    container = docker.types.ContainerSpec(
        spec.image,
        env=[f"{k}={v}" for k, v in sorted(spec.env.items())],
        user=spec.user,
        labels=dict(spec.labels),
        mounts=[
            docker.types.Mount(m.target, m.source, type="bind", read_only=m.read_only)
            for m in spec.mounts
        ]
        + [docker.types.Mount("/tmp", None, type="tmpfs")],  # noqa: S108 - per container
        stop_grace_period=int(spec.stop_grace * _NS),
        read_only=True,
        healthcheck=health,
        cap_drop=["ALL"],
    )
    template = docker.types.TaskTemplate(
        container_spec=container,
        restart_policy=docker.types.RestartPolicy(condition="any", delay=int(1 * _NS)),
        # In the task template: Swarm refuses to update services given networks at the top.
        networks=list(spec.networks) or None,
        resources=docker.types.Resources(cpu_limit=round(spec.cpus * _NS))
        if spec.cpus is not None
        else None,
    )
    update = docker.types.UpdateConfig(
        parallelism=1,
        delay=0,
        failure_action="rollback",
        monitor=int(spec.monitor * _NS),
        max_failure_ratio=0,
        order="start-first",
    )
    rollback = docker.types.RollbackConfig(
        parallelism=1,
        delay=0,
        failure_action="pause",
        monitor=int(spec.monitor * _NS),
        order="start-first",
    )
    return {
        "task_template": template,
        "labels": dict(spec.labels),
        "mode": docker.types.ServiceMode("replicated", replicas=spec.replicas),
        "update_config": update,
        "rollback_config": rollback,
        "endpoint_spec": docker.types.EndpointSpec(
            mode=spec.endpoint_mode,
            ports={spec.published_port: spec.target_port}
            if spec.published_port is not None
            else None,
        ),
    }


class SwarmServices:
    """The engine's Swarm services API (only what `airgap deploy swarm` needs)."""

    def __init__(self, engine: DockerEngine) -> None:
        self._api = engine.client.api

    def active(self) -> bool:
        """True when this engine is a Swarm manager."""
        with _translated("ask the engine about its Swarm", OrchestratorError):
            info = self._api.info().get("Swarm", {})
        return bool(info.get("LocalNodeState") == "active" and info.get("ControlAvailable"))

    def find(self, name: str) -> dict[str, Any] | None:
        with _translated(f"inspect service {name}", OrchestratorError):
            found = self._api.services(filters={"name": name})
        exact = [s for s in found if s.get("Spec", {}).get("Name") == name]
        return dict(exact[0]) if exact else None

    def create(self, spec: ServiceSpec) -> str:
        with _translated(f"create service {spec.name}", OrchestratorError):
            made = self._api.create_service(name=spec.name, **_service_parts(spec))
        return str(made["ID"])

    def update(self, spec: ServiceSpec) -> None:
        """Roll the service to ``spec`` (start-first, one task at a time, rollback on failure)."""
        current = self.find(spec.name)
        if current is None:
            raise OrchestratorError(f"no service {spec.name} to update")
        with _translated(f"update service {spec.name}", OrchestratorError):
            self._api.update_service(
                current["ID"], current["Version"]["Index"], name=spec.name, **_service_parts(spec)
            )

    def tasks(self, name: str) -> list[TaskInfo]:
        with _translated(f"list the tasks of {name}", OrchestratorError):
            found = self._api.tasks(filters={"service": name})
        out = []
        for t in found:
            status = t.get("Status", {})
            cs = status.get("ContainerStatus") or {}
            out.append(
                TaskInfo(
                    id=str(t.get("ID", "")),
                    slot=t.get("Slot"),
                    state=str(status.get("State", "")),
                    desired=str(t.get("DesiredState", "")),
                    image=str(t.get("Spec", {}).get("ContainerSpec", {}).get("Image", "")),
                    container=cs.get("ContainerID") or None,
                    error=str(status.get("Err", "")),
                )
            )
        return out

    def container_health(self, container: str) -> str | None:
        """healthy / unhealthy / starting, or None when the container is gone."""
        try:
            data = self._api.inspect_container(container)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError:
            return None
        health = data.get("State", {}).get("Health") or {}
        return str(health.get("Status")) if health else None

    def ensure_network(self, name: str) -> None:
        """An attachable overlay network ``name`` (made when missing)."""
        with _translated(f"create network {name}", OrchestratorError):
            if not self._api.networks(names=[name]):
                self._api.create_network(name, driver="overlay", attachable=True)

    def remove(self, name: str) -> bool:
        with _translated(f"remove service {name}", OrchestratorError):
            try:
                self._api.remove_service(name)
            except docker.errors.NotFound:
                return False
        return True


def _info(data: Mapping[str, Any]) -> ContainerInfo:
    state = data.get("State") or {}
    health = (state.get("Health") or {}).get("Status")
    host_port = None
    ports = ((data.get("NetworkSettings") or {}).get("Ports")) or {}
    # The scoring port's binding first: a container may publish others (metrics).
    scoring = f"{SCORING_PORT}/tcp"
    for _, bindings in sorted(ports.items(), key=lambda item: item[0] != scoring):
        for b in bindings or ():
            if b.get("HostPort"):
                host_port = int(b["HostPort"])
                break
        if host_port:
            break
    status = str(state.get("Status", "unknown"))
    return ContainerInfo(
        id=str(data.get("Id", "")),
        name=str(data.get("Name", "")).lstrip("/"),
        status=status,
        exit_code=int(state["ExitCode"]) if status in ("exited", "dead") else None,
        health=str(health) if health else None,
        labels=dict((data.get("Config") or {}).get("Labels") or {}),
        host_port=host_port,
    )


# ---- pack time (online side) --------------------------------------------------------------


def _engine_or_none(engine: Engine | None, required: bool) -> Engine | None:
    if engine is not None:
        return engine
    try:
        return DockerEngine.connect()
    except EngineUnavailableError as e:
        if required:
            raise EngineUnavailableError(
                f"{e.message}; --include-base-image needs one to save the base image",
                remedy="start the Docker engine (dockerd), or pack without --include-base-image",
            ) from e
        return None


def resolve_base_image(
    ref: str, *, required: bool = False, engine: Engine | None = None
) -> str | None:
    """Pin bundle.toml's base image ``ref`` to its image ID ("sha256:...") in the local engine.

    Without ``required``, no engine or a missing image gives None: pack still succeeds and
    `airgap build` later refuses the unpinned bundle with the remedy.

    Raises:
        EngineUnavailableError: ``required`` and no engine answers.
        ImageBuildError: ``required`` and the engine lacks ``ref``.
    """
    eng = _engine_or_none(engine, required)
    if eng is None:
        return None
    try:
        image_id = eng.image_id(ref)
    except BundleError:
        if required:
            raise
        return None
    if image_id is None and required:
        raise ImageBuildError(
            f"the local Docker engine has no base image {ref}",
            remedy=f"load or build it on this machine (`docker image inspect {ref}` must "
            "work), then pack again",
        )
    return image_id


def save_image(
    ref: str, out: Path | IO[bytes], *, digest: str | None = None, engine: Engine | None = None
) -> int:
    """Write `docker save ref` to ``out`` (a path or a binary stream); return the bytes.

    Saved by reference, so `docker load` restores the tag too. With ``digest`` (the image ID
    from resolve_base_image), ``ref`` must name that image before and after the save, so a
    re-tag in between cannot slip another image into the bundle.

    Raises:
        EngineUnavailableError: no engine answers.
        ImageBuildError: the image is missing or was re-tagged, or cannot be saved/written.
    """
    eng = _engine_or_none(engine, True)
    assert eng is not None
    _check_pinned(eng, ref, digest, "before")
    if isinstance(out, Path):
        try:
            with out.open("wb") as f:
                size = eng.save_image(ref, f)
        except OSError as e:
            raise ImageBuildError(f"cannot write {out}: {e.strerror}") from e
    else:
        size = eng.save_image(ref, out)
    _check_pinned(eng, ref, digest, "after")
    return size


def _check_pinned(engine: Engine, ref: str, digest: str | None, when: str) -> None:
    now = engine.image_id(ref)
    if now is None:
        raise ImageBuildError(
            f"the local Docker engine has no base image {ref}",
            remedy=f"load or build it on this machine (`docker image inspect {ref}`), then pack",
        )
    if digest is not None and now != digest:
        raise ImageBuildError(
            f"base image {ref} is {now} {when} saving, not the pinned {digest}",
            remedy="do not re-tag the base image while packing; pack again",
        )
