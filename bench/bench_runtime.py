"""Benchmark the scoring runtime against Azure ML's reference server and a one-file ceiling.

One command (online: the first run downloads wheels into bench/.cache/):

    python bench/bench_runtime.py                       # iris example, 2 workers, 9 rounds
    python bench/bench_runtime.py --workers 1 --duration 5 --rounds 2

Three servers score the same iris entry script with the same site-packages tree, the same
worker count and the same gunicorn worker class, all started at once and measured in
interleaved rounds with wrk (Debian package `wrk`) POSTing the same request:

- airgap:    ``python -m airgap_runtime`` from plain copied files, with runtime/lib built from
             bundler/runtime/requirements.lock, in a virtualenv without seed packages (as
             `airgap serve` runs it);
- ceiling:   a one-file WSGI app calling the same run() under the same gunicorn and the same
             gunicorn settings (no routing, limits, timeout, request ids or access log): the
             most a gunicorn server can do;
- reference: PyPI's ``azureml-inference-server-http`` (``azmlinfsrv``), installed by this
             script into a throwaway virtualenv under bench/.cache only: it is never a
             dependency of the project (its wheel is not open-source licensed).

Results (median of the rounds, with ratios) are written as markdown to
bench/results/runtime.md. Targets: airgap >= 1.5x the reference's req/s, and >= 0.9x the
ceiling's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"
RESULTS = REPO / "bench" / "results"
RUNTIME_SRC = REPO / "bundler" / "runtime"
RUNTIME_LOCK = RUNTIME_SRC / "requirements.lock"
REFERENCE_PACKAGE = "azureml-inference-server-http"
PAYLOAD = b'{"data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}'

CEILING_APP = '''"""The ceiling: the least a gunicorn app does to serve run(): no checks, no log."""
import importlib.util
import json
import os

_spec = importlib.util.spec_from_file_location("entry_module", os.environ["AZUREML_ENTRY_SCRIPT"])
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
_module.init()
_run = _module.run


def app(environ, start_response):
    if environ["PATH_INFO"] == "/score":
        size = int(environ.get("CONTENT_LENGTH") or 0)
        out = json.dumps(_run(environ["wsgi.input"].read(size).decode("utf-8"))).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(out)))])
        return [out]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "7")])
    return [b"Healthy"]
'''

WRK_LUA = """-- POST the iris request; print one machine-readable line at the end.
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, ' ..
    '"connect": %%d, "read": %%d, "write": %%d, "status": %%d, "timeout": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout))
end
"""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kwargs: object) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def build_target_dir(lock: Path, name: str) -> Path:
    """pip install a hash-locked requirements file into a cached --target folder."""
    target = CACHE / f"{name}-{_digest(lock)}"
    if (target / ".complete").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--require-hashes",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--target",
            str(target),
            "-r",
            str(lock),
        ]
    )
    (target / ".complete").write_text("")
    return target


def build_venv(name: str, packages: list[str]) -> Path:
    """A cached virtualenv; without packages it has no seed packages at all."""
    venv = CACHE / name
    if (venv / ".complete").exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    seed = [] if packages else ["--no-seed"]
    run([sys.executable, "-m", "virtualenv", "--quiet", *seed, str(venv)])
    if packages:
        run(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *packages,
            ]
        )
    (venv / ".complete").write_text("")
    return venv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    description: str
    cmd: list[str]
    env: dict[str, str]
    cwd: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    rounds: list[dict[str, float]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, logdir: Path) -> None:
        out = (logdir / f"{self.name}.log").open("wb")
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            cwd=self.cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_healthy(self, timeout: float = 180.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}; see its log")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"{self.name} did not become healthy in {timeout}s")

    def score_once(self) -> bytes:
        req = urllib.request.Request(
            self.url + "/score", data=PAYLOAD, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200
            body: bytes = resp.read()
            return body

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server's master and workers so far.

        On a shared machine this is steadier than wall-clock throughput: it counts only the
        work the server itself did, whatever else the cores were busy with.
        """
        assert self.proc is not None
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in [self.proc.pid, *_children(self.proc.pid)]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # a worker that just exited
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / tick

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (gunicorn workers, and anything they started)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = [int(x) for x in task.read_text().split()]
            except OSError:
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


def wrk(url: str, lua: Path, connections: int, duration: float, threads: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration:g}s",
            "--timeout",
            "30s",
            "-s",
            str(lua),
            url + "/score",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    data = json.loads(line[len("WRKJSON ") :])
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {
        "rps": data["requests"] / (data["duration_us"] / 1e6),
        "p50_ms": data["p50_us"] / 1000.0,
        "p99_ms": data["p99_us"] / 1000.0,
        "requests": float(data["requests"]),
        "errors": float(errors),
        "status_errors": float(data["status"]),
    }


def _version(python: Path, dist: str, path: Path | None = None) -> str:
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    env = {"PATH": os.environ.get("PATH", "")}
    if path is not None:
        env["PYTHONPATH"] = str(path)
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env)
    return proc.stdout.strip() or "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--example",
        type=Path,
        default=REPO / "examples" / "iris-sklearn",
        help="folder with score.py, model/ and requirements.lock",
    )
    parser.add_argument(
        "--site-packages",
        type=Path,
        help="prebuilt site-packages for the example (default: built from "
        "its requirements.lock into bench/.cache)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, default=RESULTS / "runtime.md")
    args = parser.parse_args(argv)

    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")
    example = args.example.resolve()
    entry = example / "score.py"
    model = example / "model"
    if not entry.is_file() or not model.exists():
        raise SystemExit(f"{example} needs score.py and model/")
    CACHE.mkdir(parents=True, exist_ok=True)
    site = (
        args.site_packages.resolve()
        if args.site_packages
        else build_target_dir(example / "requirements.lock", "site")
    )
    lib = build_target_dir(RUNTIME_LOCK, "runtime-lib")
    clean = build_venv("clean-venv", [])
    reference = build_venv("reference-venv", [REFERENCE_PACKAGE])
    clean_python = clean / "bin" / "python"

    work = CACHE / "run"
    shutil.rmtree(work, ignore_errors=True)
    (work / "runtime" / "airgap_runtime").mkdir(parents=True)
    for src in RUNTIME_SRC.glob("*.py"):
        shutil.copy(src, work / "runtime" / "airgap_runtime" / src.name)
    (work / "ceiling").mkdir()
    (work / "ceiling" / "ceiling_app.py").write_text(CEILING_APP)
    lua = work / "post.lua"
    lua.write_text(WRK_LUA % PAYLOAD.decode())
    logs = work / "logs"
    logs.mkdir()

    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    base.pop("VIRTUAL_ENV", None)
    common = {
        **base,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "OMP_NUM_THREADS": "1",
        "AZUREML_ENTRY_SCRIPT": str(entry),
        "AZUREML_MODEL_DIR": str(model),
        "WORKER_COUNT": str(args.workers),
    }
    w = str(args.workers)
    servers = [
        Server(
            "airgap",
            "this runtime (python -m airgap_runtime)",
            [
                str(clean_python),
                "-m",
                "airgap_runtime",
                "--host",
                "127.0.0.1",
                "--port",
                str(port := free_port()),
            ],
            {
                **common,
                "PYTHONPATH": f"{work / 'runtime'}:{lib}",
                "AZUREML_EXTRA_PYTHON_LIB_PATH": str(site),
            },
            example,
            port,
        ),
        Server(
            "ceiling",
            "one-file gunicorn app calling run()",
            [
                str(clean_python),
                "-m",
                "gunicorn",
                "--workers",
                w,
                "--worker-class",
                "sync",
                # The runtime's own choice for gunicorn's heartbeat files; given to the
                # ceiling too, so the comparison measures the app and nothing else.
                "--worker-tmp-dir",
                "/dev/shm",
                "--bind",
                f"127.0.0.1:{(port := free_port())}",
                "ceiling_app:app",
            ],
            {**common, "PYTHONPATH": f"{site}:{work / 'ceiling'}:{lib}"},
            work / "ceiling",
            port,
        ),
        Server(
            "reference",
            f"{REFERENCE_PACKAGE} (azmlinfsrv)",
            [
                str(reference / "bin" / "azmlinfsrv"),
                "--entry_script",
                str(entry),
                "--port",
                str(port := free_port()),
            ],
            {**common, "PYTHONPATH": str(site)},
            example,
            port,
        ),
    ]
    versions = {
        "gunicorn (airgap, ceiling)": _version(clean_python, "gunicorn", lib),
        REFERENCE_PACKAGE: _version(reference / "bin" / "python", REFERENCE_PACKAGE),
        "gunicorn (reference)": _version(reference / "bin" / "python", "gunicorn"),
    }
    try:
        for s in servers:
            log(f"starting {s.name} on {s.url}")
            s.start(logs)
        for s in servers:
            s.wait_healthy()
        answers = {s.name: json.loads(s.score_once()) for s in servers}
        log(f"answers: {answers}")
        if len({json.dumps(a, sort_keys=True) for a in answers.values()}) != 1:
            raise SystemExit(f"the servers disagree: {answers}")
        for s in servers:
            log(f"warming up {s.name}")
            wrk(s.url, lua, args.connections, args.warmup, args.threads)
        for r in range(args.rounds):
            # Rotate the order each round so drift (thermal, noisy neighbours) is shared.
            order = servers[r % len(servers) :] + servers[: r % len(servers)]
            for s in order:
                cpu_before = s.cpu_seconds()
                result = wrk(s.url, lua, args.connections, args.duration, args.threads)
                cpu = s.cpu_seconds() - cpu_before
                result["cpu_us"] = cpu / max(result["requests"], 1.0) * 1e6
                s.rounds.append(result)
                log(
                    f"round {r + 1} {s.name}: {result['rps']:.0f} req/s, "
                    f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                    f"server CPU {result['cpu_us']:.0f} us/request, "
                    f"errors {result['errors']:.0f}"
                )
    finally:
        for s in servers:
            s.stop()

    def med(s: Server, key: str) -> float:
        return statistics.median(x[key] for x in s.rounds)

    by = {s.name: s for s in servers}
    ref_rps = med(by["reference"], "rps")
    ceiling_rps = med(by["ceiling"], "rps")

    def paired(a: str, b: str) -> float:
        # Each round measures the servers back to back: the median of the per-round ratios
        # cancels slow drift in the machine's load better than a ratio of medians.
        return statistics.median(
            x["rps"] / y["rps"] for x, y in zip(by[a].rounds, by[b].rounds, strict=True)
        )

    def capacity(a: str, b: str) -> float:
        # Requests per CPU-second, a over b: the throughput ratio on otherwise idle cores.
        return statistics.median(
            y["cpu_us"] / x["cpu_us"] for x, y in zip(by[a].rounds, by[b].rounds, strict=True)
        )

    vs_ref, vs_ceiling = paired("airgap", "reference"), paired("airgap", "ceiling")
    cap_ref, cap_ceiling = capacity("airgap", "reference"), capacity("airgap", "ceiling")
    load = os.getloadavg()
    where = example.relative_to(REPO) if example.is_relative_to(REPO) else example
    lines = [
        "# Scoring runtime benchmark",
        "",
        "Generated by `python bench/bench_runtime.py` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"- Machine: {os.cpu_count()} CPUs, {platform.platform()}, Python "
        f"{platform.python_version()}; load average at the end {load[0]:.2f} "
        "(the machine is shared: rounds are interleaved and ratios paired per round)",
        f"- Workload: `{where}` score.py, POST /score `{PAYLOAD.decode()}`",
        f"- Load: wrk {args.threads} thread(s), {args.connections} connections, "
        f"{args.duration:g} s per measurement after {args.warmup:g} s warm-up, "
        f"{args.rounds} interleaved rounds; every server with {args.workers} sync worker(s)",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        "| server | what | req/s (median) | p50 ms | p99 ms | server CPU us/request | errors "
        "| req/s vs reference | req/s vs ceiling |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in servers:
        rps = med(s, "rps")
        lines.append(
            f"| {s.name} | {s.description} | {rps:.0f} | {med(s, 'p50_ms'):.2f} | "
            f"{med(s, 'p99_ms'):.2f} | {med(s, 'cpu_us'):.0f} | "
            f"{sum(x['errors'] for x in s.rounds):.0f} | "
            f"{rps / ref_rps:.2f}x | {rps / ceiling_rps:.2f}x |"
        )
    lines += [
        "",
        "Paired per-round ratios (median over rounds):",
        "",
        f"- airgap / reference = **{vs_ref:.2f}x** (target >= 1.5x: "
        f"{'met' if vs_ref >= 1.5 else 'NOT met'})",
        f"- airgap / ceiling = **{vs_ceiling:.2f}x** (target >= 0.90x: "
        f"{'met' if vs_ceiling >= 0.9 else 'NOT met'})",
        "",
        "Requests per server CPU-second, paired per round (median; steadier on a shared "
        "machine, and what req/s converges to on idle cores):",
        "",
        f"- airgap / reference = **{cap_ref:.2f}x** (target >= 1.5x: "
        f"{'met' if cap_ref >= 1.5 else 'NOT met'})",
        f"- airgap / ceiling = **{cap_ceiling:.2f}x** (target >= 0.90x: "
        f"{'met' if cap_ceiling >= 0.9 else 'NOT met'})",
        "",
        "Per round (req/s):",
        "",
        *(f"- {s.name}: " + ", ".join(f"{x['rps']:.0f}" for x in s.rounds) for s in servers),
        "",
        "Per round (server CPU us/request):",
        "",
        *(f"- {s.name}: " + ", ".join(f"{x['cpu_us']:.0f}" for x in s.rounds) for s in servers),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    log(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
