"""Test support: Debian's docker-registry (the CNCF distribution registry), run with our own
config: bound to 127.0.0.1 on a free port, a temporary storage root, optionally TLS (a
self-signed certificate the test makes) and htpasswd auth, or token auth with a token server
of our own (:class:`TokenServer`). Its packaged config binds every interface and is never
used."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from _tlscert import make_cert
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

REGISTRY = "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Registry:
    host: str  # 127.0.0.1:PORT
    root: Path
    ca: Path | None = None
    user: str | None = None
    password: str | None = None
    tokens: TokenServer | None = None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """The distribution token protocol's auth server, on 127.0.0.1: ``GET /token?service=&
    scope=...`` with Basic credentials answers a JWT (ES256) whose header carries the signing
    certificate in ``x5c``; the registry trusts it through ``rootcertbundle``. Only the one
    user is known; it is granted pull and push on the repositories it asks for, nothing else.
    Every request is logged in ``requests`` (user or None, scopes, status)."""

    folder: Path
    service: str
    issuer: str = "airgap-test-issuer"
    user: str = "fleet"
    password: str = field(default_factory=lambda: "t0ken-" + secrets.token_hex(6))
    requests: list[tuple[str | None, list[str], int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cert_path, key_path = make_cert(self.folder)
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self._key = key
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        self._x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.realm = f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def token(self, subject: str, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            granted = [a for a in actions.split(",") if a in ("pull", "push")]
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": self._x5c}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)  # JWS ES256 wants r || s, 32 bytes each
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                scopes = [s for v in query.get("scope", []) for s in v.split(" ")]
                user = outer._basic_user(self.headers.get("Authorization", ""))
                if url.path != "/token" or query.get("service") != [outer.service]:
                    status, body = 400, {"errors": [{"code": "UNSUPPORTED"}]}
                elif user is None:
                    status, body = 401, {"errors": [{"code": "UNAUTHORIZED"}]}
                else:
                    token = outer.token(user, scopes)
                    status, body = 200, {"token": token, "access_token": token, "expires_in": 300}
                outer.requests.append((user, scopes, status))
                data = json.dumps(body).encode()
                self.send_response(status)
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="airgap-test-tokens"')
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _basic_user(self, header: str) -> str | None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return None
        ok = secrets.compare_digest(user, self.user) and secrets.compare_digest(
            password, self.password
        )
        return user if ok else None

    def __enter__(self) -> TokenServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def require_registry() -> None:
    if not os.access(REGISTRY, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail("docker-registry is required in CI (scripts/setup.sh installs it)")
        pytest.skip("Debian's docker-registry is not installed here")


@contextmanager
def run_registry(
    workdir: Path, *, tls: bool = False, auth: bool = False, token: bool = False
) -> Iterator[Registry]:
    """A registry on 127.0.0.1 for the duration of the block (stopped even on failure).

    ``auth``: htpasswd; ``token``: token auth, with a :class:`TokenServer` started here."""
    require_registry()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    host = f"127.0.0.1:{port}"
    lines = [
        "version: 0.1",
        "log:",
        "  level: warn",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {workdir / 'root'}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
    ]
    ca = None
    if tls:
        cert, key = make_cert(workdir / "tls")
        ca = cert
        lines += ["  tls:", f"    certificate: {cert}", f"    key: {key}"]
    user = password = None
    if auth:
        user, password = "fleet", "s3cret-" + os.urandom(6).hex()
        out = subprocess.run(
            ["htpasswd", "-Bbn", user, password], capture_output=True, text=True, check=True
        ).stdout
        (workdir / "htpasswd").write_text(out)
        lines += [
            "auth:",
            "  htpasswd:",
            "    realm: airgap-test",
            f"    path: {workdir / 'htpasswd'}",
        ]
    tokens = None
    if token:
        tokens = TokenServer(workdir / "tokens", service=f"airgap-test-registry-{port}")
        user, password = tokens.user, tokens.password
        lines += [
            "auth:",
            "  token:",
            f"    realm: {tokens.realm}",
            f"    service: {tokens.service}",
            f"    issuer: {tokens.issuer}",
            f"    rootcertbundle: {tokens.cert_path}",
        ]
    config = workdir / "config.yml"
    config.write_text("\n".join(lines) + "\n")
    certs_d = Path("/etc/docker/certs.d") / host
    if ca is not None:
        # Where the Docker engine looks for a registry's CA (read at each push).
        certs_d.mkdir(parents=True, exist_ok=True)
        shutil.copy(ca, certs_d / "ca.crt")
    log = (workdir / "registry.log").open("wb")
    proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=log, stderr=log)
    try:
        if tokens is not None:
            tokens.__enter__()
        _wait(host, ca, proc)
        yield Registry(host, workdir / "root", ca, user, password, tokens)
    finally:
        if tokens is not None:
            tokens.__exit__()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if ca is not None:
            shutil.rmtree(certs_d, ignore_errors=True)


def _wait(host: str, ca: Path | None, proc: subprocess.Popen[bytes]) -> None:
    scheme = "https" if ca else "http"
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"{scheme}://{host}/v2/", timeout=2, context=context)
            return
        except urllib.error.HTTPError as e:
            if e.code == 401:  # up, and asking for credentials
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"docker-registry did not answer on {host}")


# HAProxy in front of Swarm replicas (the kernel here has no IPVS, so the routing mesh cannot
# carry traffic): health-checked, re-resolving Docker's DNS every second, retrying a request
# whose replica went away. Shared by tests/test_fleet.py and bench/bench_fleet.py.
_HAPROXY_CFG = """\
global
  log stdout format raw local0 warning
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  retries 3
  option redispatch 1
  retry-on conn-failure empty-response response-timeout
resolvers docker
  nameserver dns 127.0.0.11:53
  hold valid 1s
  hold obsolete 1s
  hold nx 1s
  hold other 1s
  hold refused 1s
  hold timeout 1s
  timeout resolve 500ms
  timeout retry 500ms
frontend score
  bind :8080
  default_backend replicas
backend replicas
  balance roundrobin
  option httpchk GET /
  default-server check inter 500ms fall 1 rise 1 resolvers docker init-addr none
  {servers}
"""


def haproxy_config(servers: str) -> str:
    """The HAProxy configuration with ``servers`` (backend ``server`` lines) filled in."""
    return _HAPROXY_CFG.format(servers=servers)


HAPROXY_IMAGE = "airgap-test/bookworm-haproxy:latest"


def haproxy_run_args(network: str, port: int, cfg: Path) -> list[str]:
    """`docker run` arguments after the container's name: HAProxy with ``cfg`` on
    ``network``, published on 127.0.0.1:``port``."""
    return [
        "--network",
        network,
        "-p",
        f"127.0.0.1:{port}:8080",
        "-v",
        f"{cfg}:/etc/haproxy/haproxy.cfg:ro",
        HAPROXY_IMAGE,
        "haproxy",
        "-f",
        "/etc/haproxy/haproxy.cfg",
    ]


def remove_built_images(engine: Any, dests: Iterable[Path]) -> None:
    """Teardown: remove the images `airgap build` recorded in each DEST (if it got that far)."""
    for dest in dests:
        record = dest / ".airgap" / "images.json"
        if record.exists():
            for image in json.loads(record.read_text())["images"]:
                engine.remove_image(image["image_id"])
