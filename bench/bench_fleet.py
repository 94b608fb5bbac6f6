"""Fleet benchmark: 3 Docker Swarm replicas against 1 container at equal total CPU, and the
rollout time of 1.0.0 -> 1.0.1 under load (issue 10).

    python bench/bench_fleet.py                      # 1.2 CPUs in all, 5 rounds of 10 s
    python bench/bench_fleet.py --cpus 1.5 --rounds 3 --duration 8 --rollouts 2

The iris example is packed twice (1.0.0, 1.0.1), unpacked, built (`--variant baked`) and
pushed through the real CLI to Debian's docker-registry on loopback, which this script starts
and stops. Then, on a Swarm this script joins (and leaves again in a finally when it joined):

- fleet:  `airgap deploy swarm` with 3 replicas, ``--cpus CPUS/3`` each, DNS round-robin on an
          overlay network, behind Debian's HAProxy (this kernel has no IPVS for the routing
          mesh);
- single: one container of the same image (the same digest, from the same registry),
          NanoCPUs = CPUS, WORKER_COUNT=3 so it runs as many gunicorn workers as the three
          replicas together, on the same network, behind its own HAProxy with the same config.

wrk (Debian package `wrk`) POSTs the same request through each balancer, in interleaved
rounds (the order alternates); medians and the fleet/single ratio go to
bench/results/fleet.md and fleet.json. The rollout: wrk runs against the fleet's balancer
while `airgap deploy swarm DEST-1.0.1 --update` (start-first, one replica at a time) runs;
the figure is the seconds until every replica runs the new digest and is healthy, and the
failed requests (target: 0). With --rollouts 2 the service is rolled back to 1.0.0 the same
way and measured again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _registry import (  # noqa: E402
    free_port,
    haproxy_config,
    haproxy_run_args,
    remove_built_images,
    run_registry,
)
from bench_runtime import PAYLOAD, WRK_LUA, wrk  # noqa: E402

from bundler.cli import main  # noqa: E402
from bundler.deploy import swarm  # noqa: E402
from bundler.deploy.engine import DockerEngine  # noqa: E402

EXAMPLE = ROOT / "examples" / "iris-sklearn"
NAME = "fleet-bench"
NETWORK = "airgap-bench-fleet"
EXPECTED = {"predictions": ["setosa", "virginica"]}
TARGETS = {"rollout_failed": 0}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def docker(*args: str, check: bool = True, timeout: float = 300) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def airgap(*args: str) -> None:
    log("$ airgap " + " ".join(args))
    code = main(list(args))
    if code != 0:
        raise RuntimeError(f"airgap {args[0]} exited with {code}")


def project(root: Path, version: str) -> Path:
    out = root / f"project-{version}"
    shutil.copytree(EXAMPLE, out)
    toml = out / "bundle.toml"
    text = re.sub(r'(?m)^name = ".*"$', f'name = "{NAME}"', toml.read_text())
    toml.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', text))
    return out


def pinned(dest: Path) -> str:
    record = json.loads((dest / ".airgap" / "pushed.json").read_text())
    image = next(i for i in record["images"] if i["kind"] == "baked")
    return f"{image['repository']}@{image['digest']}"


def score(port: int) -> dict[str, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/score",
        data=PAYLOAD,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        out: dict[str, Any] = json.loads(r.read())
    return out


def wait_scoring(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if score(port) == EXPECTED:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing scores correctly on 127.0.0.1:{port}")
        time.sleep(0.5)


@contextmanager
def joined_swarm() -> Iterator[None]:
    """Swarm mode for the block; left again afterwards (even on failure) if joined here."""
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}}").strip()
    joined_here = state != "active"
    if joined_here:
        docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    try:
        yield
    finally:
        docker("service", "rm", NAME, check=False)
        if joined_here:
            docker("swarm", "leave", "--force", check=False)
        else:
            docker("network", "rm", NETWORK, check=False)


@contextmanager
def container(name: str, *args: str) -> Iterator[str]:
    docker("rm", "-f", name, check=False)
    docker("run", "-d", "--name", name, *args)
    try:
        yield name
    finally:
        docker("rm", "-f", name, check=False)


def balancer(work: Path, name: str, servers: str) -> tuple[ExitStack, int]:
    cfg = work / f"{name}.cfg"
    cfg.write_text(haproxy_config(servers))
    cfg.chmod(0o644)
    port = free_port()
    stack = ExitStack()
    stack.enter_context(container(name, *haproxy_run_args(NETWORK, port, cfg)))
    return stack, port


def rollout(dest: Path, lb_port: int, lua: Path, connections: int) -> dict[str, float]:
    """wrk against the fleet while `airgap deploy swarm DEST --update` runs; wrk is stopped
    (SIGINT: it still reports) 2 s after every replica runs the new digest."""
    proc = subprocess.Popen(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            "-d600s",
            "--timeout",
            "30s",
            "-s",
            str(lua),
            f"http://127.0.0.1:{lb_port}/score",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)
        start = time.monotonic()
        st = swarm.deploy(dest, update=True)
        seconds = time.monotonic() - start
        time.sleep(2)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    if st.image != pinned(dest) or st.ready != 3:
        raise RuntimeError(f"the rollout did not end on {pinned(dest)}: {st}")
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    data = json.loads(line[len("WRKJSON ") :])
    failed = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {"seconds": seconds, "requests": float(data["requests"]), "failed": float(failed)}


def main_bench(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=float, default=1.2, help="total CPUs of either side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=12)
    parser.add_argument("--rollouts", type=int, default=2, help="1: forward only; 2: and back")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk (scripts/setup.sh does)")
    replicas = 3
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    lua = work / "post.lua"
    lua.write_text(WRK_LUA % (PAYLOAD.decode(), ""))
    engine = DockerEngine.connect()
    dests: list[Path] = []
    fleet_rps: list[float] = []
    single_rps: list[float] = []
    fleet_p99: list[float] = []
    single_p99: list[float] = []
    errors = {"fleet": 0.0, "single": 0.0}
    rollouts: list[dict[str, float]] = []
    limits: dict[str, int] = {}
    try:
        keys = work / "keys"
        airgap("keygen", "--out", str(keys), "--no-passphrase")
        for version in ("1.0.0", "1.0.1"):
            bundle = work / f"{version}.airgap"
            key = str(keys / "airgap.key")
            airgap("pack", str(project(work, version)), "-o", str(bundle), "--key", key, "-q")
            dest = work / f"dest-{version}"
            airgap("unpack", str(bundle), str(dest), "--trust", str(keys / "airgap.pub"))
            airgap("build", str(dest), "--variant", "baked", "-q")
            dests.append(dest)
        with ExitStack() as stack:
            registry = stack.enter_context(run_registry(work / "registry"))
            for dest in dests:
                airgap("push", str(dest), "--registry", f"{registry.host}/bench", "--plain-http")
            stack.enter_context(joined_swarm())
            docker("network", "create", "-d", "overlay", "--attachable", NETWORK, check=False)
            log(f"deploying {replicas} replicas of 1.0.0, {args.cpus / replicas:.3f} CPUs each")
            swarm.deploy(
                dests[0],
                replicas=replicas,
                endpoint_mode="dnsrr",
                network=NETWORK,
                cpus=args.cpus / replicas,
            )
            single = f"airgap-bench-single-{os.getpid()}"
            stack.enter_context(
                container(
                    single,
                    "--network",
                    NETWORK,
                    "--cpus",
                    f"{args.cpus}",
                    "-e",
                    f"WORKER_COUNT={replicas}",
                    "--read-only",
                    "--tmpfs",
                    "/tmp:rw,exec,nosuid,nodev,mode=1777",
                    "--cap-drop",
                    "ALL",
                    "--security-opt",
                    "no-new-privileges",
                    pinned(dests[0]),
                )
            )
            lb_fleet_stack, lb_fleet = balancer(
                work,
                f"airgap-bench-lb-fleet-{os.getpid()}",
                f"server-template r 10 tasks.{NAME}:5001",
            )
            stack.enter_context(lb_fleet_stack)
            lb_single_stack, lb_single = balancer(
                work, f"airgap-bench-lb-single-{os.getpid()}", f"server single {single}:5001"
            )
            stack.enter_context(lb_single_stack)
            wait_scoring(lb_fleet)
            wait_scoring(lb_single)
            # What the engine enforces, read back (not what we asked for).
            service = json.loads(docker("service", "inspect", NAME))[0]
            limits["replica_nanocpus"] = int(
                service["Spec"]["TaskTemplate"]["Resources"]["Limits"]["NanoCPUs"]
            )
            limits["single_nanocpus"] = int(
                json.loads(docker("inspect", single))[0]["HostConfig"]["NanoCpus"]
            )
            log("warm-up")
            for port in (lb_fleet, lb_single):
                wrk(f"http://127.0.0.1:{port}", lua, args.connections, 3, 1)
            for r in range(args.rounds):
                order = [("fleet", lb_fleet), ("single", lb_single)]
                for side, port in order if r % 2 == 0 else order[::-1]:
                    res = wrk(f"http://127.0.0.1:{port}", lua, args.connections, args.duration, 1)
                    log(f"round {r + 1} {side}: {res['rps']:.1f} req/s, {res['errors']:.0f} errors")
                    (fleet_rps if side == "fleet" else single_rps).append(res["rps"])
                    (fleet_p99 if side == "fleet" else single_p99).append(res["p99_ms"])
                    errors[side] += res["errors"]
            docker("rm", "-f", single, check=False)  # the rollout has the CPUs to itself
            for i in range(args.rollouts):
                dest = dests[1] if i % 2 == 0 else dests[0]
                log(f"rollout {i + 1}: to {dest.name} under load")
                res = rollout(dest, lb_fleet, lua, args.connections)
                n, bad = res["requests"], res["failed"]
                log(f"  {res['seconds']:.1f} s, {n:.0f} requests, {bad:.0f} failed")
                rollouts.append(res)
                if score(lb_fleet) != EXPECTED:
                    raise RuntimeError("the fleet answers wrongly after the rollout")
    finally:
        remove_built_images(engine, dests)
        engine.close()
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    med_f, med_s = statistics.median(fleet_rps), statistics.median(single_rps)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "loadavg_end": load,
        "settings": {
            "total_cpus": args.cpus,
            "replicas": replicas,
            "rounds": args.rounds,
            "duration_s": args.duration,
            "connections": args.connections,
            **limits,
        },
        "fleet_rps": fleet_rps,
        "single_rps": single_rps,
        "fleet_p99_ms": fleet_p99,
        "single_p99_ms": single_p99,
        "wrk_errors": errors,
        "median_fleet_rps": med_f,
        "median_single_rps": med_s,
        "ratio_fleet_over_single": med_f / med_s,
        "rollouts": rollouts,
        "targets": TARGETS,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fleet.json").write_text(json.dumps(result, indent=2) + "\n")
    roll_rows = [
        f"| {i + 1} | {'1.0.0 -> 1.0.1' if i % 2 == 0 else '1.0.1 -> 1.0.0'} | "
        f"{r['seconds']:.1f} | {r['requests']:.0f} | {r['failed']:.0f} |"
        for i, r in enumerate(rollouts)
    ]
    failed = sum(r["failed"] for r in rollouts)
    lines = [
        "# Fleet: 3 Swarm replicas against 1 container, and the rollout time",
        "",
        "Written by `python bench/bench_fleet.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + "`.",
        "",
        f"- Machine: {os.cpu_count()} CPUs, shared with other work; load average at the end of "
        f"the run {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min).",
        f"- Equal total CPU: {replicas} replicas with NanoCPUs "
        f"{limits.get('replica_nanocpus', 0) / 1e9:.3f} each (read back from the service) "
        f"against 1 container with NanoCPUs {limits.get('single_nanocpus', 0) / 1e9:.3f} and "
        f"WORKER_COUNT={replicas} (as many gunicorn workers as the replicas together); the same "
        "image digest from the same registry.",
        "- Both behind Debian's HAProxy with the same config on the same overlay network (DNS "
        "round-robin: this kernel has no IPVS for the routing mesh).",
        f"- Load: wrk, 1 thread, {args.connections} connections, {args.duration:g} s per run, "
        f"{args.rounds} interleaved rounds (the order alternates), after a 3 s warm-up each.",
        "",
        "| | median req/s | req/s per round | median p99 ms | wrk errors |",
        "|---|---|---|---|---|",
        f"| 3 replicas | {med_f:.1f} | {', '.join(f'{x:.0f}' for x in fleet_rps)} | "
        f"{statistics.median(fleet_p99):.1f} | {errors['fleet']:.0f} |",
        f"| 1 container | {med_s:.1f} | {', '.join(f'{x:.0f}' for x in single_rps)} | "
        f"{statistics.median(single_p99):.1f} | {errors['single']:.0f} |",
        "",
        f"**Ratio 3 replicas / 1 container: {med_f / med_s:.2f}x** (no target set by the "
        "issue; it is the cost or gain of replication at equal CPU).",
        "",
        "## Rollout under load",
        "",
        "`airgap deploy swarm DEST --update` (start-first, one replica at a time, each new task "
        "healthy and monitored 10 s before the next moves) while wrk sends requests through the "
        "balancer; seconds from the update call until every replica runs the new digest and "
        "is healthy. The single container was removed first.",
        "",
        "| rollout | versions | seconds | requests (3 s before to 2 s after) | failed |",
        "|---|---|---|---|---|",
        *roll_rows,
        "",
        f"Failed requests in all rollouts: {failed:.0f} (target {TARGETS['rollout_failed']}: "
        f"{'met' if failed == 0 else 'missed'}).",
    ]
    (args.out / "fleet.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main_bench())
