"""Test support: start the real scoring server as a subprocess on a free port and talk HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL_DIR = HERE / "model"
REPO = HERE.parent.parent

# Variables of the runtime's contract: never inherited from the test runner's environment.
CONTRACT_VARS = (
    "AZUREML_ENTRY_SCRIPT",
    "AZUREML_MODEL_DIR",
    "AZUREML_EXTRA_PYTHON_LIB_PATH",
    "AZUREML_EXTRA_REQUIREMENTS_TXT",
    "WORKER_COUNT",
    "WORKER_TIMEOUT",
    "SCORING_TIMEOUT_MS",
    "AZUREML_LOG_LEVEL",
    "AIRGAP_MAX_REQUEST_BYTES",
    "AIRGAP_HOST",
    "AIRGAP_PORT",
    "AML_CORS_ORIGINS",
    "AML_APP_ROOT",
    "AIRGAP_HEADER_TIMEOUT",
    "AIRGAP_BODY_TIMEOUT",
    "AIRGAP_MIN_BODY_RATE",
    "AIRGAP_WRITE_TIMEOUT",
    "AIRGAP_KEEPALIVE_TIMEOUT",
    "AIRGAP_MAX_CONNECTIONS",
    "AIRGAP_TLS_CERT",
    "AIRGAP_TLS_KEY",
    "AIRGAP_PARENT_PID",
    "AIRGAP_AUTH_KEY_FILE",
    "AIRGAP_METRICS_PORT",
    "AIRGAP_DEBUG_ERRORS",
    "PROMETHEUS_MULTIPROC_DIR",
    "SERVICE_NAME",
    "SERVICE_VERSION",
    "SERVICE_PATH_PREFIX",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request; returns (status, lower-cased headers, body) for any status."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


class Server:
    """`python -m <module>` serving an entry script; logs go to files under ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        *,
        module: str = "bundler.runtime",
        python: str = sys.executable,
        cwd: Path | None = None,
        base_env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = dict(base_env if base_env is not None else os.environ)
        for var in CONTRACT_VARS:
            full.pop(var, None)
        full.update(env)
        full["PYTHONDONTWRITEBYTECODE"] = "1"
        self.stdout_path = workdir / f"server-{self.port}.out"
        self.stderr_path = workdir / f"server-{self.port}.err"
        self._out = self.stdout_path.open("wb")
        self._err = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [python, "-m", module, "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=cwd or workdir,
            env=full,
            stdout=self._out,
            stderr=self._err,
            start_new_session=True,
        )

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.stderr}")
            try:
                status, _, body = http("GET", self.url + "/", timeout=5)
                if status == 200 and body == b"Healthy":
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not healthy after {timeout}s:\n{self.stderr}")

    def wait_exit(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._close()

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._close()
        return self.proc.returncode

    def _close(self) -> None:
        self._out.close()
        self._err.close()

    def score(
        self, payload: bytes, headers: dict[str, str] | None = None, timeout: float = 30.0
    ) -> tuple[int, dict[str, str], bytes]:
        return http(
            "POST",
            self.url + "/score",
            payload,
            {"Content-Type": "application/json", **(headers or {})},
            timeout,
        )

    def access_lines(self) -> list[str]:
        return [line for line in self.stdout.splitlines() if " access " in line]
