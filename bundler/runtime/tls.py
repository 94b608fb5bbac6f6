"""The server's TLS context: protocol floor, ciphers and the certificate (AIRGAP_TLS_*)."""

from __future__ import annotations

import os
import ssl
import stat
from typing import TYPE_CHECKING

from .config import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

# TLS 1.2 is the floor rather than 1.3 only: the clients of a scoring endpoint in a corporate
# network include Java 8, .NET Framework 4.x and Windows Server 2012/2016 builds that speak no
# TLS 1.3. For 1.2, only forward-secret AEAD suites (Mozilla's "intermediate" profile); TLS 1.3
# suites are all AEAD and are left at OpenSSL's defaults.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side context for ``cert`` (PEM chain) and ``key`` (PEM, unencrypted).

    Raises:
        ConfigError: a file cannot be read, is not PEM, or the key does not match the cert.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= ssl.OP_SINGLE_DH_USE | ssl.OP_SINGLE_ECDH_USE
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    context.set_ciphers(TLS12_CIPHERS)
    context.set_alpn_protocols(["http/1.1"])
    for path in (cert, key):
        # OpenSSL opens the files itself, blocking: a FIFO or device named here would hang the
        # server's start, so only regular files are handed over.
        try:
            regular = stat.S_ISREG(os.stat(path).st_mode)
        except OSError as e:
            raise ConfigError(f"cannot read the TLS file {path}: {e.strerror}") from e
        if not regular:
            raise ConfigError(f"the TLS file {path} is not a regular file")
    try:
        context.load_cert_chain(str(cert), str(key), password=_no_password)
    except (OSError, ssl.SSLError, ValueError) as e:
        raise ConfigError(
            f"cannot load the TLS certificate {cert} with key {key}: {e}; give a PEM "
            "certificate chain and its unencrypted PEM private key"
        ) from e
    return context


def _no_password() -> str:
    # An encrypted key would prompt on the terminal of a server that has none: refuse instead.
    raise ValueError("the private key is encrypted")
