"""Prometheus metrics over real HTTP, aggregated over two gunicorn workers (metrics.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from entry_scripts.harness import HERE, MODEL_DIR, Server, free_port, http
from prometheus_client.parser import text_string_to_metric_families

from bundler.runtime.config import ConfigError, load_settings
from bundler.runtime.metrics import BUCKETS

PROBE = str(HERE / "probe.py")


def _start(tmp_path: Path, **extra: str) -> tuple[Server, str]:
    port = free_port()
    marker = tmp_path / f"init-{port}"
    env = {
        "AZUREML_ENTRY_SCRIPT": PROBE,
        "AZUREML_MODEL_DIR": str(MODEL_DIR),
        "WORKER_COUNT": "2",
        "AIRGAP_METRICS_PORT": str(port),
        "PROBE_INIT_MARKER": str(marker),
        **extra,
    }
    server = Server(tmp_path, env)
    server.wait_healthy()
    deadline = time.monotonic() + 30
    while not marker.exists() or len(marker.read_text().split()) < 2:  # both workers ready
        assert time.monotonic() < deadline, server.stderr
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}/metrics"


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _samples(url: str) -> Samples:
    status, headers, body = http("GET", url)
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _workers(server: Server) -> set[int]:
    pids = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == server.proc.pid:
                pids.add(int(pid))
    return pids


def _wait_workers(server: Server, count: int, exclude: frozenset[int] = frozenset()) -> set[int]:
    deadline = time.monotonic() + 30
    while True:
        pids = _workers(server) - exclude
        if len(pids) >= count:
            return pids
        assert time.monotonic() < deadline, pids
        time.sleep(0.05)


def _score(server: Server, payload: dict[str, object]) -> tuple[int, dict[str, object]]:
    status, _, body = server.score(json.dumps(payload).encode())
    return status, json.loads(body)


def test_metrics_count_exactly_the_requests_sent_across_two_workers(tmp_path: Path) -> None:
    server, url = _start(tmp_path, PROBE_INIT_DELAY="0.3", SCORING_TIMEOUT_MS="500")
    try:
        _wait_workers(server, 2)
        baseline = _samples(url)
        health_before = _value(
            baseline, "airgap_requests_total", route="/", method="GET", status="200"
        )
        # 30 scoring requests from 6 threads at once, so both workers take some.
        pids: list[int] = []
        statuses: list[int] = []

        def client() -> None:
            for _ in range(5):
                status, answer = _score(server, {"action": "environment"})
                statuses.append(status)
                pids.append(int(str(answer["pid"])))

        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [200] * 30
        assert len(set(pids)) == 2, "both workers must have served"
        for _ in range(3):
            assert _score(server, {"action": "fail"})[0] == 500
        assert _score(server, {"action": "sleep", "seconds": 3})[0] == 500  # cut off at 0.5 s
        for _ in range(4):
            assert http("GET", server.url + "/nowhere/" + str(time.time()))[0] == 404
        assert http("DELETE", server.url + "/score")[0] == 405
        for _ in range(2):
            assert http("GET", server.url + "/")[0] == 200
        samples = _samples(url)
    finally:
        assert server.stop() == 0

    def count(route: str, method: str, status: str) -> float:
        return _value(samples, "airgap_requests_total", route=route, method=method, status=status)

    assert count("/score", "POST", "200") == 30
    assert count("/score", "POST", "500") == 4
    assert count("other", "GET", "404") == 4  # random paths share one label
    assert count("/score", "DELETE", "405") == 1
    assert count("/", "GET", "200") == health_before + 2
    assert _value(samples, "airgap_run_failures_total", reason="exception") == 3
    assert _value(samples, "airgap_run_failures_total", reason="timeout") == 1

    # The latency histogram: every bucket, cumulative, +Inf equal to the count.
    buckets = [
        _value(samples, "airgap_request_duration_seconds_bucket", route="/score", le=str(b))
        for b in BUCKETS
    ]
    inf = _value(samples, "airgap_request_duration_seconds_bucket", route="/score", le="+Inf")
    total = _value(samples, "airgap_request_duration_seconds_count", route="/score")
    assert total == inf == 35  # 30 + 4 POST, and the DELETE refused with 405
    assert buckets == sorted(buckets)
    assert buckets[BUCKETS.index(0.5)] == 34  # all but the one cut off after 0.5 s
    assert buckets[BUCKETS.index(2.5)] == 35
    assert _value(samples, "airgap_request_duration_seconds_sum", route="/score") >= 0.5

    assert _value(samples, "airgap_requests_in_flight") == 0
    assert 0.3 <= _value(samples, "airgap_model_load_seconds") < 5
    assert _value(samples, "airgap_worker_restarts_total") == 0
    assert "metrics on 127.0.0.1 port" in server.stderr


def test_in_flight_requests_and_a_killed_worker_counted_as_a_restart(tmp_path: Path) -> None:
    server, url = _start(tmp_path)
    try:
        first = _wait_workers(server, 2)
        done: list[int] = []
        slow = threading.Thread(
            target=lambda: done.append(_score(server, {"action": "sleep", "seconds": 2})[0])
        )
        slow.start()
        deadline = time.monotonic() + 5
        while _value(_samples(url), "airgap_requests_in_flight") != 1:
            assert time.monotonic() < deadline, "the sleeping request never showed in flight"
            time.sleep(0.05)
        slow.join()
        assert done == [200]
        assert _value(_samples(url), "airgap_requests_in_flight") == 0

        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        replaced = _wait_workers(server, 2, exclude=frozenset({victim}))
        assert victim not in replaced
        deadline = time.monotonic() + 10
        while _value(_samples(url), "airgap_worker_restarts_total") != 1:
            assert time.monotonic() < deadline, "the killed worker was not counted"
            time.sleep(0.05)
        # Its requests are still counted (counters of dead workers are kept).
        samples = _samples(url)
        assert (
            _value(samples, "airgap_requests_total", route="/score", method="POST", status="200")
            == 1
        )
        assert _score(server, {"action": "sleep", "seconds": 0})[0] == 200
        assert _value(_samples(url), "airgap_worker_restarts_total") == 1
    finally:
        assert server.stop() == 0


def test_the_private_metrics_folder_is_made_and_removed_by_the_master(tmp_path: Path) -> None:
    server, _ = _start(tmp_path)
    try:
        # The master sets it before forking: every worker carries the same private folder.
        folders: dict[int, str] = {}
        deadline = time.monotonic() + 10
        while len(folders) < 2:
            assert time.monotonic() < deadline, folders
            _, answer = _score(server, {"action": "environment"})
            env = answer["env"]
            assert isinstance(env, dict)
            folders[int(str(answer["pid"]))] = env["PROMETHEUS_MULTIPROC_DIR"]
        assert len(set(folders.values())) == 1
        folder = Path(next(iter(folders.values())))
        assert folder.is_dir() and folder.name.startswith("airgap-metrics-")
        assert (folder.stat().st_mode & 0o777) == 0o700
        assert any(folder.glob("*.db"))
    finally:
        assert server.stop() == 0
    assert not folder.exists()


def test_without_metrics_nothing_of_prometheus_client_is_loaded(tmp_path: Path) -> None:
    env = {"AZUREML_ENTRY_SCRIPT": PROBE, "AZUREML_MODEL_DIR": str(MODEL_DIR)}
    for metrics in (False, True):
        port = free_port()
        server = Server(tmp_path, {**env, "AIRGAP_METRICS_PORT": str(port) if metrics else ""})
        server.wait_healthy()
        try:
            status, answer = _score(server, {"action": "modules", "names": ["prometheus_client"]})
        finally:
            server.stop()
        assert status == 200
        assert answer == {"prometheus_client": metrics}


def test_a_bad_metrics_port_is_refused(tmp_path: Path) -> None:
    env = {"AZUREML_ENTRY_SCRIPT": PROBE, "AIRGAP_PORT": "5001"}
    for value, message in (
        ("5001", "AIRGAP_METRICS_PORT=5001 is the scoring port too"),
        ("0", "AIRGAP_METRICS_PORT=0 must be at least 1"),
        ("70000", "AIRGAP_METRICS_PORT=70000 is not a TCP port"),
        ("nine", "AIRGAP_METRICS_PORT='nine' is not an integer"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_settings({**env, "AIRGAP_METRICS_PORT": value}, tmp_path)
    assert load_settings({**env, "AIRGAP_METRICS_PORT": "9464"}, tmp_path).metrics_port == 9464
    assert load_settings(env, tmp_path).metrics_port is None
    # The same check at start: the server exits 2 with the message.
    clash = Server(tmp_path, {"AZUREML_ENTRY_SCRIPT": PROBE, "AIRGAP_METRICS_PORT": "0"})
    assert clash.wait_exit(30) == 2
    assert "configuration error: AIRGAP_METRICS_PORT=0 must be at least 1" in clash.stderr
