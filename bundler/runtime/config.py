"""The runtime's settings: read from the environment (and a few flags), checked once at start."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

# Environment variable names. The first group is Azure ML's own contract; the AIRGAP_ ones are
# ours, for what Azure ML's server does not offer.
ENTRY_SCRIPT = "AZUREML_ENTRY_SCRIPT"
MODEL_DIR = "AZUREML_MODEL_DIR"
EXTRA_LIB_PATH = "AZUREML_EXTRA_PYTHON_LIB_PATH"
EXTRA_REQUIREMENTS = "AZUREML_EXTRA_REQUIREMENTS_TXT"
WORKER_COUNT = "WORKER_COUNT"
WORKER_TIMEOUT = "WORKER_TIMEOUT"
SCORING_TIMEOUT_MS = "SCORING_TIMEOUT_MS"
LOG_LEVEL = "AZUREML_LOG_LEVEL"
MAX_REQUEST_BYTES = "AIRGAP_MAX_REQUEST_BYTES"
HOST = "AIRGAP_HOST"
PORT = "AIRGAP_PORT"
# The bundle's install prefix (prefix/: bin/ launchers, include/, data files), beside the
# site-packages tree; its bin/ goes first on PATH.
PREFIX = "AIRGAP_PREFIX"
CORS_ORIGINS = "AML_CORS_ORIGINS"
APP_ROOT = "AML_APP_ROOT"  # where /swagger.json looks for the user's swagger*.json files
# Connection handling of the runtime's worker (worker.py); see docs/runtime.md.
HEADER_TIMEOUT = "AIRGAP_HEADER_TIMEOUT"
BODY_TIMEOUT = "AIRGAP_BODY_TIMEOUT"
MIN_BODY_RATE = "AIRGAP_MIN_BODY_RATE"
WRITE_TIMEOUT = "AIRGAP_WRITE_TIMEOUT"
KEEPALIVE_TIMEOUT = "AIRGAP_KEEPALIVE_TIMEOUT"
MAX_CONNECTIONS = "AIRGAP_MAX_CONNECTIONS"
TLS_CERT = "AIRGAP_TLS_CERT"
TLS_KEY = "AIRGAP_TLS_KEY"
# Set by the local runner to its pid: the server stops when that process is gone.
PARENT_PID = "AIRGAP_PARENT_PID"
# Key auth: the path of a file holding the key(s), never a key (see auth.py).
AUTH_KEY_FILE = "AIRGAP_AUTH_KEY_FILE"
METRICS_PORT = "AIRGAP_METRICS_PORT"  # Prometheus text on its own port (see metrics.py)
DEBUG_ERRORS = "AIRGAP_DEBUG_ERRORS"  # 1: 500 bodies carry the traceback (never in production)

DEFAULT_PORT = 5001
DEFAULT_HOST = "0.0.0.0"  # noqa: S104 - a container's server must listen on all interfaces
DEFAULT_WORKERS = 1
DEFAULT_WORKER_TIMEOUT = 300  # seconds, Azure ML's default
# Azure ML's default (one hour). Its sync workers are killed after WORKER_TIMEOUT anyway, so
# unless SCORING_TIMEOUT_MS is set the cut-off lands just before that instead (299 s for the
# default 300): the client gets Azure ML's timeout answer rather than a dropped connection.
AZURE_SCORING_TIMEOUT_MS = 3_600_000


def default_scoring_timeout_ms(worker_timeout: int) -> int:
    """The scoring timeout when SCORING_TIMEOUT_MS is unset: Azure ML's, capped just below
    ``worker_timeout`` (seconds) so a slow run() is answered before its worker is killed."""
    margin = min(1000, worker_timeout * 100)
    return min(AZURE_SCORING_TIMEOUT_MS, worker_timeout * 1000 - margin)


DEFAULT_MAX_REQUEST_BYTES = 100 * 1024 * 1024
DEFAULT_HEADER_TIMEOUT = 10.0  # seconds from a request's first byte to its blank line
DEFAULT_BODY_TIMEOUT = 10.0  # seconds of grace for the body, then MIN_BODY_RATE applies
DEFAULT_MIN_BODY_RATE = 4096  # bytes/s: each 4 KiB received buys one more second
DEFAULT_WRITE_TIMEOUT = 30.0  # seconds a client may go without reading any of its answer
DEFAULT_KEEPALIVE_TIMEOUT = 5.0  # seconds an idle kept-alive connection stays open; 0: close
DEFAULT_MAX_CONNECTIONS = 256  # open connections per worker; more get 503
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(Exception):
    """A setting is missing, malformed or names a path that does not exist (exit status 2)."""


@dataclass(frozen=True)
class Settings:
    """Everything the server needs, validated. Paths are absolute."""

    entry_script: Path
    model_dir: Path | None
    extra_lib_paths: tuple[Path, ...]
    extra_requirements: Path | None
    host: str
    port: int
    workers: int
    worker_timeout: int  # seconds; gunicorn kills a worker silent for longer
    scoring_timeout_ms: int  # milliseconds; 0 turns the per-request cut-off off
    max_request_bytes: int  # bytes of request body; larger bodies get 413
    log_level: str
    prefix: Path | None = None  # the bundle's prefix/ folder, when it has one
    cors_origins: str | None = None  # AML_CORS_ORIGINS as given; None leaves CORS off
    app_root: Path | None = None  # AML_APP_ROOT; None: the working directory
    header_timeout: float = DEFAULT_HEADER_TIMEOUT  # seconds
    body_timeout: float = DEFAULT_BODY_TIMEOUT  # seconds before MIN_BODY_RATE is enforced
    min_body_rate: int = DEFAULT_MIN_BODY_RATE  # bytes per second; 0 turns the rate off
    write_timeout: float = DEFAULT_WRITE_TIMEOUT  # seconds without progress writing an answer
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT  # seconds; 0: Connection: close
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # per worker
    tls_cert: Path | None = None  # PEM certificate chain; with tls_key turns TLS on
    tls_key: Path | None = None  # PEM private key
    auth_key_file: Path | None = None  # AIRGAP_AUTH_KEY_FILE; None leaves auth off
    metrics_port: int | None = None  # AIRGAP_METRICS_PORT; None leaves metrics off
    debug_errors: bool = False  # AIRGAP_DEBUG_ERRORS=1

    @property
    def bind(self) -> str:
        """The address in gunicorn's notation (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


def _seconds(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if not value >= minimum or value == float("inf"):
        raise ConfigError(f"{name}={raw} must be a finite number of seconds >= {minimum:g}")
    return value


def _tls_files(env: Mapping[str, str], cwd: Path) -> tuple[Path | None, Path | None]:
    raw_cert = env.get(TLS_CERT, "").strip()
    raw_key = env.get(TLS_KEY, "").strip()
    if bool(raw_cert) != bool(raw_key):
        raise ConfigError(
            f"set both {TLS_CERT} and {TLS_KEY} (a certificate and its key), or neither"
        )
    if not raw_cert:
        return None, None
    cert = _resolve(raw_cert, cwd).absolute()
    key = _resolve(raw_key, cwd).absolute()
    for name, raw, path in ((TLS_CERT, raw_cert, cert), (TLS_KEY, raw_key, key)):
        if not path.is_file():
            raise ConfigError(f"{name}={raw}: no such file ({path})")
    return cert, key


def _port(env: Mapping[str, str]) -> int:
    port = _int(env, PORT, DEFAULT_PORT, 0)
    if port > 65535:
        raise ConfigError(f"{PORT}={port} is not a TCP port (0-65535)")
    return port


def _resolve(raw: str, base: Path) -> Path:
    path = Path(os.path.expanduser(raw))
    return path if path.is_absolute() else base / path


def load_settings(env: Mapping[str, str], cwd: Path) -> Settings:
    """Read and check the settings from ``env``; relative paths follow Azure ML's rules.

    AZUREML_ENTRY_SCRIPT is relative to ``cwd``; the lib path and requirements file are
    relative to the entry script's folder.

    Raises:
        ConfigError: a value is malformed, a named path is missing, or both package modes
            are set at once.
    """
    raw_entry = env.get(ENTRY_SCRIPT, "").strip()
    if not raw_entry:
        raise ConfigError(f"{ENTRY_SCRIPT} is not set; point it at the entry script (score.py)")
    entry = _resolve(raw_entry, cwd).absolute()
    if not entry.is_file():
        raise ConfigError(f"{ENTRY_SCRIPT}={raw_entry}: no such file ({entry})")
    base = entry.parent

    model_dir: Path | None = None
    raw_model = env.get(MODEL_DIR, "").strip()
    if raw_model:
        model_dir = _resolve(raw_model, cwd).absolute()
        if not model_dir.exists():
            raise ConfigError(f"{MODEL_DIR}={raw_model}: no such file or folder ({model_dir})")

    raw_lib = env.get(EXTRA_LIB_PATH, "").strip()
    raw_req = env.get(EXTRA_REQUIREMENTS, "").strip()
    if raw_lib and raw_req:
        # Azure ML's two package paths exclude each other: mixing them makes the effective
        # set of packages depend on install order, which is what a bundle exists to prevent.
        raise ConfigError(
            f"{EXTRA_LIB_PATH} and {EXTRA_REQUIREMENTS} are both set; set only one of them"
        )
    lib_paths: list[Path] = []
    for part in raw_lib.split(os.pathsep) if raw_lib else ():
        if not part.strip():
            continue
        path = _resolve(part.strip(), base).absolute()
        if not path.is_dir():
            raise ConfigError(f"{EXTRA_LIB_PATH}: {part}: no such folder ({path})")
        lib_paths.append(path)

    requirements: Path | None = None
    if raw_req:
        requirements = _resolve(raw_req, base).absolute()
        if not requirements.is_file():
            raise ConfigError(f"{EXTRA_REQUIREMENTS}={raw_req}: no such file ({requirements})")

    prefix: Path | None = None
    raw_prefix = env.get(PREFIX, "").strip()
    if raw_prefix:
        prefix = _resolve(raw_prefix, base).absolute()
        if not prefix.is_dir():
            raise ConfigError(f"{PREFIX}={raw_prefix}: no such folder ({prefix})")

    log_level = env.get(LOG_LEVEL, "info").strip().lower() or "info"
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"{LOG_LEVEL}={log_level!r} is not one of {', '.join(LOG_LEVELS)}")

    worker_timeout = _int(env, WORKER_TIMEOUT, DEFAULT_WORKER_TIMEOUT, 1)
    port = _port(env)
    auth_key_file = _auth_key_file(env, cwd)
    metrics_port = _metrics_port(env, port)
    raw_debug = env.get(DEBUG_ERRORS, "").strip()
    if raw_debug not in ("", "0", "1"):
        raise ConfigError(f"{DEBUG_ERRORS}={raw_debug!r} must be 0 or 1")
    raw_root = env.get(APP_ROOT, "").strip()
    tls_cert, tls_key = _tls_files(env, cwd)
    return Settings(
        entry_script=entry,
        model_dir=model_dir,
        extra_lib_paths=tuple(lib_paths),
        extra_requirements=requirements,
        host=env.get(HOST, "").strip() or DEFAULT_HOST,
        port=port,
        workers=_int(env, WORKER_COUNT, DEFAULT_WORKERS, 1),
        worker_timeout=worker_timeout,
        scoring_timeout_ms=_int(
            env, SCORING_TIMEOUT_MS, default_scoring_timeout_ms(worker_timeout), 0
        ),
        max_request_bytes=_int(env, MAX_REQUEST_BYTES, DEFAULT_MAX_REQUEST_BYTES, 1),
        log_level=log_level,
        prefix=prefix,
        cors_origins=env.get(CORS_ORIGINS, "").strip() or None,
        app_root=_resolve(raw_root, cwd).absolute() if raw_root else None,
        header_timeout=_seconds(env, HEADER_TIMEOUT, DEFAULT_HEADER_TIMEOUT, 0.1),
        body_timeout=_seconds(env, BODY_TIMEOUT, DEFAULT_BODY_TIMEOUT, 0.1),
        min_body_rate=_int(env, MIN_BODY_RATE, DEFAULT_MIN_BODY_RATE, 0),
        write_timeout=_seconds(env, WRITE_TIMEOUT, DEFAULT_WRITE_TIMEOUT, 0.1),
        keepalive_timeout=_seconds(env, KEEPALIVE_TIMEOUT, DEFAULT_KEEPALIVE_TIMEOUT, 0),
        max_connections=_int(env, MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS, 1),
        tls_cert=tls_cert,
        tls_key=tls_key,
        auth_key_file=auth_key_file,
        metrics_port=metrics_port,
        debug_errors=raw_debug == "1",
    )


def _auth_key_file(env: Mapping[str, str], cwd: Path) -> Path | None:
    """AIRGAP_AUTH_KEY_FILE, resolved and checked now (mode, keys) so a bad file stops the
    start with a clear message instead of failing every request."""
    from .auth import KeyFileError, read_key_file

    raw = env.get(AUTH_KEY_FILE, "").strip()
    if not raw:
        return None
    path = _resolve(raw, cwd).absolute()
    try:
        read_key_file(str(path))
    except KeyFileError as e:
        raise ConfigError(f"{AUTH_KEY_FILE}: {e}") from None
    return path


def _metrics_port(env: Mapping[str, str], port: int) -> int | None:
    if not env.get(METRICS_PORT, "").strip():
        return None
    metrics_port = _int(env, METRICS_PORT, 0, 1)
    if metrics_port > 65535:
        raise ConfigError(f"{METRICS_PORT}={metrics_port} is not a TCP port (1-65535)")
    if metrics_port == port:
        raise ConfigError(
            f"{METRICS_PORT}={metrics_port} is the scoring port too; choose another port"
        )
    return metrics_port
