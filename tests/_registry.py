"""Test support: Debian's docker-registry (the CNCF distribution registry), run with our own
config: bound to 127.0.0.1 on a free port, a temporary storage root, optionally TLS (a
self-signed certificate the test makes) and htpasswd auth. Its packaged config binds every
interface and is never used."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from _tlscert import make_cert

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


def require_registry() -> None:
    if not os.access(REGISTRY, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail("docker-registry is required in CI (scripts/setup.sh installs it)")
        pytest.skip("Debian's docker-registry is not installed here")


@contextmanager
def run_registry(workdir: Path, *, tls: bool = False, auth: bool = False) -> Iterator[Registry]:
    """A registry on 127.0.0.1 for the duration of the block (stopped even on failure)."""
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
        _wait(host, ca, proc)
        yield Registry(host, workdir / "root", ca, user, password)
    finally:
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
