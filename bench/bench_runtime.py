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
bench/results/runtime.md. Targets: airgap >= 1.5x the reference's req/s at every concurrency
measured (1, 8 and 64 connections), and >= 0.9x the ceiling's.

Two more measures, in the same run (issue 8):

- auth and TLS: the same airgap server with key auth on (`AIRGAP_AUTH_KEY_FILE`, every wrk
  request sends `Authorization: Bearer ...`) and with TLS (`AIRGAP_TLS_CERT`/`AIRGAP_TLS_KEY`,
  a self-signed P-256 certificate), side by side with the plain one. Target: auth costs at
  most 5% of throughput.
- slow clients: 64 connections that send their request headers one byte at a time (and
  reconnect whenever the server drops them) are held open against airgap and against the
  reference while wrk measures normal requests. Target: airgap's p99 under slow clients stays
  under 3x its p99 without them.
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
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bundler.pack import runtime_sources  # noqa: E402

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
%s

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
    tls: bool = False
    proc: subprocess.Popen[bytes] | None = None
    # measurements by scenario name ("c8", "slow", ...), one entry per round
    rounds: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _open(self, req: urllib.request.Request | str, timeout: float) -> object:
        # The benchmark's own self-signed certificate: not verified (wrk does not either).
        context = ssl._create_unverified_context() if self.tls else None
        return urllib.request.urlopen(req, timeout=timeout, context=context)

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
                with self._open(self.url + "/", 5) as resp:  # type: ignore[attr-defined]
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"{self.name} did not become healthy in {timeout}s")

    def score_once(self, headers: dict[str, str] | None = None) -> bytes:
        req = urllib.request.Request(
            self.url + "/score",
            data=PAYLOAD,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        with self._open(req, 30) as resp:  # type: ignore[attr-defined]
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


class SlowClients:
    """``count`` connections that each send a request's headers one byte every ``gap`` s.

    When the server drops one (a header deadline), it reconnects at once, so ``count`` slow
    connections stay open for as long as the attack runs: what a slowloris client does.
    """

    def __init__(self, port: int, count: int, gap: float = 0.5) -> None:
        self.port, self.count, self.gap = port, count, gap
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.reconnects = 0

    def _one(self) -> None:
        request = b"POST /score HTTP/1.1\r\nHost: bench\r\nX-Slow: " + b"a" * 10_000
        while not self._stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                    for i in range(len(request)):
                        if self._stop.wait(self.gap):
                            return
                        sock.sendall(request[i : i + 1])
            except OSError:
                self.reconnects += 1
                self._stop.wait(0.05)

    def __enter__(self) -> SlowClients:
        for _ in range(self.count):
            t = threading.Thread(target=self._one, daemon=True)
            t.start()
            self._threads.append(t)
        time.sleep(2.0)  # let them all connect and start dribbling
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


def wrk(url: str, lua: Path, connections: int, duration: float, threads: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",  # wrk takes whole seconds
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
    if data["requests"] == 0:
        data["p50_us"] = data["p99_us"] = 0
    return {
        "rps": data["requests"] / (data["duration_us"] / 1e6),
        "p50_ms": data["p50_us"] / 1000.0,
        "p99_ms": data["p99_us"] / 1000.0,
        "requests": float(data["requests"]),
        "errors": float(errors),
        "status_errors": float(data["status"]),
        "timeouts": float(data["timeout"]),
    }


def _version(python: Path, dist: str, path: Path | None = None) -> str:
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    env = {"PATH": os.environ.get("PATH", "")}
    if path is not None:
        env["PYTHONPATH"] = str(path)
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env)
    return proc.stdout.strip() or "?"


def _auth_key_file(work: Path) -> tuple[Path, str]:
    key = hashlib.sha256(os.urandom(32)).hexdigest()
    path = work / "auth.keys"
    path.write_text(key + "\n")
    path.chmod(0o600)
    return path, key


def _tls_files(work: Path) -> tuple[Path, Path]:
    cert, key = work / "tls.crt", work / "tls.key"
    run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


def _lay_out_runtime(work: Path) -> Path:
    """The runtime's files as a bundle holds them (runtime/airgap_runtime, runtime/azureml...)."""
    root = work / "runtime"
    for f in runtime_sources():
        path = work / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        assert isinstance(f.source, bytes)
        path.write_bytes(f.source)
    return root


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
    parser.add_argument(
        "--concurrency",
        default="1,8,64",
        help="wrk connections for the throughput comparison, comma-separated",
    )
    parser.add_argument("--slow-clients", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "runtime.md")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",") if x]
    normal = 8 if 8 in levels else levels[0]  # the concurrency of the auth/TLS/slow measures

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
    work.mkdir(parents=True)
    runtime = _lay_out_runtime(work)
    (work / "ceiling").mkdir()
    (work / "ceiling" / "ceiling_app.py").write_text(CEILING_APP)
    key_file, key = _auth_key_file(work)
    cert, tls_key = _tls_files(work)
    lua = work / "post.lua"
    lua.write_text(WRK_LUA % (PAYLOAD.decode(), ""))
    lua_auth = work / "post-auth.lua"
    lua_auth.write_text(
        WRK_LUA % (PAYLOAD.decode(), f'wrk.headers["Authorization"] = "Bearer {key}"')
    )
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
        # Azure ML's layout: the registered folder `model` keeps its name under the model dir.
        "AZUREML_MODEL_DIR": str(model.parent),
        "WORKER_COUNT": str(args.workers),
    }
    airgap_env = {
        **common,
        "PYTHONPATH": f"{runtime}:{lib}",
        "AZUREML_EXTRA_PYTHON_LIB_PATH": str(site),
    }

    def airgap(name: str, what: str, extra: dict[str, str], tls: bool = False) -> Server:
        port = free_port()
        cmd = [str(clean_python), "-m", "airgap_runtime", "--host", "127.0.0.1", "--port"]
        return Server(name, what, [*cmd, str(port)], {**airgap_env, **extra}, example, port, tls)

    w = str(args.workers)
    ceiling_port, reference_port = free_port(), free_port()
    servers = [
        airgap("airgap", "this runtime (python -m airgap_runtime)", {}),
        airgap("airgap-auth", "the same, key auth on", {"AIRGAP_AUTH_KEY_FILE": str(key_file)}),
        airgap(
            "airgap-tls",
            "the same, TLS (P-256, TLS 1.2+)",
            {"AIRGAP_TLS_CERT": str(cert), "AIRGAP_TLS_KEY": str(tls_key)},
            tls=True,
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
                f"127.0.0.1:{ceiling_port}",
                "ceiling_app:app",
            ],
            {**common, "PYTHONPATH": f"{site}:{work / 'ceiling'}:{lib}"},
            work / "ceiling",
            ceiling_port,
        ),
        Server(
            "reference",
            f"{REFERENCE_PACKAGE} (azmlinfsrv)",
            [
                str(reference / "bin" / "azmlinfsrv"),
                "--entry_script",
                str(entry),
                "--port",
                str(reference_port),
            ],
            {**common, "PYTHONPATH": str(site)},
            example,
            reference_port,
        ),
    ]
    by = {s.name: s for s in servers}
    versions = {
        "gunicorn (airgap, ceiling)": _version(clean_python, "gunicorn", lib),
        REFERENCE_PACKAGE: _version(reference / "bin" / "python", REFERENCE_PACKAGE),
        "gunicorn (reference)": _version(reference / "bin" / "python", "gunicorn"),
    }
    # (scenario, servers, connections, lua, slow clients)
    plan: list[tuple[str, list[str], int, Path, int]] = [
        (f"c{c}", ["airgap", "ceiling", "reference"], c, lua, 0) for c in levels
    ]
    plan.append((f"auth-c{normal}", ["airgap-auth"], normal, lua_auth, 0))
    plan.append((f"tls-c{normal}", ["airgap-tls"], normal, lua, 0))
    plan.append(("slow", ["airgap", "reference"], normal, lua, args.slow_clients))

    def measure(s: Server, scenario: str, conns: int, script: Path, slow: int) -> None:
        cpu_before = s.cpu_seconds()
        if slow:
            with SlowClients(s.port, slow) as attack:
                result = wrk(s.url, script, conns, args.duration, args.threads)
            result["reconnects"] = float(attack.reconnects)
        else:
            result = wrk(s.url, script, conns, args.duration, args.threads)
        cpu = s.cpu_seconds() - cpu_before
        result["cpu_us"] = cpu / max(result["requests"], 1.0) * 1e6
        s.rounds.setdefault(scenario, []).append(result)
        log(
            f"{scenario} {s.name}: {result['rps']:.0f} req/s, p50 {result['p50_ms']:.2f} ms, "
            f"p99 {result['p99_ms']:.2f} ms, CPU {result['cpu_us']:.0f} us/request, "
            f"errors {result['errors']:.0f}"
        )

    try:
        for s in servers:
            log(f"starting {s.name} on {s.url}")
            s.start(logs)
        for s in servers:
            s.wait_healthy()
        answers = {
            s.name: json.loads(
                s.score_once({"Authorization": f"Bearer {key}"} if s.name == "airgap-auth" else {})
            )
            for s in servers
        }
        log(f"answers: {answers}")
        if len({json.dumps(a, sort_keys=True) for a in answers.values()}) != 1:
            raise SystemExit(f"the servers disagree: {answers}")
        for s in servers:
            log(f"warming up {s.name}")
            wrk(s.url, lua_auth if s.name == "airgap-auth" else lua, normal, args.warmup, 1)
        for r in range(args.rounds):
            for scenario, names, conns, script, slow in plan:
                # Rotate the order each round so drift (thermal, neighbours) is shared.
                group = [by[n] for n in names]
                if scenario.startswith(("auth", "tls")):
                    # Side by side with the plain server in the same round.
                    measure(by["airgap"], f"plain-{scenario}", conns, lua, 0)
                order = group[r % len(group) :] + group[: r % len(group)]
                for s in order:
                    measure(s, scenario, conns, script, slow)
                    if slow:
                        # The same server without slow clients, right after: the baseline.
                        measure(s, "slow-baseline", conns, script, 0)
    finally:
        for s in servers:
            s.stop()

    def med(s: Server, scenario: str, key: str) -> float:
        return statistics.median(x[key] for x in s.rounds[scenario])

    def paired(a: str, sa: str, b: str, sb: str, key: str = "rps") -> float:
        # Back-to-back measurements per round: the median of per-round ratios cancels slow
        # drift in the machine's load better than a ratio of medians.
        xs, ys = by[a].rounds[sa], by[b].rounds[sb]
        return statistics.median(x[key] / y[key] for x, y in zip(xs, ys, strict=True) if y[key])

    def capacity(a: str, b: str, scenario: str) -> float:
        xs, ys = by[a].rounds[scenario], by[b].rounds[scenario]
        return statistics.median(y["cpu_us"] / x["cpu_us"] for x, y in zip(xs, ys, strict=True))

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

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
        f"- Load: wrk {args.threads} thread(s), {args.duration:g} s per measurement after "
        f"{args.warmup:g} s warm-up, {args.rounds} interleaved rounds; every server with "
        f"{args.workers} worker(s) (airgap: its own worker class; ceiling and reference: "
        "gunicorn sync)",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        "## Throughput by concurrency",
        "",
        "| connections | server | req/s (median) | p50 ms | p99 ms | server CPU us/request "
        "| errors | req/s vs reference (paired) | req/s vs ceiling (paired) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    summary: list[str] = []
    for c in levels:
        sc = f"c{c}"
        for name in ("airgap", "ceiling", "reference"):
            s = by[name]
            lines.append(
                f"| {c} | {name} | {med(s, sc, 'rps'):.0f} | {med(s, sc, 'p50_ms'):.2f} | "
                f"{med(s, sc, 'p99_ms'):.2f} | {med(s, sc, 'cpu_us'):.0f} | "
                f"{sum(x['errors'] for x in s.rounds[sc]):.0f} | "
                f"{paired(name, sc, 'reference', sc):.2f}x | "
                f"{paired(name, sc, 'ceiling', sc):.2f}x |"
            )
        vs_ref = paired("airgap", sc, "reference", sc)
        summary.append(
            f"- {c} connection(s): airgap / reference = **{vs_ref:.2f}x** req/s "
            f"(target >= 1.5x: {verdict(vs_ref >= 1.5)}), "
            f"{capacity('airgap', 'reference', sc):.2f}x per CPU-second; "
            f"airgap / ceiling = {paired('airgap', sc, 'ceiling', sc):.2f}x req/s, "
            f"{capacity('airgap', 'ceiling', sc):.2f}x per CPU-second"
        )
    lines += ["", *summary, ""]
    auth, tls = f"auth-c{normal}", f"tls-c{normal}"
    auth_ratio = paired("airgap-auth", auth, "airgap", f"plain-{auth}")
    tls_ratio = paired("airgap-tls", tls, "airgap", f"plain-{tls}")
    lines += [
        f"## Auth and TLS ({normal} connections, each paired with the plain server in its round)",
        "",
        "| server | req/s (median) | p50 ms | p99 ms | server CPU us/request | errors "
        "| req/s vs plain (paired) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, sc, ratio in (("airgap-auth", auth, auth_ratio), ("airgap-tls", tls, tls_ratio)):
        s = by[name]
        lines.append(
            f"| {name} | {med(s, sc, 'rps'):.0f} | {med(s, sc, 'p50_ms'):.2f} | "
            f"{med(s, sc, 'p99_ms'):.2f} | {med(s, sc, 'cpu_us'):.0f} | "
            f"{sum(x['errors'] for x in s.rounds[sc]):.0f} | {ratio:.2f}x |"
        )
    lines += [
        "",
        f"- auth / plain = **{auth_ratio:.3f}x** req/s (target >= 0.95x: "
        f"{verdict(auth_ratio >= 0.95)})",
        f"- TLS / plain = **{tls_ratio:.3f}x** req/s (no target; TLS costs the handshake and "
        "the record layer)",
        "",
        f"## Normal requests while {args.slow_clients} slow clients are connected "
        f"({normal} connections)",
        "",
        "| server | p99 ms without | p99 ms with slow clients | ratio (paired) | req/s without "
        "| req/s with | wrk errors with (timeouts) | slow-client reconnects |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    slow_ratio = {}
    for name in ("airgap", "reference"):
        s = by[name]
        with_, without = s.rounds["slow"], s.rounds["slow-baseline"]
        ratios = [
            (x["p99_ms"] / y["p99_ms"]) if x["requests"] else float("inf")
            for x, y in zip(with_, without, strict=True)
        ]
        slow_ratio[name] = statistics.median(ratios)
        lines.append(
            f"| {name} | {med(s, 'slow-baseline', 'p99_ms'):.2f} | {med(s, 'slow', 'p99_ms'):.2f} "
            f"| {slow_ratio[name]:.2f}x | {med(s, 'slow-baseline', 'rps'):.0f} | "
            f"{med(s, 'slow', 'rps'):.0f} | {sum(x['errors'] for x in with_):.0f} "
            f"({sum(x['timeouts'] for x in with_):.0f}) | "
            f"{sum(x.get('reconnects', 0) for x in with_):.0f} |"
        )
    lines += [
        "",
        f"- airgap: p99 with / without slow clients = **{slow_ratio['airgap']:.2f}x** "
        f"(target < 3x: {verdict(slow_ratio['airgap'] < 3)})",
        f"- reference: {slow_ratio['reference']:.2f}x (inf: no normal request completed "
        "while the slow clients held its workers)",
        "",
        "## Per round (req/s)",
        "",
    ]
    for s in servers:
        for scenario, xs in s.rounds.items():
            lines.append(f"- {s.name} {scenario}: " + ", ".join(f"{x['rps']:.0f}" for x in xs))
    lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    log(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
