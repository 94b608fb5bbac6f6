"""The one engine question a pack asks, without the docker SDK: which image ID a tag names.

``airgap pack`` pins bundle.toml's base image by its local image ID. Importing the docker SDK
(requests, urllib3 and their kin) and negotiating the API version costs more than the rest
of a cached re-pack's start-up, so for the usual engine, on a local unix socket, this module
asks ``GET /images/<ref>/json`` over that socket with the standard library. Any other
DOCKER_HOST (tcp, ssh) is left to the SDK (:func:`bundler.deploy.engine.resolve_base_image`).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from typing import Final

DEFAULT_SOCKET: Final = "/var/run/docker.sock"


class NotHere(Exception):
    """This host's engine is not on a unix socket: ask through the SDK instead."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def socket_path(environ: dict[str, str] | None = None) -> str:
    """The engine's unix socket from DOCKER_HOST (default: the local one).

    Raises:
        NotHere: DOCKER_HOST names another kind of endpoint.
    """
    env = os.environ if environ is None else environ
    host = env.get("DOCKER_HOST", "")
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        return host[len("unix://") :]
    raise NotHere(host)


def image_id(ref: str, *, timeout: float = 10.0, path: str | None = None) -> str | None:
    """The image ID ("sha256:...") ``ref`` names in the local engine; None when no engine
    answers on the socket or it lacks the image (what an unpinned pack records).

    Raises:
        NotHere: DOCKER_HOST is not a unix socket.
    """
    conn = _UnixConnection(path or socket_path(), timeout)
    try:
        conn.request("GET", f"/images/{urllib.parse.quote(ref, safe='')}/json")
        resp = conn.getresponse()
        body = resp.read(1 << 22)
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    if resp.status != 200:
        return None  # 404: no such image; 400: not a valid reference (the engine lacks it)
    try:
        found = json.loads(body)["Id"]
    except (ValueError, KeyError, TypeError):
        return None
    return found if isinstance(found, str) and found.startswith("sha256:") else None
