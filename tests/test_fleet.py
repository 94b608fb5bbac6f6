"""The fleet path end to end through the CLI: pack the iris example twice (1.0.0, 1.0.1), unpack
and build under `unshare -n`, push to a real registry (Debian's docker-registry on loopback),
write Kubernetes manifests (validated offline against the schemas of the supported versions),
and deploy to a real Docker Swarm with 3 replicas, scored through a published port.

This kernel has no IPVS, so Swarm's routing mesh cannot carry traffic here: the Swarm tests run
the service in DNS round-robin mode behind HAProxy (Debian's, in an image made by mmdebstrap,
as a site's own balancer), published on 127.0.0.1. The routing-mesh spec is checked, not used.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from _registry import (
    HAPROXY_IMAGE,
    Registry,
    free_port,
    haproxy_config,
    haproxy_run_args,
    remove_built_images,
    run_registry,
)
from test_docker import ensure_engine, post_score
from test_docker_e2e import EXAMPLE, IRIS_ROWS, isolated

from bundler.cli import main
from bundler.deploy.engine import DockerEngine
from bundler.deploy.kube import KUBERNETES_VERSIONS, KubeSpec, objects, render_chart

pytestmark = [pytest.mark.docker, pytest.mark.network, pytest.mark.slow]

NAME = "fleet-iris"
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Fleet:
    root: Path
    pub: Path
    dest: Path  # 1.0.0, built --variant all --fleet
    dest2: Path  # 1.0.1, built --variant baked
    registry: Registry
    prefix: str
    built: dict[str, str] = field(default_factory=dict)  # kind -> image id (1.0.0)


def _project(root: Path, version: str) -> Path:
    project = root / f"project-{version}"
    shutil.copytree(EXAMPLE, project)
    toml = project / "bundle.toml"
    text = re.sub(r'(?m)^name = ".*"$', f'name = "{NAME}"', toml.read_text())
    text = re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', text)
    toml.write_text(text)
    return project


def _airgap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bundler", *args], capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    engine = ensure_engine()
    root = tmp_path_factory.mktemp("fleet")
    keys = root / "keys"
    assert main(["keygen", "--out", str(keys), "--no-passphrase"]) == 0
    dests = []
    for version in ("1.0.0", "1.0.1"):
        bundle = root / f"{version}.airgap"
        args = ["pack", str(_project(root, version)), "-o", str(bundle)]
        assert main([*args, "--key", str(keys / "airgap.key"), "--quiet"]) == 0
        dest = root / f"dest-{version}"
        proc = isolated("unpack", str(bundle), str(dest), "--trust", str(keys / "airgap.pub"))
        assert proc.returncode == 0, proc.stderr
        dests.append(dest)
    proc = isolated("build", str(dests[0]), "--variant", "all", "--fleet", "--json", "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = {i["variant"]: i["id"] for i in json.loads(proc.stdout)["images"]}
    assert sorted(built) == ["baked", "data", "data-init", "normal"]
    proc = isolated("build", str(dests[1]), "--variant", "baked", "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with run_registry(root / "registry") as registry:
        yield Fleet(root, keys / "airgap.pub", dests[0], dests[1], registry, "models", built)
    remove_built_images(engine, dests)
    engine.close()


def _get_manifest(host: str, repo_path: str, ref: str) -> tuple[str, dict[str, Any]]:
    """The registry's manifest, fetched here independently of the code under test."""
    req = urllib.request.Request(
        f"http://{host}/v2/{repo_path}/manifests/{ref}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return "sha256:" + hashlib.sha256(body).hexdigest(), json.loads(body)


def _push(fleet: Fleet, dest: Path, *extra: str) -> dict[str, Any]:
    target = f"{fleet.registry.host}/{fleet.prefix}"
    proc = _airgap("push", str(dest), "--registry", target, "--plain-http", "--json", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


@pytest.fixture(scope="module")
def pushed(fleet: Fleet) -> Fleet:
    out = _push(fleet, fleet.dest)
    assert [i["kind"] for i in out["images"]] == ["normal", "baked", "data", "data-init"]
    _push(fleet, fleet.dest2)
    return fleet


def test_push_records_the_digest_the_registry_serves_for_the_built_image(pushed: Fleet) -> None:
    record = json.loads((pushed.dest / ".airgap" / "pushed.json").read_text())
    assert record["registry"] == f"{pushed.registry.host}/models"
    for image in record["images"]:
        path = image["repository"].split("/", 1)[1]
        by_tag, manifest = _get_manifest(pushed.registry.host, path, image["tag"])
        assert by_tag == image["digest"]
        # The registry's image is the one built from the bundle: same config digest.
        assert manifest["config"]["digest"] == pushed.built[image["kind"]] == image["image_id"]


def test_push_refuses_a_dest_that_was_not_built(fleet: Fleet, tmp_path: Path) -> None:
    dest = tmp_path / "copy"
    shutil.copytree(fleet.dest, dest, symlinks=True)
    (dest / ".airgap" / "images.json").unlink()
    proc = _airgap("push", str(dest), "--registry", fleet.registry.host, "--plain-http")
    assert proc.returncode == 1
    assert "airgap build" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_plain_http_to_a_remote_registry_is_refused(fleet: Fleet) -> None:
    proc = _airgap("push", str(fleet.dest), "--registry", "registry.example:5000", "--plain-http")
    assert proc.returncode == 2
    assert "in the clear" in proc.stderr


def test_push_over_tls_with_htpasswd_credentials_from_a_file(fleet: Fleet, tmp_path: Path) -> None:
    # A copy of DEST: this push records another registry, which must not replace the
    # record the other tests deploy from.
    dest = tmp_path / "dest"
    shutil.copytree(fleet.dest, dest, symlinks=True)
    with run_registry(tmp_path / "secure", tls=True, auth=True) as reg:
        creds = tmp_path / "creds.json"
        creds.write_text(json.dumps({"username": reg.user, "password": reg.password}))
        args = [
            "push",
            str(dest),
            "--registry",
            f"{reg.host}/team",
            "--image",
            "normal",
            "-q",
        ]
        # Without credentials: refused by the registry, one line naming what to do.
        proc = _airgap(*args)
        assert proc.returncode == 1
        assert len(proc.stderr.strip().splitlines()) == 1
        assert "asks for credentials" in proc.stderr and "--credentials FILE" in proc.stderr
        wrong = tmp_path / "wrong.json"
        wrong.write_text(json.dumps({"username": reg.user, "password": "nope"}))
        proc = _airgap(*args, "--credentials", str(wrong))
        assert proc.returncode == 1
        assert "refused the credentials of 'fleet'" in proc.stderr
        proc = _airgap(*args, "--credentials", str(creds), "--json")
        assert proc.returncode == 0, proc.stderr[-2000:]
        image = json.loads(proc.stdout)["images"][0]
        assert image["image_id"] == fleet.built["normal"]
        # Independently: the TLS registry serves that digest, with these credentials only.
        assert reg.ca is not None
        import ssl

        ctx = ssl.create_default_context(cafile=str(reg.ca))
        token = base64.b64encode(f"{reg.user}:{reg.password}".encode()).decode()
        req = urllib.request.Request(
            f"https://{reg.host}/v2/team/{NAME}/manifests/{image['pinned'].split('@')[1]}",
            headers={
                "Authorization": f"Basic {token}",
                "Accept": "application/vnd.docker.distribution.manifest.v2+json",
            },
        )
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            assert "sha256:" + hashlib.sha256(r.read()).hexdigest() == image["pinned"].split("@")[1]
    # The engine's copy of the tag for that registry is ours to remove.
    eng = DockerEngine.connect()
    eng.remove_image(image["tag"])
    eng.close()


def _read_or_none(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def test_push_with_token_auth_against_a_real_token_server(fleet: Fleet, tmp_path: Path) -> None:
    """The registry with `auth: token`: the engine and our client both get JWTs from the token
    server (signed with the key of the certificate in the registry's rootcertbundle, sent in
    x5c) with the credentials from a Docker config.json (or a file)."""
    dest = tmp_path / "dest"
    shutil.copytree(fleet.dest, dest, symlinks=True)
    with run_registry(tmp_path / "token", token=True) as reg:
        assert reg.tokens is not None and reg.user and reg.password
        args = ["push", str(dest), "--registry", f"{reg.host}/team", "--plain-http", "--image"]
        args += ["normal", "-q"]
        before = _read_or_none(dest / ".airgap" / "pushed.json")
        # Wrong credentials: refused by the token service, one line, exit 1.
        wrong = tmp_path / "wrong.json"
        wrong.write_text(json.dumps({"username": reg.user, "password": "nope"}))
        proc = _airgap(*args, "--credentials", str(wrong))
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert f"token service at {reg.tokens.realm} refused the credentials of 'fleet'" in lines[0]
        assert "--credentials FILE" in lines[0]
        print(f"wrong token credentials: {lines[0]}")
        # Refused before the engine pushed anything: the registry holds no repository yet.
        assert not (reg.root / "docker" / "registry" / "v2" / "repositories").exists()
        assert _read_or_none(dest / ".airgap" / "pushed.json") == before  # nothing recorded
        assert reg.tokens.requests and all(u is None for u, _, _ in reg.tokens.requests)
        # The right ones, from a Docker configuration ($DOCKER_CONFIG/config.json).
        config = tmp_path / "docker-config"
        config.mkdir()
        auth = base64.b64encode(f"{reg.user}:{reg.password}".encode()).decode()
        (config / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": auth}}}))
        proc = subprocess.run(
            [sys.executable, "-m", "bundler", *args, "--json"],
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "DOCKER_CONFIG": str(config)},
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        image = json.loads(proc.stdout)["images"][0]
        assert image["image_id"] == fleet.built["normal"]
        granted = [(u, scopes) for u, scopes, status in reg.tokens.requests if status == 200]
        print(f"token requests granted: {granted}")
        # Our check asked for pull and push before the engine pushed; the engine asked for
        # its own push token (its order of the actions differs).
        scopes = [sc for _, many in granted for sc in many]
        ours = f"repository:team/{NAME}:pull,push"
        assert ours in scopes, scopes
        assert any(sc != ours and "push" in sc.rsplit(":", 1)[1] for sc in scopes), scopes
        assert all(u == reg.user for u, _ in granted)
        # Independently of the code under test: the digest recorded is what the registry
        # serves under the tag, with a token for pull.
        token = reg.tokens.token(reg.user, [f"repository:team/{NAME}:pull"])
        req = urllib.request.Request(
            f"http://{reg.host}/v2/team/{NAME}/manifests/{image['tag'].rsplit(':', 1)[1]}",
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.docker.distribution.manifest.v2+json",
            },
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        recorded = json.loads((dest / ".airgap" / "pushed.json").read_text())
        assert recorded["registry"] == f"{reg.host}/team"
        record = recorded["images"][0]
        assert record["digest"] == "sha256:" + hashlib.sha256(body).hexdigest()
        assert json.loads(body)["config"]["digest"] == fleet.built["normal"]
        # Without a token the registry serves nothing.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req.full_url, timeout=10)
        assert refused.value.code == 401
    eng = DockerEngine.connect()
    eng.remove_image(image["tag"])
    eng.close()


def test_data_image_has_one_layer_per_part(pushed: Fleet) -> None:
    eng = DockerEngine.connect()
    info = eng.client.api.inspect_image(pushed.built["data"])
    eng.close()
    # site-packages, prefix (the iris lock has launchers) or not, model: one layer each.
    parts = [p for p in ("site-packages", "prefix", "model") if (pushed.dest / p).is_dir()]
    assert len(info["RootFS"]["Layers"]) == len(parts)


def test_data_init_copy_serves_as_the_mounted_packages(pushed: Fleet, tmp_path: Path) -> None:
    """The Kubernetes init-container variant, played with Docker: the data-init image copies
    into an empty folder (the emptyDir), then the normal image runs with that copy mounted
    read-only where `airgap run` mounts site-packages, and scores."""
    target = tmp_path / "emptydir"
    target.mkdir()
    os.chown(target, 10001, 10001)
    proc = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--read-only",
            "--cap-drop",
            "ALL",
            "-v",
            f"{target}:/airgap-target",
            pushed.built["data-init"],
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    # The copy equals DEST's verified tree, file for file.
    for part in ("site-packages", "model"):
        ours = sorted(
            p.relative_to(pushed.dest).as_posix()
            for p in (pushed.dest / part).rglob("*")
            if p.is_file()
        )
        copied = sorted(
            p.relative_to(target).as_posix() for p in (target / part).rglob("*") if p.is_file()
        )
        assert ours == copied
    sample = next(p for p in (pushed.dest / "site-packages").rglob("*.py"))
    rel = sample.relative_to(pushed.dest)
    assert (target / rel).read_bytes() == sample.read_bytes()
    port = free_port()
    mounts = []
    for part, where in (
        ("site-packages", "/opt/airgap/site-packages"),
        ("prefix", "/opt/airgap/prefix"),
    ):
        if (target / part).is_dir():
            mounts += ["-v", f"{target / part}:{where}:ro"]
    name = f"airgap-test-initcopy-{port}"
    proc = subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--cap-drop",
            "ALL",
            "-p",
            f"127.0.0.1:{port}:5001",
            *mounts,
            pushed.built["normal"],
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    try:
        _wait_http(f"http://127.0.0.1:{port}/")
        assert post_score(f"http://127.0.0.1:{port}/score", IRIS_ROWS) == {
            "predictions": ["setosa", "virginica"]
        }
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


def _wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} never answered 200")


# ---- Kubernetes: generated, then validated offline ----------------------------------------------


def _validate(docs: list[dict[str, Any]], version: str) -> None:
    import kubernetes_validate

    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("packages", ["copy", "volume", "baked"])
def test_deploy_k8s_manifests_validate_for_supported_kubernetes(
    pushed: Fleet, tmp_path: Path, packages: str
) -> None:
    out = tmp_path / "k8s"
    auth = tmp_path / "auth.keys"
    auth.write_text("key1 " + "a" * 64 + "\n")
    proc = _airgap(
        "deploy",
        "k8s",
        str(pushed.dest),
        "-o",
        str(out),
        "--packages",
        packages,
        "--replicas",
        "3",
        "--auth-key-file",
        str(auth),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    docs = [
        yaml.safe_load((out / f).read_text())
        for f in ("deployment.yaml", "service.yaml", "pdb.yaml", "networkpolicy.yaml")
    ]
    for version in KUBERNETES_VERSIONS:
        _validate(docs, version)
    record = {
        i["kind"]: i
        for i in json.loads((pushed.dest / ".airgap/pushed.json").read_text())["images"]
    }
    deployment = docs[0]
    pod = deployment["spec"]["template"]["spec"]
    server = pod["containers"][0]
    serving = record["baked" if packages == "baked" else "normal"]
    assert server["image"] == f"{NAME}@{serving['digest']}"  # pinned; kustomize sets the host
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    assert server["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert server["readinessProbe"]["httpGet"]["path"] == "/"
    assert deployment["spec"]["replicas"] == 3
    assert docs[3]["spec"]["egress"] == [] and "Egress" in docs[3]["spec"]["policyTypes"]
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    if packages == "baked":
        assert "/opt/airgap/site-packages" not in mounts
    else:
        assert mounts["/opt/airgap/site-packages"]["readOnly"] is True
        data = record["data-init" if packages == "copy" else "data"]
        text = (out / "deployment.yaml").read_text()
        assert f"{NAME}-{'data-init' if packages == 'copy' else 'data'}@{data['digest']}" in text
    # The auth keys become a Secret from a file beside the kustomization, never inline.
    assert (out / "secrets" / "auth-keys").read_bytes() == auth.read_bytes()
    assert (out / "secrets" / "auth-keys").stat().st_mode & 0o077 == 0
    assert "a" * 64 not in "".join(p.read_text() for p in out.glob("*.yaml"))
    if shutil.which("kubectl"):
        built = subprocess.run(
            ["kubectl", "kustomize", str(out)], capture_output=True, text=True, timeout=60
        )
        assert built.returncode == 0, built.stderr
        rendered = [d for d in yaml.safe_load_all(built.stdout) if d]
        assert {d["kind"] for d in rendered} == {
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "Secret",
        }
        for version in KUBERNETES_VERSIONS[::3]:
            _validate(rendered, version)
        # The registry prefix comes from the image override, the digest stays.
        assert f"{serving['repository']}@{serving['digest']}" in built.stdout


def _render_helm(chart: dict[str, str], values: dict[str, Any]) -> dict[str, Any]:
    """The few template forms our chart uses, substituted from ``values``: exactly
    ``{{ .Values.a.b }}`` and ``{{- toYaml .Values.a | nindent N }}``. Anything else left in a
    template fails the test (helm itself cannot run here)."""

    def lookup(path: str) -> Any:
        node: Any = values
        for part in path.split("."):
            node = node[part]
        return node

    def to_yaml(m: re.Match[str]) -> str:
        indent = int(m.group(2))
        text = yaml.safe_dump(lookup(m.group(1)), sort_keys=False).rstrip("\n")
        return "".join("\n" + " " * indent + line for line in text.splitlines())

    out = {}
    for name, text in chart.items():
        if not name.startswith("templates/"):
            continue
        text = re.sub(r" ?\{\{- toYaml \.Values\.([\w.]+) \| nindent (\d+) \}\}", to_yaml, text)
        text = re.sub(r"\{\{ \.Values\.([\w.]+) \}\}", lambda m: str(lookup(m.group(1))), text)
        assert "{{" not in text, f"{name} uses a template form this test cannot render"
        out[name.removeprefix("templates/")] = yaml.safe_load(text)
    return out


def test_helm_chart_renders_the_same_objects(tmp_path: Path) -> None:
    spec = KubeSpec(
        name=NAME,
        version="1.0.0",
        revision="0" * 64,
        serving_image="registry.site:5000/models/fleet-iris",
        serving_digest="sha256:" + "1" * 64,
        data_image="registry.site:5000/models/fleet-iris-data-init",
        data_digest="sha256:" + "2" * 64,
        packages="copy",
        replicas=4,
        has_prefix=True,
    )
    chart = render_chart(spec)
    values = yaml.safe_load(chart["values.yaml"])
    rendered = _render_helm(chart, values)
    plain = objects(spec)
    # With the default values, the chart is the plain manifests with full image references.
    dep = plain["deployment.yaml"]
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = (
        f"{spec.serving_image}@{spec.serving_digest}"
    )
    dep["spec"]["template"]["spec"]["initContainers"][0]["image"] = (
        f"{spec.data_image}@{spec.data_digest}"
    )
    assert rendered == plain
    for version in KUBERNETES_VERSIONS:
        _validate(list(rendered.values()), version)
    # A user's values change what they should.
    values["replicaCount"] = 7
    values["resources"]["limits"]["memory"] = "8Gi"
    again = _render_helm(chart, values)["deployment.yaml"]
    assert again["spec"]["replicas"] == 7
    assert (
        again["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "8Gi"
    )


def test_k8s_output_matches_golden_files() -> None:
    spec = KubeSpec(
        name="Golden Model",
        version="2.1.0+cpu",
        revision="a" * 64,
        serving_image="registry.site:5000/models/golden-model",
        serving_digest="sha256:" + "b" * 64,
        data_image="registry.site:5000/models/golden-model-data",
        data_digest="sha256:" + "c" * 64,
        packages="volume",
        replicas=2,
        has_prefix=False,
        auth=True,
        tls=True,
    )
    golden = REPO / "tests" / "golden" / "k8s"
    from bundler.deploy.kube import dump

    files = {n: dump(o) for n, o in objects(spec).items()}
    files.update({f"chart/{n}": t for n, t in render_chart(spec).items()})
    if os.environ.get("AIRGAP_UPDATE_GOLDEN") == "1":
        for n, t in files.items():
            (golden / n).parent.mkdir(parents=True, exist_ok=True)
            (golden / n).write_text(t)
    for n, t in files.items():
        assert (golden / n).read_text() == t, f"{n} differs from tests/golden/k8s/{n}"
    assert sorted(
        p.relative_to(golden).as_posix() for p in golden.rglob("*") if p.is_file()
    ) == sorted(files)


# ---- Docker Swarm, for real -------------------------------------------------------------------

NETWORK = "airgap-test-fleet"


@dataclass
class Swarm:
    fleet: Fleet
    lb_port: int


def _docker(*args: str, check: bool = True, timeout: float = 120) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def swarm(pushed: Fleet) -> Iterator[Swarm]:
    """Swarm mode on the test engine, left again afterwards (even on failure); the service's
    overlay network; and HAProxy in front of it on a loopback port."""
    state = _docker("info", "--format", "{{.Swarm.LocalNodeState}}").strip()
    joined_here = state != "active"
    if joined_here:
        _docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    lb = f"airgap-test-lb-{os.getpid()}"
    cfg = pushed.root / "haproxy.cfg"
    try:
        # The LB image: Debian's haproxy, made by mmdebstrap like the base image (no registry).
        subprocess.run(
            ["sh", str(REPO / ".ci" / "base-image.sh")],
            env={**os.environ, "BASE_IMAGE": HAPROXY_IMAGE, "BASE_PACKAGES": "haproxy"},
            check=True,
            capture_output=True,
            timeout=900,
        )
        cfg.write_text(haproxy_config(f"server-template replica 10 tasks.{NAME}:5001"))
        os.chmod(cfg, 0o644)
        _docker("network", "create", "-d", "overlay", "--attachable", NETWORK, check=False)
        port = free_port()
        _docker("run", "-d", "--name", lb, *haproxy_run_args(NETWORK, port, cfg))
        yield Swarm(pushed, port)
    finally:
        _docker("rm", "-f", lb, check=False)
        _docker("service", "rm", NAME, check=False)
        if joined_here:
            _docker("swarm", "leave", "--force", check=False, timeout=120)
        else:
            _docker("network", "rm", NETWORK, check=False)


class Load:
    """Clients sending POST /score through the balancer until stopped; each request on a new
    connection, so they spread over the replicas."""

    def __init__(self, port: int, clients: int = 4) -> None:
        self.port, self.ok, self.failed = port, 0, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        body = json.dumps({"data": IRIS_ROWS})
        while not self._stop.is_set():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("POST", "/score", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                good = resp.status == 200 and json.loads(data)["predictions"] == [
                    "setosa",
                    "virginica",
                ]
                outcome = None if good else f"{resp.status} {data[:80]!r}"
            except (OSError, http.client.HTTPException, ValueError) as e:
                outcome = repr(e)[:100]
            with self._lock:
                if outcome is None:
                    self.ok += 1
                else:
                    self.failed.append(outcome)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def _status(dest: Path) -> dict[str, Any]:
    proc = _airgap("status", str(dest), "--json")
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def _pinned(dest: Path, kind: str) -> str:
    for image in json.loads((dest / ".airgap" / "pushed.json").read_text())["images"]:
        if image["kind"] == kind:
            return f"{image['repository']}@{image['digest']}"
    raise AssertionError(kind)


@pytest.mark.swarm
def test_swarm_deploy_rollout_kill_and_undeploy(swarm: Swarm) -> None:
    fleet = swarm.fleet
    proc = _airgap(
        "deploy",
        "swarm",
        str(fleet.dest),
        "--replicas",
        "3",
        "--endpoint-mode",
        "dnsrr",
        "--network",
        NETWORK,
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    st = json.loads(proc.stdout)
    assert st["ready"] == 3 and st["image"] == _pinned(fleet.dest, "baked")
    _wait_http(f"http://127.0.0.1:{swarm.lb_port}/", timeout=60)
    assert post_score(f"http://127.0.0.1:{swarm.lb_port}/score", IRIS_ROWS) == {
        "predictions": ["setosa", "virginica"]
    }
    # A second deploy of the same service is refused, pointing at --update.
    again = _airgap("deploy", "swarm", str(fleet.dest))
    assert again.returncode == 1 and "--update" in again.stderr

    # The bundle's signed smoke test, through the balancer's published port.
    lb_url = f"http://127.0.0.1:{swarm.lb_port}"
    proc = _airgap("smoke", str(fleet.dest), "--url", lb_url, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    smoke = json.loads(proc.stdout)["smoke"]
    assert smoke["ok"] and smoke["status"] == 200 and smoke["url"] == f"{lb_url}/score"
    # deploy swarm --smoke: sent once the service converged (here an update to the same
    # bundle, which moves nothing); a wrong answer (404 under a path the server does not
    # have) exits 4 with one line, and the service keeps running.
    proc = _airgap("deploy", "swarm", str(fleet.dest), "--update", "--smoke", lb_url, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["ok"] and out["smoke"]["ok"] and out["ready"] == 3
    proc = _airgap("deploy", "swarm", str(fleet.dest), "--update", "--smoke", f"{lb_url}/nothere")
    assert proc.returncode == 4, proc.stderr[-3000:]
    failed = [line for line in proc.stderr.splitlines() if line.startswith("smoke test")]
    assert len(failed) == 1 and failed[0].startswith("smoke test failed:")
    assert "/nothere/score -> 404" in failed[0]
    assert post_score(f"{lb_url}/score", IRIS_ROWS) == {"predictions": ["setosa", "virginica"]}

    # Roll out 1.0.1 while clients keep scoring: no request may fail.
    with Load(swarm.lb_port) as load:
        time.sleep(2)
        start = time.monotonic()
        proc = _airgap("deploy", "swarm", str(fleet.dest2), "--update", "--json")
        rollout = time.monotonic() - start
        time.sleep(2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    st = json.loads(proc.stdout)
    new = _pinned(fleet.dest2, "baked")
    assert st["image"] == new and st["ready"] == 3
    assert all(t["image"] == new and t["health"] == "healthy" for t in st["tasks"])
    print(f"rollout of 3 replicas: {rollout:.1f}s, {load.ok} requests, {len(load.failed)} failed")
    assert load.ok > 50
    assert load.failed == []

    # Kill one replica's container: Swarm replaces it; only in-flight requests may fail.
    containers = _docker(
        "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={NAME}"
    ).split()
    assert len(containers) == 3
    with Load(swarm.lb_port) as load:
        time.sleep(1)
        _docker("kill", containers[0])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            st = _status(fleet.dest2)
            if st["ready"] == 3 and not any(t["image"] != new for t in st["tasks"]):
                running = _docker(
                    "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={NAME}"
                ).split()
                if containers[0] not in running and len(running) == 3:
                    break
            time.sleep(0.5)
        else:
            raise AssertionError(f"Swarm did not restore the killed replica: {st}")
        time.sleep(1)
    assert len(load.failed) <= 4, load.failed  # at most one in flight per client
    assert load.ok > 20

    proc = _airgap("undeploy", str(fleet.dest2))
    assert proc.returncode == 0, proc.stderr
    assert _airgap("status", str(fleet.dest2)).returncode == 1


@pytest.mark.swarm
def test_swarm_runs_the_pinned_digest_not_a_moved_tag(swarm: Swarm) -> None:
    """Someone pushes another image under the same tag behind our back: the deployment still
    runs the digest `airgap push` verified, and the manifests name that digest."""
    fleet = swarm.fleet
    record = json.loads((fleet.dest / ".airgap" / "pushed.json").read_text())
    baked = next(i for i in record["images"] if i["kind"] == "baked")
    tag = f"{baked['repository']}:{baked['tag']}"
    # The attacker's image: the data-init image, re-tagged as the baked one and pushed.
    _docker("tag", fleet.built["data-init"], tag)
    _docker("push", tag, timeout=300)
    moved, manifest = _get_manifest(
        fleet.registry.host, baked["repository"].split("/", 1)[1], baked["tag"]
    )
    assert moved != baked["digest"] and manifest["config"]["digest"] == fleet.built["data-init"]
    try:
        proc = _airgap(
            "deploy",
            "swarm",
            str(fleet.dest),
            "--replicas",
            "1",
            "--endpoint-mode",
            "dnsrr",
            "--network",
            NETWORK,
            "--json",
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        st = json.loads(proc.stdout)
        assert st["image"] == f"{baked['repository']}@{baked['digest']}"
        service = json.loads(_docker("service", "inspect", NAME))[0]
        image = service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        assert image.endswith("@" + baked["digest"]) and moved not in image
    finally:
        _docker("service", "rm", NAME, check=False)
        # Put the real image back under its tag for the other tests.
        _docker("tag", fleet.built["baked"], tag)
        _docker("push", tag, timeout=300)


@pytest.mark.swarm
def test_swarm_routing_mesh_spec_and_missing_swarm(swarm: Swarm) -> None:
    """The default (vip) publishes the port through the routing mesh: checked in the spec
    (this kernel has no IPVS to carry the traffic)."""
    fleet = swarm.fleet
    port = free_port()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bundler",
            "deploy",
            "swarm",
            str(fleet.dest),
            "--replicas",
            "1",
            "--port",
            str(port),
            "--cpus",
            "0.5",
            "--timeout",
            "120",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        assert proc.returncode == 0, proc.stderr[-2000:]
        service = json.loads(_docker("service", "inspect", NAME))[0]
        ports = service["Endpoint"]["Spec"]["Ports"]
        assert ports == [
            {"Protocol": "tcp", "TargetPort": 5001, "PublishedPort": port, "PublishMode": "ingress"}
        ]
        update = service["Spec"]["UpdateConfig"]
        assert update["Order"] == "start-first" and update["FailureAction"] == "rollback"
        health = service["Spec"]["TaskTemplate"]["ContainerSpec"]["Healthcheck"]
        assert health["Test"][0] == "CMD"
        # --cpus: each replica's limit, as docker's --cpus (NanoCPUs).
        assert service["Spec"]["TaskTemplate"]["Resources"]["Limits"] == {"NanoCPUs": 500_000_000}
    finally:
        _docker("service", "rm", NAME, check=False)
