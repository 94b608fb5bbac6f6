"""What key auth and metrics cost: the runtime plain, with auth, with metrics, with both.

One command (online: the first run downloads wheels into bench/.cache/, as bench_runtime.py):

    python bench/bench_security.py                      # iris example, 2 workers, 7 rounds
    python bench/bench_security.py --rounds 3 --duration 3 --connections 1,8,64

The same runtime (plain copied files, runtime/lib from the lock, a virtualenv without seed
packages) is started four times on the iris example and measured in interleaved rounds with
wrk POSTing the same request; the auth variants send ``Authorization: Bearer <key>``, and the
metrics variants are scraped once a second during each measurement, as Prometheus would.
Results (medians, and each variant's throughput and CPU per request against the plain
server, paired by round) go to bench/results/security.md. Target: auth costs at most 5% of
throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from bench_runtime import (
    CACHE,
    PAYLOAD,
    REPO,
    RESULTS,
    RUNTIME_LOCK,
    RUNTIME_SRC,
    WRK_LUA,
    Server,
    build_target_dir,
    build_venv,
    free_port,
    log,
    wrk,
)

VARIANTS = ("plain", "auth", "metrics", "auth+metrics")


def _scrape_every_second(url: str, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                resp.read()
        except OSError:
            pass


def in_process_costs(keys: Path, key: str, folder: Path) -> dict[str, float]:
    """Microseconds per request of the auth check and of the metrics updates, timed in this
    process (free of the HTTP noise of a shared machine). Run in a child process: metrics
    need PROMETHEUS_MULTIPROC_DIR set before prometheus_client is imported."""
    code = f"""
import json, os, timeit
os.environ["PROMETHEUS_MULTIPROC_DIR"] = {str(folder)!r}
from airgap_runtime.auth import KeyAuth
from airgap_runtime.metrics import Metrics
auth = KeyAuth({str(keys)!r})
header = "Bearer " + {key!r}
m = Metrics()
def request():
    m.request_started()
    m.observe("/score", "POST", 200, 0.001)
    m.request_ended()
n = 100000
print(json.dumps({{
    "auth_us": timeit.timeit(lambda: auth.allows(header), number=n) / n * 1e6,
    "metrics_us": timeit.timeit(request, number=n // 4) / (n // 4) * 1e6,
}}))
"""
    folder.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(folder.parent / "runtime")},
    ).stdout
    costs: dict[str, float] = json.loads(out)
    return costs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--example", type=Path, default=REPO / "examples" / "iris-sklearn")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", default="8", help="comma-separated, e.g. 1,8,64")
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS / "security.md")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")
    example = args.example.resolve()
    site = build_target_dir(example / "requirements.lock", "site")
    lib = build_target_dir(RUNTIME_LOCK, "runtime-lib")
    python = build_venv("clean-venv", []) / "bin" / "python"

    work = CACHE / "security"
    shutil.rmtree(work, ignore_errors=True)
    (work / "runtime" / "airgap_runtime").mkdir(parents=True)
    for src in RUNTIME_SRC.glob("*.py"):
        shutil.copy(src, work / "runtime" / "airgap_runtime" / src.name)
    (work / "logs").mkdir()
    key = secrets.token_urlsafe(32)
    keys = work / "keys"
    keys.write_text(key + "\n")
    keys.chmod(0o600)
    plain_lua = work / "post.lua"
    plain_lua.write_text(WRK_LUA % PAYLOAD.decode())
    auth_lua = work / "post-auth.lua"
    auth_lua.write_text(
        (WRK_LUA % PAYLOAD.decode()).replace(
            'wrk.headers["Content-Type"] = "application/json"\n',
            f'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "Bearer {key}"\n',
        )
    )

    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    base.pop("VIRTUAL_ENV", None)
    common = {
        **base,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "OMP_NUM_THREADS": "1",
        "AZUREML_ENTRY_SCRIPT": str(example / "score.py"),
        # score.py loads $AZUREML_MODEL_DIR/model/model.joblib (a bundle's model/ holds the
        # project's model/ folder), so the example's own folder plays that part.
        "AZUREML_MODEL_DIR": str(example),
        "AZUREML_EXTRA_PYTHON_LIB_PATH": str(site),
        "WORKER_COUNT": str(args.workers),
        "PYTHONPATH": f"{work / 'runtime'}:{lib}",
    }
    servers: dict[str, Server] = {}
    metrics_urls: dict[str, str] = {}
    for name in VARIANTS:
        env = dict(common)
        if "auth" in name:
            env["AIRGAP_AUTH_KEY_FILE"] = str(keys)
        if "metrics" in name:
            metrics_port = free_port()
            env["AIRGAP_METRICS_PORT"] = str(metrics_port)
            metrics_urls[name] = f"http://127.0.0.1:{metrics_port}/metrics"
        port = free_port()
        cmd = [str(python), "-m", "airgap_runtime", "--host", "127.0.0.1", "--port", str(port)]
        servers[name] = Server(name, name, cmd, env, example, port)

    levels = [int(c) for c in args.connections.split(",")]
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        for s in servers.values():
            s.start(work / "logs")
        for s in servers.values():
            s.wait_healthy()
        for name, s in servers.items():
            lua = auth_lua if "auth" in name else plain_lua
            wrk(s.url, lua, 8, args.warmup, 1)
        for c in levels:
            for r in range(args.rounds):
                order = list(VARIANTS[r % 4 :] + VARIANTS[: r % 4])
                for name in order:
                    s = servers[name]
                    lua = auth_lua if "auth" in name else plain_lua
                    stop = threading.Event()
                    scraper = None
                    if name in metrics_urls:
                        scraper = threading.Thread(
                            target=_scrape_every_second, args=(metrics_urls[name], stop)
                        )
                        scraper.start()
                    cpu = s.cpu_seconds()
                    out = wrk(s.url, lua, c, args.duration, 1)
                    out["cpu_us"] = (s.cpu_seconds() - cpu) / max(out["requests"], 1) * 1e6
                    stop.set()
                    if scraper is not None:
                        scraper.join()
                    if out["status_errors"]:
                        raise SystemExit(f"{name}: {out['status_errors']:.0f} non-2xx answers")
                    results.setdefault((name, c), []).append(out)
                    log(
                        f"c={c} round {r + 1} {name}: {out['rps']:.0f} req/s, "
                        f"p99 {out['p99_ms']:.2f} ms, CPU {out['cpu_us']:.0f} us/request"
                    )
    finally:
        for s in servers.values():
            s.stop()

    lines = [
        "# Key auth and metrics: what they cost",
        "",
        f"`python bench/bench_security.py --workers {args.workers} --connections "
        f"{args.connections} --duration {args.duration:g} --rounds {args.rounds}` on "
        f"{platform.machine()} with {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]} (wrk, iris example). Medians of the rounds; ratios are "
        "medians of per-round ratios against the plain server (paired, interleaved).",
        "",
        "| connections | variant | req/s | p50 ms | p99 ms | server CPU us/request | "
        "req/s vs plain | CPU vs plain |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in levels:
        plain = results[("plain", c)]
        for name in VARIANTS:
            rows = results[(name, c)]
            rps = statistics.median(x["rps"] for x in rows)
            pairs = list(zip(rows, plain, strict=True))
            ratio = statistics.median(a["rps"] / b["rps"] for a, b in pairs)
            cpu = statistics.median(a["cpu_us"] / b["cpu_us"] for a, b in pairs)
            lines.append(
                f"| {c} | {name} | {rps:.0f} | "
                f"{statistics.median(x['p50_ms'] for x in rows):.2f} | "
                f"{statistics.median(x['p99_ms'] for x in rows):.2f} | "
                f"{statistics.median(x['cpu_us'] for x in rows):.0f} | {ratio:.3f} | {cpu:.3f} |"
            )
    costs = in_process_costs(keys, key, work / "multiproc")
    plain_cpu = statistics.median(x["cpu_us"] for x in results[("plain", levels[0])])
    lines += [
        "",
        "Timed in process (no HTTP, no noise from other load): the auth check takes "
        f"{costs['auth_us']:.2f} us per request and the metrics updates "
        f"{costs['metrics_us']:.2f} us, {costs['auth_us'] / plain_cpu:.2%} and "
        f"{costs['metrics_us'] / plain_cpu:.2%} of the plain server's "
        f"{plain_cpu:.0f} us of CPU per request.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
