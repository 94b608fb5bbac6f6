"""Split benchmark: `airgap split` + checking every part against the signed index, against
`split -b` + `sha256sum` of the parts; and the peak RSS of `airgap split`.

Runs ours and the baseline side by side, interleaved, in one run, on one bundle of about
1 GB made from a seeded model file, and reports medians and ratios (issue 9's targets:
split + verify of all parts <= 1.3x `split -b` + `sha256sum`, peak RSS of split < 300 MiB).
Also reported, without a target: `airgap verify INDEX` in full (the parts, then the bundle
they join into: signature, payload hash, every file) against `airgap verify` of the bundle.

    python bench/bench_split.py                   # 1 GiB model, 256M parts, 5 rounds
    python bench/bench_split.py --model-mib 2048 --size 1G
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bundler.formats.manifest import Target  # noqa: E402
from bundler.formats.parts import parse_size  # noqa: E402
from bundler.formats.signing import generate_keypair, load_private_key  # noqa: E402
from bundler.pack.assemble import BundleMeta, SourceFile, write_bundle  # noqa: E402
from bundler.pack.split import split_bundle  # noqa: E402
from bundler.verify.parts import check_parts, verify_parts  # noqa: E402
from bundler.verify.unpack import verify  # noqa: E402

TARGETS = {"split_verify": 1.3, "split_rss_mib": 300}
MiB = 1 << 20


def seeded_model(path: Path, size: int, seed: int) -> None:
    """A model file of ``size`` random bytes (as float weights are: barely compressible), so
    the bundle is as large as the model."""
    rnd = random.Random(seed)
    with path.open("wb") as f:
        left = size
        while left:
            n = min(MiB, left)
            f.write(rnd.randbytes(n))
            left -= n


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def sh(cmd: str, cwd: Path) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, cwd=cwd)


def peak_rss_mib(cmd: list[str]) -> float:
    """Peak resident memory of one run of ``cmd`` (the child's own ru_maxrss)."""
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{cmd} failed ({status})")
    return usage.ru_maxrss / 1024  # KiB on Linux


def empty(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model-mib", type=int, default=1024, help="model file size (MiB)")
    parser.add_argument("--size", default="256M", help="part size, as `airgap split --size`")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--full-rounds", type=int, default=1, help="rounds of the full verify")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    part_size = parse_size(args.size)
    for tool in ("split", "sha256sum"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is needed for the baseline")

    with tempfile.TemporaryDirectory(prefix="airgap-bench-split-") as tmp:
        work = Path(tmp)
        generate_keypair(work / "keys", None)
        key = load_private_key(work / "keys" / "airgap.key", None)
        trust = [work / "keys" / "airgap.pub"]
        model = work / "model.bin"
        seeded_model(model, args.model_mib * MiB, seed=9)
        bundle = work / "m.airgap"
        meta = BundleMeta(
            name="bench",
            version="1",
            created=1700000000,
            target=Target("3.11", "cp", "cp311", ("manylinux_2_17_x86_64",)),
            entry_script="app/score.py",
            mode="mounted",
        )
        files = [
            SourceFile(
                "app/score.py", b"def init():\n    pass\n\ndef run(d):\n    return d\n", 0o644
            ),
            SourceFile("model/model.bin", model, 0o644),
        ]
        write_bundle(bundle, files, meta, key, level=1)
        model.unlink()  # keep the disk tidy: only the bundle and one set of parts at a time
        size = bundle.stat().st_size
        ours, base = work / "ours", work / "base"
        times: dict[str, list[float]] = {"airgap": [], "split_sha256sum": []}
        for _ in range(args.rounds):
            empty(ours)
            times["airgap"].append(
                timed(
                    lambda: (
                        split_bundle(bundle, part_size, key, out_dir=ours),
                        check_parts(ours / "m.airgap.split.json", trust),
                    )
                )
            )
            shutil.rmtree(ours)
            empty(base)
            times["split_sha256sum"].append(
                timed(
                    lambda: sh(
                        f"split -b {part_size} -d -a 3 ../m.airgap m.airgap.part "
                        "&& sha256sum m.airgap.part* > SHA256SUMS",
                        base,
                    )
                )
            )
            shutil.rmtree(base)
        empty(ours)
        rss = peak_rss_mib(
            [
                sys.executable,
                "-m",
                "bundler",
                "split",
                str(bundle),
                "--size",
                str(part_size),
                "--key",
                str(work / "keys" / "airgap.key"),
                "-o",
                str(ours),
                "-q",
            ]
        )
        parts = len(list(ours.glob("m.airgap.part*")))
        full: dict[str, list[float]] = {"verify_parts": [], "verify_bundle": []}
        for _ in range(args.full_rounds):
            full["verify_parts"].append(
                timed(lambda: verify_parts(ours / "m.airgap.split.json", trust))
            )
            full["verify_bundle"].append(timed(lambda: verify(bundle, trust)))
        shutil.rmtree(ours)

    med = {k: statistics.median(v) for k, v in times.items()}
    fmed = {k: statistics.median(v) for k, v in full.items()}
    ratio = med["airgap"] / med["split_sha256sum"]
    full_ratio = fmed["verify_parts"] / fmed["verify_bundle"]
    load = os.getloadavg()
    result = {
        "bundle_bytes": size,
        "part_size": part_size,
        "parts": parts,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "loadavg": load,
        "median_seconds": med,
        "ratio_split_verify": ratio,
        "split_peak_rss_mib": rss,
        "full_verify_seconds": fmed,
        "ratio_full_verify_parts_vs_bundle": full_ratio,
        "targets": TARGETS,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "split.json").write_text(json.dumps(result, indent=2) + "\n")
    yes = {True: "yes", False: "no"}
    lines = [
        f"# Split benchmark ({size / MiB:.0f} MiB bundle, {parts} parts of {part_size} bytes, "
        f"{args.rounds} interleaved rounds, medians, {os.cpu_count()} CPUs, load average "
        f"{load[0]:.1f} at the end, on a machine shared with other jobs)",
        "",
        "| measure | airgap | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|",
        f"| split + verify of all parts | {med['airgap']:.2f} s | split -b + sha256sum: "
        f"{med['split_sha256sum']:.2f} s | {ratio:.2f}x | <= 1.3x | {yes[ratio <= 1.3]} |",
        f"| peak RSS of split | {rss:.0f} MiB | - | - | < 300 MiB | {yes[rss < 300]} |",
        "",
        f"Without a target ({args.full_rounds} round(s)): `airgap verify INDEX` in full "
        "(every part, then the bundle through the parts: signature, payload hash, every "
        "file's hash) "
        f"{fmed['verify_parts']:.2f} s, `airgap verify` of the joined bundle "
        f"{fmed['verify_bundle']:.2f} s: {full_ratio:.2f}x.",
        "",
        "airgap's split also hashes each part, its 64 KiB head and tail, and the whole bundle, "
        "and fsyncs every file before the renames; `split -b` does none of these.",
    ]
    (args.out / "split.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
