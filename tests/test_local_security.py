"""`airgap serve --auth-key-file` and `--metrics-port` against a real signed, unpacked bundle."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from entry_scripts.harness import HERE, MODEL_DIR, free_port, http
from prometheus_client.parser import text_string_to_metric_families
from test_local import TARGET, _host_package_files, _wait_line

from bundler.formats.signing import generate_keypair, load_private_key
from bundler.pack import runtime_sources
from bundler.pack.assemble import BundleMeta, SourceFile, write_bundle
from bundler.verify.unpack import unpack


@pytest.fixture(scope="module")
def dest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A signed bundle of probe.py whose runtime/lib carries prometheus_client, unpacked."""
    work = tmp_path_factory.mktemp("bundle")
    generate_keypair(work, None)
    files = [
        SourceFile("app/score.py", HERE / "probe.py", 0o644),
        SourceFile("model/linear.json", MODEL_DIR / "linear.json", 0o644),
        *runtime_sources(),
        *_host_package_files("gunicorn", "runtime/lib"),
        *_host_package_files("packaging", "runtime/lib"),
        *_host_package_files("prometheus_client", "runtime/lib"),
    ]
    meta = BundleMeta(
        name="probe",
        version="1.0.0",
        created=1_700_000_000,
        target=TARGET,
        entry_script="app/score.py",
        mode="mounted",
        env={},
    )
    bundle = work / "probe.airgap"
    write_bundle(bundle, files, meta, load_private_key(work / "airgap.key", None))
    unpack(bundle, work / "dest", [work / "airgap.pub"])
    return work / "dest"


def _key_file(folder: Path, *keys: str, mode: int = 0o600) -> Path:
    path = folder / "endpoint-keys"
    path.write_text("".join(f"{k}\n" for k in keys))
    path.chmod(mode)
    return path


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def test_cli_serve_with_auth_key_file_and_metrics_port(dest: Path, tmp_path: Path) -> None:
    key, next_key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    keys = _key_file(tmp_path, key, next_key)
    port, metrics_port = free_port(), free_port()
    log = tmp_path / "cli.err"
    cmd = [
        *(sys.executable, "-m", "bundler", "serve", str(dest), "--port", str(port)),
        *("--auth-key-file", str(keys), "--metrics-port", str(metrics_port), "--json"),
    ]
    env = {**os.environ, "WORKER_COUNT": "2"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, stderr=log.open("w"), env=env)
    try:
        ready = json.loads(_wait_line(proc))
        url = ready["url"]
        payload = json.dumps({"action": "sleep", "seconds": 0}).encode()
        assert http("POST", url + "/score", payload)[0] == 401
        assert http("POST", url + "/score", payload, {"Authorization": "Bearer nope"})[0] == 401
        for k in (key, next_key):
            status, _, body = http(
                "POST", url + "/score", payload, {"Authorization": f"Bearer {k}"}
            )
            assert (status, json.loads(body)) == (200, {"slept": 0})
        assert http("GET", url + "/")[0] == 200  # the health route stays open

        status, _, body = http("GET", f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        counts = {
            (s.labels["route"], s.labels["method"], s.labels["status"]): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
            if s.name == "airgap_requests_total"
        }
        assert counts[("/score", "POST", "200")] == 2
        assert counts[("/score", "POST", "401")] == 2

        # The key is in no process's command line or environment (ps shows both), only the path.
        deadline = time.monotonic() + 30
        while len(pids := _descendants(proc.pid)) < 4:  # the CLI, the master, two workers
            assert time.monotonic() < deadline, pids
            time.sleep(0.05)
        for pid in pids:
            for name in ("cmdline", "environ"):
                assert key.encode() not in Path(f"/proc/{pid}/{name}").read_bytes()
        listing = subprocess.run(
            ["ps", "-e", "-ww", "-o", "args="], capture_output=True, text=True, check=True
        ).stdout
        assert "airgap_runtime" in listing and key not in listing
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)
    text = log.read_text()
    assert "key auth on" in text and " 401 " in text
    assert key not in text and next_key not in text
    # Nor anywhere in DEST (its cached venv included).
    for path in dest.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert key.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(
    ("mode", "keys", "message"),
    [
        (0o644, 1, "lets its group or others read or change it; restrict it to its owner"),
        (0o600, 3, "at most 2"),
    ],
)
def test_cli_serve_refuses_an_unusable_key_file_before_starting(
    dest: Path, tmp_path: Path, mode: int, keys: int, message: str
) -> None:
    key = secrets.token_urlsafe(32)
    path = _key_file(tmp_path, *([key] * keys), mode=mode)
    port = free_port()
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "bundler", "serve", str(dest)),
            *("--port", str(port), "--auth-key-file", str(path)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "one key per line, at most two" in proc.stderr  # the remedy
    assert key not in proc.stderr + proc.stdout
    with pytest.raises(OSError):
        http("GET", f"http://127.0.0.1:{port}/", timeout=2)


def test_cli_serve_refuses_a_metrics_port_equal_to_the_scoring_port(dest: Path) -> None:
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "bundler", "serve", str(dest)),
            *("--port", "5011", "--metrics-port", "5011"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "--metrics-port 5011 is the scoring port too" in proc.stderr


def test_cli_run_local_passes_the_key_file_and_metrics_port(dest: Path, tmp_path: Path) -> None:
    key = secrets.token_urlsafe(32)
    keys = _key_file(tmp_path, key)
    port, metrics_port = free_port(), free_port()
    cmd = [
        *(sys.executable, "-m", "bundler", "run", str(dest), "--local", "--port", str(port)),
        *("--auth-key-file", str(keys), "--metrics-port", str(metrics_port), "--json"),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, stderr=subprocess.DEVNULL)
    try:
        text = _wait_line(proc)
        while not text.startswith("{") or not text.rstrip().endswith("}"):
            assert proc.stdout is not None
            text += proc.stdout.readline()  # the rest of the indented JSON, already buffered
        uri = json.loads(text)["scoring_uri"]
        payload = json.dumps({"action": "sleep", "seconds": 0}).encode()
        assert http("POST", uri, payload)[0] == 401
        assert http("POST", uri, payload, {"Authorization": f"Bearer {key}"})[0] == 200
        status, _, body = http("GET", f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        assert b'airgap_requests_total{method="POST",route="/score",status="200"} 1.0' in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)
