"""`airgap deploy k8s`: Kubernetes manifests, a kustomization and a Helm chart.

Rendering is pure; only :func:`write_kubernetes` at the end reads DEST and writes files.

One model (:class:`KubeSpec`, from the verified manifest and the push record) renders both the
plain manifests and the chart, so they cannot drift apart. Images are pinned by the digests
`airgap push` verified in the registry; a tag in the registry can be moved, a digest cannot.

Package variants (the mounted-packages contract at fleet scale):

- ``copy`` (default): an init container from the data-init image copies site-packages,
  prefix and model into an ``emptyDir``, mounted read-only into the server. Works on every
  cluster.
- ``volume``: the data-only image (``FROM scratch``) mounted read-only as a Kubernetes image
  volume (``volumes[].image``; beta since Kubernetes 1.33, needs the ImageVolume feature).
- ``baked``: the baked image, packages inside; no data image.

In every variant the runtime sees the same AZUREML_EXTRA_PYTHON_LIB_PATH as in Docker.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from ..errors import BundleError, UsageError
from ..layout import (
    IMAGE_PREFIX_MOUNT,
    IMAGE_SITE_MOUNT,
    MODEL_DIR,
    PREFIX_DIR,
    SCORING_PORT,
    SITE_DIR,
)
from ..verify.tree import check_unpacked
from .authkeys import CONTAINER_KEY_PATH
from .dockerfile import DATA_INIT_SOURCE, DATA_INIT_TARGET, image_path
from .records import find, read_pushed

PackagesVariant = Literal["copy", "volume", "baked"]
PACKAGE_VARIANTS: Final = ("copy", "volume", "baked")
# Kubernetes versions the manifests are validated against (the ones still supported).
KUBERNETES_VERSIONS: Final = ("1.34.0", "1.35.0", "1.36.0", "1.37.0")
TLS_DIR: Final = "/opt/airgap/tls"
_DNS_LABEL: Final = re.compile(r"[^a-z0-9-]+")
IMAGE_UID: Final = 10001


def dns_label(name: str) -> str:
    """A DNS-1123 label from a bundle name (the objects' and the Swarm service's name)."""
    return _DNS_LABEL.sub("-", name.lower()).strip("-")[:50] or "airgap-model"


@dataclass(frozen=True)
class KubeSpec:
    """Everything the manifests say; built from DEST's verified manifest and push record."""

    name: str  # bundle name
    version: str
    revision: str  # payload sha256
    serving_image: str  # repository (no tag), e.g. 127.0.0.1:5000/models/iris
    serving_digest: str
    data_image: str | None = None  # the data (volume) or data-init (copy) repository
    data_digest: str | None = None
    packages: PackagesVariant = "copy"
    has_site: bool = True
    has_prefix: bool = False
    replicas: int = 2
    cpu_request: str = "500m"
    memory_request: str = "512Mi"
    cpu_limit: str | None = None
    memory_limit: str = "2Gi"
    namespace: str | None = None
    auth: bool = False  # an auth keys Secret is mounted
    tls: bool = False  # a TLS Secret is mounted
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def app(self) -> str:
        """A DNS-1123 label from the bundle name: the objects' name and their app label."""
        return dns_label(self.name)

    @property
    def image_name(self) -> str:
        """The image's name in the manifests before kustomize's override: the last path part."""
        return self.serving_image.rsplit("/", 1)[-1]

    @property
    def data_image_name(self) -> str | None:
        return self.data_image.rsplit("/", 1)[-1] if self.data_image else None


def _labels(spec: KubeSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": spec.app,
        "app.kubernetes.io/version": _label_value(spec.version),
        "app.kubernetes.io/managed-by": "airgap-bundler",
    }


def _label_value(text: str) -> str:
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63].strip("._-")
    return value or "unknown"


def _selector(spec: KubeSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": spec.app}


def _meta(spec: KubeSpec, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": _labels(spec)}
    if spec.namespace:
        meta["namespace"] = spec.namespace
    return meta


def _security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": IMAGE_UID,
        "runAsGroup": IMAGE_UID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _probe(spec: KubeSpec, *, period: int, failures: int, initial: int) -> dict[str, Any]:
    scheme = "HTTPS" if spec.tls else "HTTP"
    return {
        "httpGet": {"path": "/", "port": "http", "scheme": scheme},
        "initialDelaySeconds": initial,
        "periodSeconds": period,
        "timeoutSeconds": 4,
        "failureThreshold": failures,
    }


def _env(spec: KubeSpec) -> list[dict[str, str]]:
    env = dict(spec.env)
    if spec.packages != "baked" and not spec.has_site:
        env["AZUREML_EXTRA_PYTHON_LIB_PATH"] = ""
    if spec.auth:
        env["AIRGAP_AUTH_KEY_FILE"] = CONTAINER_KEY_PATH
    if spec.tls:
        env["AIRGAP_TLS_CERT"] = f"{TLS_DIR}/tls.crt"
        env["AIRGAP_TLS_KEY"] = f"{TLS_DIR}/tls.key"
    return [{"name": k, "value": v} for k, v in sorted(env.items())]


def _data_mounts(spec: KubeSpec) -> list[dict[str, Any]]:
    """Where the data parts go in the server: the same paths `airgap run` mounts."""
    if spec.packages == "baked":
        return []
    parts = [(SITE_DIR, IMAGE_SITE_MOUNT)] if spec.has_site else []
    if spec.has_prefix:
        parts.append((PREFIX_DIR, IMAGE_PREFIX_MOUNT))
    parts.append((MODEL_DIR, image_path(MODEL_DIR)))
    return [
        {"name": "airgap-data", "mountPath": target, "subPath": part, "readOnly": True}
        for part, target in parts
    ]


def deployment(spec: KubeSpec) -> dict[str, Any]:
    """The Deployment: digest-pinned images, probes, resources, locked-down containers."""
    resources: dict[str, Any] = {
        "requests": {"cpu": spec.cpu_request, "memory": spec.memory_request},
        "limits": {"memory": spec.memory_limit},
    }
    if spec.cpu_limit:
        resources["limits"]["cpu"] = spec.cpu_limit
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]  # noqa: S108
    mounts += _data_mounts(spec)
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"medium": "Memory"}}]
    init: list[dict[str, Any]] = []
    if spec.packages == "volume":
        volumes.append(
            {
                "name": "airgap-data",
                "image": {
                    "reference": f"{spec.data_image_name}@{spec.data_digest}",
                    "pullPolicy": "IfNotPresent",
                },
            }
        )
    elif spec.packages == "copy":
        volumes.append({"name": "airgap-data", "emptyDir": {}})
        init.append(
            {
                "name": "copy-packages",
                "image": f"{spec.data_image_name}@{spec.data_digest}",
                "imagePullPolicy": "IfNotPresent",
                "command": ["cp", "-R", f"{DATA_INIT_SOURCE}/.", f"{DATA_INIT_TARGET}/"],
                "volumeMounts": [{"name": "airgap-data", "mountPath": DATA_INIT_TARGET}],
                "securityContext": _security(),
                "resources": {
                    "requests": {"cpu": "100m", "memory": "64Mi"},
                    "limits": {"memory": "256Mi"},
                },
            }
        )
    if spec.auth:
        volumes.append(
            {
                "name": "auth-keys",
                "secret": {"secretName": f"{spec.app}-auth", "defaultMode": 0o440},
            }
        )
        mounts.append(
            {
                "name": "auth-keys",
                "mountPath": CONTAINER_KEY_PATH,
                "subPath": "auth-keys",
                "readOnly": True,
            }
        )
    if spec.tls:
        volumes.append(
            {"name": "tls", "secret": {"secretName": f"{spec.app}-tls", "defaultMode": 0o440}}
        )
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    container = {
        "name": "server",
        "image": f"{spec.image_name}@{spec.serving_digest}",
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": SCORING_PORT, "protocol": "TCP"}],
        "env": _env(spec),
        "readinessProbe": _probe(spec, period=5, failures=3, initial=2),
        "livenessProbe": _probe(spec, period=20, failures=3, initial=10),
        "startupProbe": _probe(spec, period=5, failures=60, initial=0),
        "resources": resources,
        "securityContext": _security(),
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_UID,
            "runAsGroup": IMAGE_UID,
            "fsGroup": IMAGE_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": 30,
        "containers": [container],
        "volumes": volumes,
    }
    if init:
        pod_spec["initContainers"] = init
    annotations = {"airgap-bundler/revision": spec.revision}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(spec, spec.app),
        "spec": {
            "replicas": spec.replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": _selector(spec)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": _labels(spec), "annotations": annotations},
                "spec": pod_spec,
            },
        },
    }


def service(spec: KubeSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(spec, spec.app),
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(spec),
            "ports": [
                {
                    "name": "http",
                    "port": 80 if not spec.tls else 443,
                    "targetPort": "http",
                    "protocol": "TCP",
                }
            ],
        },
    }


def disruption_budget(spec: KubeSpec) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(spec, spec.app),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(spec)}},
    }


def network_policy(spec: KubeSpec) -> dict[str, Any]:
    """Default-deny egress (a model server calls nobody; DNS is not needed either), ingress
    only on the scoring port."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(spec, f"{spec.app}-deny-egress"),
        "spec": {
            "podSelector": {"matchLabels": _selector(spec)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [{"port": SCORING_PORT, "protocol": "TCP"}]}],
            "egress": [],
        },
    }


def objects(spec: KubeSpec) -> dict[str, dict[str, Any]]:
    """Every object, by file name."""
    return {
        "deployment.yaml": deployment(spec),
        "service.yaml": service(spec),
        "pdb.yaml": disruption_budget(spec),
        "networkpolicy.yaml": network_policy(spec),
    }


def dump(obj: Any) -> str:
    """Block-style YAML, keys in our order; the same text on every run."""
    return str(yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=1000))


def kustomization(spec: KubeSpec, *, secret_files: Mapping[str, list[str]]) -> dict[str, Any]:
    """The kustomization: our objects, the registry prefix as an image override (the digest
    stays), and Secrets generated from the files beside it."""
    images = [
        {"name": spec.image_name, "newName": spec.serving_image, "digest": spec.serving_digest}
    ]
    if spec.data_image and spec.data_image_name and spec.data_digest:
        images.append(
            {"name": spec.data_image_name, "newName": spec.data_image, "digest": spec.data_digest}
        )
    doc: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": list(objects(spec)),
        "images": images,
    }
    if spec.packages == "volume":
        # kustomize's image transformer knows containers, not image volumes: teach it.
        doc["configurations"] = ["kustomizeconfig.yaml"]
    if spec.namespace:
        doc["namespace"] = spec.namespace
    if secret_files:
        doc["generatorOptions"] = {"disableNameSuffixHash": True}
        doc["secretGenerator"] = [
            {"name": name, "files": files, "type": "Opaque"}
            for name, files in sorted(secret_files.items())
        ]
    return doc


KUSTOMIZE_CONFIG: Final = dump(
    {"images": [{"path": "spec/template/spec/volumes/image/reference", "kind": "Deployment"}]}
)


# ---- the Helm chart ---------------------------------------------------------------------------

# Values a chart user sets, with the placeholder each takes in the rendered model.
_PLACEHOLDER: Final = "__AIRGAP_VALUE_{}__"


def _chart_values(spec: KubeSpec) -> dict[str, Any]:
    values: dict[str, Any] = {
        "replicaCount": spec.replicas,
        "image": {"repository": spec.serving_image, "digest": spec.serving_digest},
        "resources": deployment(spec)["spec"]["template"]["spec"]["containers"][0]["resources"],
    }
    if spec.data_image:
        values["dataImage"] = {"repository": spec.data_image, "digest": spec.data_digest}
    return values


def render_chart(spec: KubeSpec) -> dict[str, str]:
    """A Helm chart (Chart.yaml, values.yaml, templates/) from the same objects.

    The templates are the rendered objects with the chart's values put back as template
    expressions: ``{{ .Values.replicaCount }}``, the image repositories and digests, and
    ``{{- toYaml .Values.resources | nindent N }}``. Nothing else is templated.
    """
    chart_version = "0.1.0"
    chart = {
        "apiVersion": "v2",
        "name": spec.app,
        "description": f"{spec.name} {spec.version}, served by airgap-bundler",
        "type": "application",
        "version": chart_version,
        "appVersion": spec.version,
    }
    files = {"Chart.yaml": dump(chart), "values.yaml": dump(_chart_values(spec))}
    image_expr = "{{ .Values.image.repository }}@{{ .Values.image.digest }}"
    data_expr = "{{ .Values.dataImage.repository }}@{{ .Values.dataImage.digest }}"
    for fname, obj in objects(spec).items():
        text = dump(obj)
        if obj["kind"] == "Deployment":
            text = text.replace(
                f"replicas: {spec.replicas}\n", "replicas: {{ .Values.replicaCount }}\n", 1
            )
            text = text.replace(f"{spec.image_name}@{spec.serving_digest}", image_expr)
            if spec.data_image_name:
                text = text.replace(f"{spec.data_image_name}@{spec.data_digest}", data_expr)
            text = _template_resources(text, spec)
        files[f"templates/{fname}"] = text
    return files


def _template_resources(text: str, spec: KubeSpec) -> str:
    """Replace the server container's resources block with toYaml of the values."""
    block = dump({"resources": _chart_values(spec)["resources"]})
    lines = block.splitlines()
    out_lines = text.splitlines()
    for i, line in enumerate(out_lines):
        stripped = line.lstrip()
        if stripped == "resources:":
            indent = len(line) - len(stripped)
            body = [" " * indent + ln for ln in lines[1:]]
            # Only the server's block (the init container's differs): match it exactly.
            if out_lines[i + 1 : i + 1 + len(body)] == [" " * indent + ln for ln in lines[1:]]:
                repl = (
                    " " * indent
                    + "resources:"
                    + (f" {{{{- toYaml .Values.resources | nindent {indent + 2} }}}}")
                )
                return "\n".join([*out_lines[:i], repl, *out_lines[i + 1 + len(body) :]]) + "\n"
    return text


# ---- writing the folder (the only I/O here) ---------------------------------------------------


@dataclass(frozen=True)
class KubeOutput:
    """What `airgap deploy k8s` wrote."""

    out: str
    files: tuple[str, ...]
    spec: KubeSpec


def write_kubernetes(
    dest: Path,
    out: Path,
    *,
    packages: PackagesVariant = "copy",
    replicas: int = 2,
    namespace: str | None = None,
    cpu_request: str = "500m",
    memory_request: str = "512Mi",
    memory_limit: str = "2Gi",
    auth_key_file: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    trust: Sequence[Path] | None = None,
) -> KubeOutput:
    """Write manifests, kustomization and Helm chart for the bundle at DEST into ``out``.

    The images are the ones `airgap push` verified (DEST/.airgap/pushed.json); secrets are
    copied beside the kustomization (mode 0600) for its secretGenerator, never into a
    manifest.

    Raises:
        SignatureError (exit 3): DEST's stored manifest does not verify.
        BundleError: nothing pushed for this revision, the variant's image was not pushed,
            or ``out`` exists and is not a folder this command wrote.
    """
    dest = Path(os.path.abspath(dest))
    manifest = check_unpacked(dest, trust=trust, roots=())
    pushed = read_pushed(dest, manifest.payload.sha256)
    serving_kind = "baked" if packages == "baked" else "normal"
    data_kind = {"copy": "data-init", "volume": "data"}.get(packages)
    serving = find(pushed, serving_kind)
    if serving is None:
        flag = " --variant baked" if serving_kind == "baked" else ""
        raise BundleError(
            f"the {serving_kind} image of this bundle was not pushed",
            remedy=f"airgap build DEST{flag} --fleet, then airgap push DEST --registry ...",
        )
    data = find(pushed, data_kind) if data_kind else None
    if data_kind and data is None:
        raise BundleError(
            f"the {data_kind} image of this bundle was not pushed (--packages {packages})",
            remedy="airgap build DEST --fleet, then airgap push DEST --registry ...",
        )
    if (tls_cert is None) != (tls_key is None):
        raise UsageError(
            "TLS needs both a certificate and its key", remedy="pass --tls-cert and --tls-key"
        )
    spec = KubeSpec(
        name=manifest.name,
        version=manifest.version,
        revision=manifest.payload.sha256,
        serving_image=serving.repository,
        serving_digest=serving.digest,
        data_image=data.repository if data else None,
        data_digest=data.digest if data else None,
        packages=packages,
        has_site=any(f.path.startswith(SITE_DIR + "/") for f in manifest.files),
        has_prefix=any(f.path.startswith(PREFIX_DIR + "/") for f in manifest.files),
        replicas=replicas,
        cpu_request=cpu_request,
        memory_request=memory_request,
        memory_limit=memory_limit,
        namespace=namespace,
        auth=auth_key_file is not None,
        tls=tls_cert is not None,
    )
    secrets: dict[str, list[str]] = {}
    copies: dict[str, bytes] = {}
    if auth_key_file is not None:
        secrets[f"{spec.app}-auth"] = ["auth-keys=secrets/auth-keys"]
        copies["secrets/auth-keys"] = _read_secret(auth_key_file)
    if tls_cert is not None and tls_key is not None:
        secrets[f"{spec.app}-tls"] = ["tls.crt=secrets/tls.crt", "tls.key=secrets/tls.key"]
        copies["secrets/tls.crt"] = _read_secret(tls_cert)
        copies["secrets/tls.key"] = _read_secret(tls_key)
    files: dict[str, str | bytes] = {n: dump(o) for n, o in objects(spec).items()}
    files["kustomization.yaml"] = dump(kustomization(spec, secret_files=secrets))
    if packages == "volume":
        files["kustomizeconfig.yaml"] = KUSTOMIZE_CONFIG
    for name, text in render_chart(spec).items():
        files[f"chart/{name}"] = text
    files.update(copies)
    _write_tree(out, files)
    return KubeOutput(str(out), tuple(sorted(files)), spec)


_MARKER: Final = ".airgap-deploy-k8s"


def _read_secret(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from e


def _write_tree(out: Path, files: Mapping[str, str | bytes]) -> None:
    """Replace ``out`` with exactly ``files`` (a folder this command made, or a new one)."""
    out = Path(os.path.abspath(out))
    if out.exists() and (
        not out.is_dir() or (any(out.iterdir()) and not (out / _MARKER).is_file())
    ):
        raise BundleError(
            f"{out} exists and was not written by `airgap deploy k8s`",
            remedy="choose a new or empty folder",
        )
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for rel, content in sorted(files.items()):
            path = stage / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            data = content.encode() if isinstance(content, str) else content
            path.write_bytes(data)
            os.chmod(path, 0o600 if rel.startswith("secrets/") else 0o644)
        (stage / _MARKER).write_bytes(b"written by airgap deploy k8s; safe to replace\n")
        os.chmod(stage, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.rename(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
