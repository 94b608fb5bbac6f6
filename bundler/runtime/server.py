"""Process start-up: settings, sys.path, extra requirements, and the gunicorn master."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication
from gunicorn.errors import HaltServer

from . import config
from .app import make_app
from .auth import KeyAuth
from .cors import CorsPolicy
from .entry import (
    RequirementsError,
    apply_paths,
    environment_summary,
    install_requirements,
    load_entry_script,
)
from .metrics import MULTIPROC_ENV
from .swagger import ServiceInfo, SwaggerDocs
from .tls import server_context
from .worker import AirgapWorker

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .app import ScoringApp
    from .config import Settings
    from .metrics import Metrics

log = logging.getLogger("airgap_runtime")

# Exit statuses of `python -m airgap_runtime` (documented in docs/runtime.md). gunicorn's master
# itself exits 3 when a worker fails to boot (init() raised) and 1 on its own errors.
EXIT_CONFIG = 2
EXIT_BOOT = 3
GRACEFUL_TIMEOUT = 30  # seconds a worker gets to finish its request after SIGTERM


class ScoringServer(BaseApplication):  # type: ignore[misc]  # gunicorn ships no types
    """gunicorn, configured from Settings; each worker imports the entry script and calls
    init() before it accepts its first connection."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        # Read by each AirgapWorker (with settings): the TLS handshake happens in the worker.
        self.ssl_context = ssl_context
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.settings).items():
            # Settings of newer gunicorn releases are skipped on older ones.
            if key in self.cfg.settings:
                self.cfg.set(key, value)
        if self.metrics is not None:
            for key, value in metrics_hooks(self.settings, self.metrics).items():
                self.cfg.set(key, value)

    def load(self) -> ScoringApp:
        # Runs in each worker after fork (no preload): a model is loaded per process, as in
        # Azure ML, so libraries that dislike fork after init (threads, GPU contexts) work.
        settings = self.settings
        entry = load_entry_script(settings.entry_script)
        log.info(
            "init() finished in %.3f s; run() takes %s input; worker ready",
            entry.init_seconds,
            entry.interface.kind,
        )
        swagger = SwaggerDocs(
            entry.interface, settings.app_root or Path.cwd(), ServiceInfo.from_env(os.environ)
        )
        if self.metrics is not None:
            self.metrics.model_loaded(entry.init_seconds)
        app = make_app(
            entry,
            settings.scoring_timeout_ms,
            settings.max_request_bytes,
            swagger=swagger,
            cors=CorsPolicy.from_env(settings.cors_origins),
        )
        app.secure(
            auth=KeyAuth(str(settings.auth_key_file)) if settings.auth_key_file else None,
            metrics=self.metrics,
            debug_errors=settings.debug_errors,
        )
        return app


def metrics_hooks(settings: Settings, metrics: Metrics) -> dict[str, Any]:
    """gunicorn server hooks for metrics: serve them from the master once it is ready, close
    that socket in each forked worker, count and clean up each worker that exits."""
    directory = os.environ[MULTIPROC_ENV]
    port = settings.metrics_port
    assert port is not None

    def when_ready(server: Any) -> None:
        metrics.serve(settings.host, port, directory)

    def post_fork(server: Any, worker: Any) -> None:
        metrics.close_in_child()

    def child_exit(server: Any, worker: Any) -> None:
        metrics.worker_exited(worker.pid)

    return {"when_ready": when_ready, "post_fork": post_fork, "child_exit": child_exit}


def _worker_tmp_dir() -> str | None:
    # gunicorn's heartbeat files: tmpfs avoids stalls on slow or read-only container disks.
    shm = "/dev/shm"  # noqa: S108 - gunicorn's documented choice for the heartbeat directory
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """The gunicorn settings for ``settings`` (pure, so tests can inspect them)."""
    options: dict[str, Any] = {
        "bind": [settings.bind],
        "workers": settings.workers,
        # One thread per worker: run() executes in the worker's main thread, which the
        # SIGALRM-based scoring timeout needs, and CPU-bound scoring gains nothing from
        # threads. Unlike gunicorn's sync worker, AirgapWorker multiplexes its connections, so
        # slow clients cannot stall it (worker.py).
        "worker_class": AirgapWorker,
        "timeout": settings.worker_timeout,
        "graceful_timeout": GRACEFUL_TIMEOUT,
        "errorlog": "-",
        "loglevel": settings.log_level,
        "accesslog": None,  # the app writes its own, cheaper access line
        "proc_name": "airgap_runtime",
        "preload_app": False,
        # gunicorn >= 25 opens a control socket in $HOME by default: two servers would share it,
        # and a read-only home would fail the start. The runtime needs none.
        "control_socket_disable": True,
    }
    tmp = _worker_tmp_dir()
    if tmp:
        options["worker_tmp_dir"] = tmp
    return options


def _watch_parent(env: Mapping[str, str]) -> bool:
    """With AIRGAP_PARENT_PID set (by the local runner), stop gracefully once that process is
    gone: a daemon thread of the master polls its parent every second and sends the master
    SIGTERM. False if the parent is gone already."""
    raw = env.get(config.PARENT_PID, "").strip()
    if not raw.isdigit():
        return True
    parent = int(raw)
    if os.getppid() != parent:
        return False

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        log.warning("the process that started the server (%d) is gone: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="airgap-parent-watch", daemon=True).start()
    return True


def _add_toplevel_path() -> None:
    """Run from a checkout (``python -m bundler.runtime``), the top-level shims (azureml.*) sit
    in ``_toplevel/`` beside the package; in a bundle they are already in ``runtime/``. Last on
    sys.path, like the runtime's own folder: the user's packages come first."""
    toplevel = Path(__file__).resolve().parent / "_toplevel"
    if toplevel.is_dir() and str(toplevel) not in sys.path:
        sys.path.append(str(toplevel))


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m airgap_runtime",
        description="Serve an Azure ML entry script (init()/run()) over HTTP. Settings come from "
        "the environment (see docs/runtime.md); these flags override it.",
    )
    parser.add_argument("--entry-script", help=f"overrides {config.ENTRY_SCRIPT}")
    parser.add_argument("--model-dir", help=f"overrides {config.MODEL_DIR}")
    parser.add_argument("--host", help=f"address to listen on (default {config.DEFAULT_HOST})")
    parser.add_argument("--port", type=int, help=f"TCP port (default {config.DEFAULT_PORT})")
    parser.add_argument("--worker-count", type=int, help=f"overrides {config.WORKER_COUNT}")
    return parser.parse_args(argv)


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            "[%(asctime)s] [%(process)d] [%(levelname)s] airgap_runtime: %(message)s",
            "%Y-%m-%d %H:%M:%S %z",
        )
    )
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until it is stopped; return the process exit status."""
    args = _parse_args(argv)
    overrides = {
        config.ENTRY_SCRIPT: args.entry_script,
        config.MODEL_DIR: args.model_dir,
        config.HOST: args.host,
        config.PORT: None if args.port is None else str(args.port),
        config.WORKER_COUNT: None if args.worker_count is None else str(args.worker_count),
    }
    for key, value in overrides.items():
        if value is not None:
            os.environ[key] = value
    _setup_logging(os.environ.get(config.LOG_LEVEL, "info").strip().lower() or "info")
    try:
        settings = config.load_settings(os.environ, Path.cwd())
    except config.ConfigError as e:
        log.critical("configuration error: %s", e)
        return EXIT_CONFIG
    _setup_logging(settings.log_level)
    ssl_context: ssl.SSLContext | None = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        try:
            ssl_context = server_context(settings.tls_cert, settings.tls_key)
        except config.ConfigError as e:
            log.critical("configuration error: %s", e)
            return EXIT_CONFIG
    if settings.model_dir is not None:
        # The entry script reads it from the environment: hand it the absolute path.
        os.environ[config.MODEL_DIR] = str(settings.model_dir)

    if not _watch_parent(os.environ):
        log.critical("the process that started the server is gone: not starting")
        return EXIT_CONFIG
    master = os.getpid()
    requirements_dir: str | None = None
    metrics_dir: str | None = None
    try:
        if settings.extra_requirements is not None:
            log.info("installing %s offline", settings.extra_requirements)
            try:
                requirements_dir = install_requirements(settings.extra_requirements)
            except RequirementsError as e:
                log.critical("%s", e)
                return EXIT_CONFIG
        apply_paths(settings, requirements_dir)
        _add_toplevel_path()
        log.info("%s", environment_summary())
        log.info(
            "serving %s on %s%s with %d worker(s); scoring timeout %s, max request %d bytes",
            settings.entry_script,
            "https://" if ssl_context is not None else "http://",
            settings.bind,
            settings.workers,
            f"{settings.scoring_timeout_ms} ms" if settings.scoring_timeout_ms else "off",
            settings.max_request_bytes,
        )
        metrics = None
        if settings.metrics_port is not None:
            from .metrics import Metrics, make_dir

            metrics_dir = make_dir()  # before prometheus_client is first imported
            metrics = Metrics()
        if settings.auth_key_file is not None:
            log.info(
                "key auth on (keys in %s); GET / and OPTIONS stay open", settings.auth_key_file
            )
        if settings.debug_errors:
            log.warning(
                "%s=1: error answers carry tracebacks; never use this in production",
                config.DEBUG_ERRORS,
            )
        try:
            ScoringServer(settings, metrics, ssl_context).run()
        except SystemExit as e:
            # gunicorn's arbiter (and each forked worker) leaves through sys.exit.
            code = e.code
            return code if isinstance(code, int) else (0 if code is None else 1)
        except HaltServer as e:
            # The arbiter raises HaltServer from its SIGCHLD handler; when a second worker
            # fails to boot while the first failure is already halting the server, that
            # second raise escapes the arbiter's own handler. Same failure, same status.
            log.critical("%s", e.reason)
            return int(e.exit_status)
        return 0
    finally:
        # Forked workers unwind through here too: only the master owns the temp dir.
        if requirements_dir and os.getpid() == master:
            shutil.rmtree(requirements_dir, ignore_errors=True)
        if metrics_dir and os.getpid() == master:
            shutil.rmtree(metrics_dir, ignore_errors=True)
