"""Benchmark container cold start: from `airgap run` to the first 200 from /score, per mode.

One command (online the first time: pack downloads the iris example's wheels into the cache):

    python bench/bench_coldstart.py              # iris example, 5 interleaved rounds
    python bench/bench_coldstart.py --rounds 2

The iris example is packed once (with --include-wheels, so every mode can run), unpacked, and
its normal and baked images are built, all through the real CLI against the real engine
(the engine and base image come from .ci/docker-engine.sh and .ci/base-image.sh). Then, in
interleaved rounds, each mode is started with `airgap run DEST --mode M --detach` in a child
process while this script POSTs the iris request to /score every 20 ms; the cold start is the
time from launching `airgap run` to the first 200 answer. It includes everything a user
waits for: the CLI, the signature and tree re-check (site-packages in mounted mode, the wheels
in dynamic mode), container creation, the runtime's start, dynamic mode's offline
`pip install`, and init() importing scikit-learn and loading the model.

- mounted:  the image + DEST/site-packages mounted read-only (the default)
- dynamic:  the image + DEST/wheels mounted; wheels installed at every container start
- baked:    the image variant with site-packages copied in

The page cache is left warm (the machine is shared; dropping caches would disturb others),
so these are container cold starts, not cold-disk starts. Results (median and min of the
rounds, with ratios to dynamic) go to bench/results/coldstart.md. Target: mounted at most
0.25x dynamic.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
EXAMPLE = REPO / "examples" / "iris-sklearn"
PAYLOAD = b'{"data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}'
EXPECTED = {"predictions": ["setosa", "virginica"]}
MODES = ("mounted", "dynamic", "baked")
TARGET_RATIO = 0.25  # mounted / dynamic, at most
TAG = "airgap-bench/iris:coldstart"


def airgap(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "bundler", *args], capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        sys.exit(f"airgap {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def first_200(url: str, stop: threading.Event, out: list[float]) -> None:
    """POST the request every 20 ms until a 200 with the right predictions; record when."""
    while not stop.is_set():
        req = urllib.request.Request(
            url, data=PAYLOAD, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200 and json.loads(r.read()) == EXPECTED:
                    out.append(time.perf_counter())
                    return
        except (OSError, urllib.error.URLError, ValueError):
            pass
        time.sleep(0.02)


@dataclass
class ModeResult:
    mode: str
    seconds: list[float] = field(default_factory=list)  # to the first 200 from /score
    healthy: list[float] = field(default_factory=list)  # what `airgap run` itself reported

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def one_start(dest: Path, mode: str, timeout: float) -> tuple[float, float]:
    port = free_port()
    hits: list[float] = []
    stop = threading.Event()
    poller = threading.Thread(
        target=first_200, args=(f"http://127.0.0.1:{port}/score", stop, hits), daemon=True
    )
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bundler",
            "run",
            str(dest),
            "--mode",
            mode,
            "--detach",
            "--port",
            str(port),
            "--json",
            "--timeout",
            str(timeout),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    poller.start()
    out, err = proc.communicate(timeout=timeout + 60)
    try:
        if proc.returncode != 0:
            sys.exit(f"airgap run --mode {mode} failed:\n{err[-3000:]}")
        poller.join(timeout=30)
        if not hits:
            sys.exit(f"{mode}: /score never answered 200 with the expected predictions")
        return hits[0] - t0, float(json.loads(out)["seconds"])
    finally:
        stop.set()
        airgap("stop", str(dest), check=False)


def environment() -> str:
    engine = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, Docker engine {engine or 'unknown'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per start")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and images")
    parser.add_argument("--output", type=Path, default=RESULTS / "coldstart.md")
    args = parser.parse_args(argv)

    for script in ("docker-engine.sh", "base-image.sh"):
        subprocess.run(["sh", str(REPO / ".ci" / script)], check=True)

    work = Path(tempfile.mkdtemp(prefix="airgap-bench-coldstart-"))
    try:
        keys, bundle, dest = work / "keys", work / "iris.airgap", work / "dest"
        print("packing the iris example (--include-wheels) ...", flush=True)
        airgap("keygen", "--out", str(keys), "--no-passphrase")
        airgap(
            "pack",
            str(EXAMPLE),
            "-o",
            str(bundle),
            "--key",
            str(keys / "airgap.key"),
            "--include-wheels",
            "--quiet",
        )
        airgap("unpack", str(bundle), str(dest), "--trust", str(keys / "airgap.pub"))
        print("building the normal and baked images ...", flush=True)
        built = json.loads(
            airgap("build", str(dest), "--variant", "all", "--tag", TAG, "--json").stdout
        )
        results = {m: ModeResult(m) for m in MODES}
        # One discarded start per mode first: the first ever container start of an image
        # pays one-off engine costs (layer mounts) no later start pays.
        for mode in MODES:
            one_start(dest, mode, args.timeout)
        for r in range(args.rounds):
            # Rotate the order each round so no mode always runs first or last.
            order = MODES[r % 3 :] + MODES[: r % 3]
            for mode in order:
                seconds, healthy = one_start(dest, mode, args.timeout)
                results[mode].seconds.append(seconds)
                results[mode].healthy.append(healthy)
                print(f"round {r + 1}: {mode:8s} {seconds:6.2f} s", flush=True)
        report = render(results, args.rounds, built)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
        print()
        print(report)
        ratio = results["mounted"].median / results["dynamic"].median
        return 0 if ratio <= TARGET_RATIO else 1
    finally:
        if not args.keep:
            airgap("stop", str(work / "dest"), check=False)
            for tag in (TAG, f"{TAG}-baked"):
                subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)
            shutil.rmtree(work, ignore_errors=True)


def render(results: dict[str, ModeResult], rounds: int, built: dict[str, object]) -> str:
    dynamic = results["dynamic"].median
    mounted = results["mounted"].median
    lines = [
        "# Cold start: `airgap run` to the first 200 from /score",
        "",
        f"Measured by `python bench/bench_coldstart.py --rounds {rounds}` on {environment()};",
        "iris example (scikit-learn, numpy, scipy), one discarded warm-up start per mode, then",
        f"{rounds} interleaved rounds. Page cache warm (see the script's docstring).",
        "",
        "| mode | median (s) | min (s) | max (s) | `airgap run` healthy, median (s) | x dynamic |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in MODES:
        r = results[mode]
        lines.append(
            f"| {mode} | {r.median:.2f} | {min(r.seconds):.2f} | {max(r.seconds):.2f} | "
            f"{statistics.median(r.healthy):.2f} | {r.median / dynamic:.2f}x |"
        )
    ratio = mounted / dynamic
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    lines += [
        "",
        f"Target mounted <= {TARGET_RATIO}x dynamic: **{verdict}** ({ratio:.2f}x).",
        "",
        "Images built for the run:",
    ]
    images = built.get("images")
    for image in images if isinstance(images, list) else []:
        lines.append(f"- {image['variant']}: {image['tag']} ({image['id'][:19]})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
