"""The scoring server's key file, as `airgap serve` and `airgap run` hand it over.

The rules are the runtime's own (bundler/runtime/auth.py), checked here first so a bad file
fails the command at once, with the remedy, before a virtualenv or a container is made. Only
the path travels: to the local runtime in AIRGAP_AUTH_KEY_FILE, into a container as a
read-only bind mount of the file (never an environment variable, never a layer).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import AuthKeyFileError
from ..runtime import auth

# Where the key file appears inside a container (the Docker-secrets convention).
CONTAINER_KEY_PATH = "/run/secrets/airgap-auth-keys"


def check_key_file(path: Path) -> Path:
    """The absolute path of ``path`` once it passes the runtime's checks.

    Raises:
        AuthKeyFileError: see bundler.runtime.auth (mode, key count, key length).
    """
    absolute = Path(os.path.abspath(path))
    try:
        auth.read_key_file(str(absolute))
    except auth.KeyFileError as e:
        raise AuthKeyFileError(
            str(e),
            remedy="one key per line, at most two, each at least "
            f"{auth.MIN_KEY_LENGTH} characters, file mode 600",
        ) from None
    return absolute


def check_container_key_file(path: Path, user: str) -> Path:
    """``check_key_file``, and the container's ``user`` ("uid:gid") must be able to read the
    file through its mount: the mode is 600 or 400, so the file must be that user's.

    Raises:
        AuthKeyFileError: the file fails the checks or belongs to another user.
    """
    absolute = check_key_file(path)
    uid = int(user.split(":", 1)[0])
    owner = absolute.stat().st_uid
    if owner != uid:
        raise AuthKeyFileError(
            f"{absolute} belongs to uid {owner}, but the container's server runs as uid {uid} "
            "and reads it through a read-only mount",
            remedy=f"give the file to that user: chown {user} {absolute} (mode stays 600)",
        )
    return absolute
