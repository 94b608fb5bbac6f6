"""`airgap push`: send the built images to an in-network OCI registry and prove what landed.

The engine pushes (it holds the layers); then this module asks the registry itself, over the
distribution API, for the manifest it now serves under the tag, and checks that

- its bytes hash to the digest the engine reported (``Docker-Content-Digest`` agrees), and
- its config digest is the image ID `airgap build` recorded in DEST/.airgap/images.json,

so the digest written to DEST/.airgap/pushed.json (and pinned by every manifest `airgap
deploy` writes) names exactly the image built from the verified bundle. Credentials come from
a file or the Docker configuration, never from the command line.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..errors import BundleError, RegistryError, UsageError
from ..verify.tree import check_unpacked
from .engine import DockerEngine
from .records import KINDS, PushedRecord, read_built, write_pushed

_HOST: Final = re.compile(
    r"^(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?$"
)
_PATH: Final = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_MANIFEST_TYPES: Final = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    ]
)
_MAX_MANIFEST: Final = 4 * 1024 * 1024  # an image manifest is a few KB; refuse anything huge
_TIMEOUT: Final = 30.0
LineSink = Callable[[str], None]


@dataclass(frozen=True)
class RegistryRef:
    """``HOST[:PORT][/PREFIX]`` as given to --registry."""

    host: str  # host or host:port, as Docker names it (and as /etc/docker/certs.d does)
    prefix: str  # "" or "team/models"

    def repository(self, name: str) -> str:
        """The registry repository for an image named ``name`` (no tag)."""
        return "/".join(p for p in (self.host, self.prefix, name) if p)

    @property
    def is_loopback(self) -> bool:
        hostname = self.host.rsplit(":", 1)[0] if "]" not in self.host else self.host
        hostname = hostname.strip("[]")
        if hostname == "localhost":
            return True
        try:
            return ipaddress.ip_address(hostname).is_loopback
        except ValueError:
            return False


def parse_registry(text: str) -> RegistryRef:
    """Parse --registry.

    Raises:
        UsageError: not ``HOST[:PORT][/PREFIX]`` with a lowercase path.
    """
    host, _, prefix = text.strip().partition("/")
    m = _HOST.fullmatch(host)
    if not m or (m.group("port") and not 0 < int(m.group("port")) < 65536):
        raise UsageError(
            f"--registry {text!r} is not HOST[:PORT][/PREFIX]",
            remedy="for example --registry registry.site.internal:5000/models",
        )
    parts = [p for p in prefix.split("/") if p] if prefix else []
    bad = [p for p in parts if not _PATH.fullmatch(p)]
    if bad:
        raise UsageError(
            f"--registry path component {bad[0]!r} is not a valid repository name",
            remedy="use lowercase letters, digits and . _ - separators",
        )
    return RegistryRef(host=host, prefix="/".join(parts))


# ---- credentials ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or token) for one registry."""

    username: str
    password: str

    def engine_auth(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password}


def _docker_config_path() -> Path:
    root = os.environ.get("DOCKER_CONFIG")
    return Path(root) / "config.json" if root else Path.home() / ".docker" / "config.json"


def load_credentials(registry: RegistryRef, credentials_file: Path | None) -> Credentials | None:
    """The credentials for ``registry``: from ``credentials_file`` when given (JSON
    ``{"username": ..., "password": ...}`` or a Docker config.json), else from the Docker
    configuration ($DOCKER_CONFIG/config.json or ~/.docker/config.json), else None.

    Raises:
        UsageError: the file cannot be read or has no usable entry for the registry.
    """
    path = credentials_file or _docker_config_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if credentials_file is not None:
            raise UsageError(f"--credentials file {path} does not exist") from None
        return None
    except OSError as e:
        raise UsageError(f"cannot read credentials file {path}: {e.strerror}") from e
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"credentials file {path} is not JSON") from e
    if not isinstance(doc, dict):
        raise UsageError(f"credentials file {path} is not a JSON object")
    if isinstance(doc.get("username"), str) and isinstance(doc.get("password"), str):
        return Credentials(doc["username"], doc["password"])
    auths = doc.get("auths")
    entry = auths.get(registry.host) if isinstance(auths, dict) else None
    if isinstance(entry, dict) and isinstance(entry.get("auth"), str):
        try:
            user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError) as e:
            raise UsageError(f"{path}: the auth entry for {registry.host} is not base64") from e
        if sep:
            return Credentials(user, password)
    if credentials_file is not None:
        raise UsageError(
            f"credentials file {path} has no entry for {registry.host}",
            remedy='write {"username": "...", "password": "..."} or a Docker config.json',
        )
    return None


# ---- the distribution API -------------------------------------------------------------------


class RegistryClient:
    """GET manifests from a registry (v2 API), with Basic auth or a Bearer token challenge."""

    def __init__(
        self,
        registry: RegistryRef,
        credentials: Credentials | None,
        *,
        ca_file: Path | None = None,
        plain_http: bool = False,
    ) -> None:
        self.registry = registry
        self._creds = credentials
        self._scheme = "http" if plain_http else "https"
        if ca_file is None:
            # Where the Docker engine itself looks, so one CA file serves both.
            candidate = Path("/etc/docker/certs.d") / registry.host / "ca.crt"
            ca_file = candidate if candidate.is_file() else None
        self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self._token: str | None = None

    def _request(self, url: str, headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(url, headers=dict(headers))  # noqa: S310 - http(s) only
        try:
            with urllib.request.urlopen(req, timeout=_TIMEOUT, context=self._ssl) as resp:  # noqa: S310
                body = resp.read(_MAX_MANIFEST + 1)
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, body
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read(64 * 1024)
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RegistryError(
                f"cannot reach the registry at {url}: {reason}",
                remedy="check --registry, that the registry runs, and its TLS certificate "
                "(--ca-cert, or /etc/docker/certs.d/HOST:PORT/ca.crt); --plain-http for a "
                "loopback registry without TLS",
            ) from e

    def _auth_header(self) -> dict[str, str]:
        if self._token:
            return {"Authorization": f"Bearer {self._token}"}
        if self._creds:
            pair = f"{self._creds.username}:{self._creds.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        return {}

    def _bearer(self, challenge: str) -> None:
        """Fetch a token as the challenge asks (the distribution token protocol)."""
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise RegistryError(f"the registry's token realm {realm!r} is not an http(s) URL")
        # Only what the token protocol defines is passed on (a challenge also carries
        # error="insufficient_scope" when a token of another repository was sent); the realm
        # may hold a query of its own.
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        headers = {}
        if self._creds:
            pair = f"{self._creds.username}:{self._creds.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        status, _, body = self._request(url, headers)
        if status in (401, 403):
            raise RegistryError(
                f"the registry's token service at {realm} refused "
                + (
                    f"the credentials of {self._creds.username!r}"
                    if self._creds
                    else "anonymous access"
                )
                + f" ({status}) for {query.get('scope', 'this registry')}",
                remedy="pass --credentials FILE or log in with `docker login` on this host",
            )
        if status != 200:
            raise RegistryError(
                f"the registry's token service at {realm} answered {status}",
                remedy="check that the token service runs and knows this registry",
            )
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError) as e:
            raise RegistryError("the registry's token service answered no JSON token") from e
        if not isinstance(token, str):
            raise RegistryError("the registry's token service answered no token")
        self._token = token

    def check_login(self, repository_path: str) -> None:
        """Ask the registry (``GET /v2/``) whether our credentials are good, before the engine
        pushes: the engine's own refusal says only "unauthorized". With token auth, fetch a
        token for ``repository:PATH:pull,push`` now, so a refusal names the token service.

        Raises:
            RegistryError: the registry or its token service refused the credentials.
        """
        url = f"{self._scheme}://{self.registry.host}/v2/"
        status, headers, _ = self._request(url, self._auth_header())
        challenge = headers.get("www-authenticate", "")
        if status == 401 and challenge.lower().startswith("bearer"):
            # The challenge of /v2/ names no scope: ask for what the push needs.
            self._bearer(f'{challenge},scope="repository:{repository_path}:pull,push"')
            return
        if status == 401:
            what = (
                f"refused the credentials of {self._creds.username!r}"
                if self._creds
                else "asks for credentials, and none were found"
            )
            raise RegistryError(
                f"the registry at {self.registry.host} {what}",
                remedy="pass --credentials FILE or log in with `docker login` on this host",
            )
        if status != 200:
            raise RegistryError(f"the registry at {self.registry.host} answered {status} to /v2/")

    def manifest(self, repository_path: str, reference: str) -> tuple[str, bytes, dict[str, Any]]:
        """The manifest under ``reference`` (tag or digest): (its sha256 digest, its bytes,
        parsed).

        Raises:
            RegistryError: not found, refused, or not a single-image manifest.
        """
        url = f"{self._scheme}://{self.registry.host}/v2/{repository_path}/manifests/{reference}"
        headers = {"Accept": _MANIFEST_TYPES}
        status, resp_headers, body = self._request(url, {**headers, **self._auth_header()})
        challenge = resp_headers.get("www-authenticate", "")
        if status == 401 and challenge.lower().startswith("bearer"):
            self._bearer(challenge)
            status, resp_headers, body = self._request(url, {**headers, **self._auth_header()})
        if status == 401:
            raise RegistryError(
                f"the registry refused our credentials for {repository_path}",
                remedy="pass --credentials FILE or log in with `docker login` on this host",
            )
        if status != 200:
            raise RegistryError(f"the registry answered {status} for {repository_path}:{reference}")
        if len(body) > _MAX_MANIFEST:
            raise RegistryError(f"the manifest of {repository_path}:{reference} is too large")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        claimed = resp_headers.get("docker-content-digest")
        if claimed is not None and claimed != digest:
            raise RegistryError(
                f"the registry claims digest {claimed} for {repository_path}:{reference}, but "
                f"its bytes hash to {digest}"
            )
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise RegistryError(f"the manifest of {repository_path}:{reference} is not JSON") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
            raise RegistryError(
                f"{repository_path}:{reference} is not a single-image manifest (an index?)"
            )
        return digest, body, doc


# ---- push -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushResult:
    """What `airgap push` pushed and verified."""

    name: str
    version: str
    registry: str
    images: tuple[PushedRecord, ...]


def _repository_path(registry: RegistryRef, repository: str) -> str:
    return repository[len(registry.host) + 1 :]


def push(
    dest: Path,
    registry: RegistryRef,
    *,
    credentials_file: Path | None = None,
    ca_file: Path | None = None,
    plain_http: bool = False,
    kinds: Sequence[str] | None = None,
    trust: Sequence[Path] | None = None,
    engine: DockerEngine | None = None,
    on_line: LineSink | None = None,
) -> PushResult:
    """Push the images `airgap build` recorded for DEST and verify the registry's copies.

    ``kinds``: which recorded images (normal, baked, data, data-init); default all of them.

    Raises:
        SignatureError (exit 3): DEST's stored manifest does not verify.
        BundleError: nothing built for this bundle revision, or the engine lost an image.
        RegistryError: the push was refused, or the registry serves a manifest other than the
            image that was built (its config digest is not the recorded image ID).
    """
    dest = Path(os.path.abspath(dest))
    manifest = check_unpacked(dest, trust=trust, roots=())
    revision = manifest.payload.sha256
    built = read_built(dest, revision)
    chosen = [b for b in built if kinds is None or b.kind in kinds]
    if kinds is not None:
        missing = [k for k in kinds if k not in {b.kind for b in built}]
        if missing:
            raise BundleError(
                f"no {missing[0]} image of this bundle was built",
                remedy="airgap build DEST --variant all --fleet",
            )
    if not chosen:
        raise BundleError("no image of this bundle was built", remedy="airgap build DEST")
    creds = load_credentials(registry, credentials_file)
    client = RegistryClient(registry, creds, ca_file=ca_file, plain_http=plain_http)
    eng = engine or DockerEngine.connect()
    pushed = []
    for b in sorted(chosen, key=lambda r: KINDS.index(r.kind)):
        if eng.image_id(b.image_id) != b.image_id:
            raise BundleError(
                f"the engine no longer has the {b.kind} image {b.image_id[:19]} (tag {b.tag})",
                remedy="build it again: airgap build DEST",
            )
        name, _, tag = b.tag.rpartition(":")
        name = name.rsplit("/", 1)[-1]
        repository = registry.repository(name)
        path = _repository_path(registry, repository)
        client.check_login(path)
        eng.tag_image(b.image_id, repository, tag)
        if on_line:
            on_line(f"pushing {repository}:{tag}")
        reported = eng.push_image(
            repository, tag, auth=creds.engine_auth() if creds else None, on_line=on_line
        )
        digest, _, doc = client.manifest(path, tag)
        config = doc["config"].get("digest")
        if digest != reported:
            raise RegistryError(
                f"{repository}:{tag} now names {digest} in the registry, but the engine pushed "
                f"{reported}: something else pushed to the same tag",
                remedy="find who else pushes there; push again",
            )
        if config != b.image_id:
            raise RegistryError(
                f"the registry's {repository}:{tag} is image {config}, not the {b.kind} image "
                f"{b.image_id} built from this bundle",
                remedy="the registry does not hold what was built; push again and check who "
                "else can write there",
            )
        # The digest itself must resolve to the same bytes (what a pinned pull asks for).
        again, _, _ = client.manifest(path, digest)
        if again != digest:
            raise RegistryError(f"the registry does not serve {repository}@{digest}")
        pushed.append(PushedRecord(b.kind, repository, tag, b.image_id, digest))
    write_pushed(
        dest, revision, registry.host + (f"/{registry.prefix}" if registry.prefix else ""), pushed
    )
    return PushResult(manifest.name, manifest.version, registry.host, tuple(pushed))


def verify_pinned(client: RegistryClient, record: PushedRecord) -> None:
    """Re-check that the registry still serves ``record``'s digest as the built image.

    Raises:
        RegistryError: the digest is gone or names another image config.
    """
    path = _repository_path(client.registry, record.repository)
    digest, _, doc = client.manifest(path, record.digest)
    if digest != record.digest or doc["config"].get("digest") != record.image_id:
        raise RegistryError(f"the registry's {record.pinned} is not the image built")
