"""Run inside `unshare -n` by test_patterns: verify, unpack, serve a bundle, send requests.

    python isolated_client.py SPEC.json OUT.json

SPEC: {"bundle", "trust", "dest", "port", "calls": [{"method", "path", "headers", "body_b64"}]}
OUT:  {"verify": rc, "unpack": rc, "responses": [{"status", "headers", "body_b64"}], "log": ...}
Every step uses the real CLI (`python -m bundler`); nothing here reaches a network.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

AIRGAP = [sys.executable, "-m", "bundler"]


def _request(url: str, call: dict) -> dict:
    body = base64.b64decode(call["body_b64"]) if call.get("body_b64") is not None else None
    req = urllib.request.Request(
        url + call["path"], data=body, method=call["method"], headers=call.get("headers") or {}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            status, headers, data = resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as e:
        status, headers, data = e.code, dict(e.headers.items()), e.read()
    return {
        "status": status,
        "headers": {k.lower(): v for k, v in headers.items()},
        "body_b64": base64.b64encode(data).decode(),
    }


def main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    out: dict = {"responses": []}
    trust = ["--trust", spec["trust"]]
    out["verify"] = subprocess.run([*AIRGAP, "verify", spec["bundle"], *trust]).returncode
    unpack = subprocess.run([*AIRGAP, "unpack", spec["bundle"], spec["dest"], *trust, "-q"])
    out["unpack"] = unpack.returncode
    log = Path(spec["dest"] + ".serve.log")
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            [*AIRGAP, "serve", spec["dest"], "--port", str(spec["port"])],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{spec['port']}"
            deadline = time.monotonic() + 180
            while True:
                if server.poll() is not None:
                    break
                try:
                    with urllib.request.urlopen(url + "/", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            if server.poll() is None:
                out["responses"] = [_request(url, call) for call in spec["calls"]]
        finally:
            if server.poll() is None:
                server.terminate()
            out["serve_exit"] = server.wait(60)
    out["log"] = log.read_text(errors="replace")[-6000:]
    Path(out_path).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
