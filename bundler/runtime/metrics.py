"""Prometheus metrics, aggregated over every gunicorn worker, on a port of their own.

With AIRGAP_METRICS_PORT set, the master makes a private PROMETHEUS_MULTIPROC_DIR before it
first imports prometheus_client (the library picks its multiprocess storage at import), every
process writes its samples there, and the master serves the sum of all of them on the metrics
port (prometheus_client's MultiProcessCollector): a scrape never sees one worker at random.
The master counts worker exits (gunicorn's child_exit hook) and marks dead workers' gauges gone.

prometheus_client is imported only here and only when metrics are on: a server without
metrics loads nothing of it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any

log = logging.getLogger("airgap_runtime")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Latency buckets (seconds) for model scoring: from a cached lookup to a slow batch.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ROUTES = frozenset(("/", "/score", "/swagger.json"))
_METHODS = frozenset(("GET", "HEAD", "POST", "OPTIONS", "PUT", "DELETE", "PATCH"))


def make_dir() -> str:
    """Create the private multiprocess folder and point the environment (inherited by every
    worker) at it. Call in the master before anything imports prometheus_client."""
    path = tempfile.mkdtemp(prefix="airgap-metrics-")  # mode 0700
    os.environ[MULTIPROC_ENV] = path
    return path


def remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def label_route(path: str) -> str:
    """The route label: one of the server's routes, else ``other`` (bounded cardinality: a
    scan of random paths must not grow the metrics without end)."""
    return path if path in _ROUTES else "other"


class Metrics:
    """The server's metrics; one instance per process, made in the master before the fork."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter(
            "airgap_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
        )
        self.latency = Histogram(
            "airgap_request_duration_seconds",
            "Time from the request reaching the app to its answer, by route.",
            ["route"],
            buckets=BUCKETS,
        )
        self.in_flight = Gauge(
            "airgap_requests_in_flight",
            "Requests being handled now, summed over the live workers.",
            multiprocess_mode="livesum",
        )
        self.run_failures = Counter(
            "airgap_run_failures",
            "run() calls that raised (exception) or were cut off (timeout).",
            ["reason"],
        )
        self.worker_restarts = Counter(
            "airgap_worker_restarts",
            "Workers that exited (crashed, killed, timed out or recycled) and were replaced.",
        )
        self.model_load = Gauge(
            "airgap_model_load_seconds",
            "Seconds init() took, the longest among the live workers.",
            multiprocess_mode="livemax",
        )
        self._pending: list[int] = []
        self._draining = False
        self._httpd: Any = None

    # ---- in the workers -----------------------------------------------------------------

    def request_started(self) -> None:
        self.in_flight.inc()

    def request_ended(self) -> None:
        self.in_flight.dec()

    def observe(self, path: str, method: str, status: int, seconds: float) -> None:
        route = label_route(path)
        self.requests.labels(route, method if method in _METHODS else "other", str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def run_failed(self, reason: str) -> None:
        self.run_failures.labels(reason).inc()

    def model_loaded(self, seconds: float) -> None:
        self.model_load.set(seconds)

    # ---- in the master ------------------------------------------------------------------

    def serve(self, host: str, port: int, directory: str) -> None:
        """Serve the aggregated metrics on ``host:port`` from a thread of the master."""
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        served = start_http_server(port, addr=host.strip("[]"), registry=registry)
        self._httpd = served[0] if isinstance(served, tuple) else None
        log.info("metrics on %s port %d (Prometheus text at /metrics)", host, port)

    def close_in_child(self) -> None:
        """In a freshly forked worker: close the master's metrics socket, so the port closes
        with the master."""
        if self._httpd is not None:
            self._httpd.socket.close()
            self._httpd = None

    def worker_exited(self, pid: int) -> None:
        """gunicorn's child_exit hook (master). The hook runs from the SIGCHLD handler, which
        can fire again while it runs: a nested call only queues its pid for the outer one
        (prometheus_client's value lock is not re-entrant)."""
        self._pending.append(pid)
        if self._draining:
            return
        self._draining = True
        try:
            from prometheus_client import multiprocess

            while self._pending:
                dead = self._pending.pop()
                multiprocess.mark_process_dead(dead)  # type: ignore[no-untyped-call]
                self.worker_restarts.inc()
        finally:
            self._draining = False
