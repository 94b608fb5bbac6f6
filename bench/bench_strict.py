"""What the strict reader costs: header checks and a full verify of many small files.

Two measures, each ours side by side with a baseline in one run, interleaved rounds, medians,
reported as ratios (no target: issue 11 asks for strictness, this shows its price):

- one tar header: ``parse_header`` (every §2 rule) against CPython's
  ``tarfile.TarInfo.frombuf`` (parses the same fields, checks only the checksum);
- ``airgap verify`` (in process: signature, payload hash, every header rule, the manifest
  order, every file's sha256) of a bundle of many small files against
  ``tar -xOf B payload.tar.zst | zstd -d | tar -t`` (reads every header, checks nothing).

    python bench/bench_strict.py               # 5000 files of 1 KiB, 7 rounds
    python bench/bench_strict.py --files 20000
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bundler.formats.archive import parse_header, ustar_header  # noqa: E402
from bundler.formats.manifest import Target  # noqa: E402
from bundler.formats.signing import generate_keypair, load_private_key  # noqa: E402
from bundler.pack.assemble import BundleMeta, SourceFile, write_bundle  # noqa: E402
from bundler.verify.unpack import verify  # noqa: E402

CREATED = 1_700_000_000


def header_rounds(rounds: int, number: int) -> dict[str, list[float]]:
    block = ustar_header(
        "site-packages/numpy/core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so",
        123456,
        0o755,
        CREATED,
    )
    times: dict[str, list[float]] = {"ours": [], "tarfile": []}
    for _ in range(rounds):
        times["ours"].append(timeit.timeit(lambda: parse_header(block, 0), number=number) / number)
        times["tarfile"].append(
            timeit.timeit(
                lambda: tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape"), number=number
            )
            / number
        )
    return times


def verify_rounds(work: Path, files: int, size: int, rounds: int) -> dict[str, list[float]]:
    generate_keypair(work / "keys", None)
    key = load_private_key(work / "keys" / "airgap.key", None)
    trust = [work / "keys" / "airgap.pub"]
    sources = [SourceFile("app/score.py", b"def init(): pass\ndef run(d): return d\n", 0o644)]
    sources += [
        SourceFile(
            f"site-packages/pkg{i // 100}/m{i}.py", os.urandom(size // 2).hex().encode(), 0o644
        )
        for i in range(files)
    ]
    meta = BundleMeta(
        name="bench",
        version="1",
        created=CREATED,
        target=Target("3.11", "cp", "cp311", ("manylinux_2_17_x86_64",)),
        entry_script="app/score.py",
        mode="mounted",
    )
    bundle = work / "b.airgap"
    write_bundle(bundle, sources, meta, key, threads=1)
    baseline = f"tar -xOf '{bundle}' payload.tar.zst | zstd -d -q -c | tar -t > /dev/null"
    times: dict[str, list[float]] = {"ours": [], "tar": []}
    for _ in range(rounds):
        start = time.perf_counter()
        verify(bundle, trust, now=CREATED)
        times["ours"].append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run(["bash", "-o", "pipefail", "-c", baseline], check=True)
        times["tar"].append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--size", type=int, default=1024, help="bytes per file")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    headers = header_rounds(args.rounds, 20_000)
    with tempfile.TemporaryDirectory(prefix="airgap-bench-strict-") as tmp:
        full = verify_rounds(Path(tmp), args.files, args.size, args.rounds)
    h = {k: statistics.median(v) for k, v in headers.items()}
    v = {k: statistics.median(v) for k, v in full.items()}
    load = os.getloadavg()[0]
    lines = [
        f"# Strict reader cost ({args.rounds} interleaved rounds, medians, "
        f"{os.cpu_count()} CPUs, load average {load:.1f} at the end: a shared machine)",
        "",
        "| measure | airgap | baseline | ratio |",
        "|---|---|---|---|",
        f"| one header, all §2 rules | {h['ours'] * 1e6:.2f} us | tarfile.TarInfo.frombuf: "
        f"{h['tarfile'] * 1e6:.2f} us | {h['ours'] / h['tarfile']:.2f}x |",
        f"| verify, {args.files + 1} files of {args.size} B | {v['ours']:.2f} s | "
        f"tar -xO \\| zstd -d \\| tar -t: {v['tar']:.2f} s | {v['ours'] / v['tar']:.2f}x |",
        "",
        "verify also checks the signature, the payload's sha256 before decompressing, every "
        "file's sha256, sizes, modes and the manifest order; the baseline lists headers only.",
    ]
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "strict.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
