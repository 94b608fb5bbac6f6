"""Bundle format benchmark: pack, verify+unpack and size against tar/zstd/gzip baselines.

Runs ours and the baseline side by side, interleaved, in one run, on the same
site-packages tree, and reports medians and ratios (issue 2's targets: pack <= 1.2x
`tar -c | zstd -T0 -3`, verify+unpack <= 1.5x `zstd -d | tar -x`, size <= 0.95x `tar -cz`).

    python bench/bench_format.py                 # builds the iris example's tree first
    python bench/bench_format.py --tree DIR      # any site-packages tree
"""

from __future__ import annotations

import argparse
import json
import os
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
from bundler.formats.signing import generate_keypair, load_private_key  # noqa: E402
from bundler.pack.assemble import BundleMeta, collect_tree, write_bundle  # noqa: E402
from bundler.verify.unpack import unpack  # noqa: E402

TARGETS = {"pack": 1.2, "verify_unpack": 1.5, "size": 0.95}


def example_tree(work: Path) -> Path:
    """Build the iris example's site-packages tree with the packer's own code."""
    from bundler.pack.lock import for_target, parse_lock
    from bundler.pack.project import load_project
    from bundler.pack.sitetree import build_site_tree, compile_bytecode
    from bundler.pack.wheels import fetch_wheels

    project = load_project(ROOT / "examples" / "iris-sklearn")
    reqs = for_target(parse_lock(project.lock), project.target)
    wheels = fetch_wheels(reqs, project.target)
    tree = work / "site-packages"
    build_site_tree(wheels, project.target, tree)
    compile_bytecode(tree, project.target)  # the tree exactly as `airgap pack` ships it
    return tree


def timed(fn: Callable[[], object]) -> float:
    subprocess.run(["sync"], check=True)  # start each run without the last one's writeback
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def sh(cmd: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, help="site-packages tree (default: iris example)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    for tool in ("tar", "zstd", "gzip"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is needed for the baselines")

    with tempfile.TemporaryDirectory(prefix="airgap-bench-") as tmp:
        work = Path(tmp)
        tree = args.tree.resolve() if args.tree else example_tree(work)
        generate_keypair(work / "keys", None)
        key = load_private_key(work / "keys" / "airgap.key", None)
        trust = [work / "keys" / "airgap.pub"]
        files = collect_tree(tree, "site-packages", skip_pycache=False)
        entry = next(f.path for f in files if f.path.endswith(".py"))
        meta = BundleMeta(
            name="bench",
            version="1",
            created=1700000000,
            target=Target("3.11", "cp", "cp311", ("manylinux_2_17_x86_64",)),
            entry_script=entry,
            mode="mounted",
        )
        bundle, tzst, tgz = work / "b.airgap", work / "b.tar.zst", work / "b.tar.gz"
        parent, name = tree.parent, tree.name
        times: dict[str, list[float]] = {
            k: [] for k in ("pack", "tar_zstd", "unpack", "zstd_tar_x")
        }
        for i in range(args.rounds):
            times["pack"].append(timed(lambda: write_bundle(bundle, files, meta, key)))
            times["tar_zstd"].append(
                timed(lambda: sh(f"tar -c -C '{parent}' '{name}' | zstd -T0 -3 -q -f -o '{tzst}'"))
            )
            dest_a, dest_b = work / f"dest-a{i}", work / f"dest-b{i}"
            dest_b.mkdir()
            times["unpack"].append(timed(lambda d=dest_a: unpack(bundle, d, trust)))
            times["zstd_tar_x"].append(
                timed(lambda d=dest_b: sh(f"zstd -d -q -c '{tzst}' | tar -x -C '{d}'"))
            )
            shutil.rmtree(dest_a)
            shutil.rmtree(dest_b)
        sh(f"tar -cz -C '{parent}' '{name}' > '{tgz}'")
        med = {k: statistics.median(v) for k, v in times.items()}
        n_files = len(files)
        tree_bytes = sum(f.size() for f in files)
        result = {
            "tree": str(tree),
            "files": n_files,
            "tree_bytes": tree_bytes,
            "rounds": args.rounds,
            "cpus": os.cpu_count(),
            "median_seconds": med,
            "sizes": {
                "bundle": bundle.stat().st_size,
                "tar_zst": tzst.stat().st_size,
                "tar_gz": tgz.stat().st_size,
            },
            "ratios": {
                "pack": med["pack"] / med["tar_zstd"],
                "verify_unpack": med["unpack"] / med["zstd_tar_x"],
                "size": bundle.stat().st_size / tgz.stat().st_size,
            },
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "format.json").write_text(json.dumps(result, indent=2) + "\n")
    r, s = result["ratios"], result["sizes"]
    rows = [
        (
            "pack",
            f"{med['pack']:.2f} s",
            f"tar -c | zstd -T0 -3: {med['tar_zstd']:.2f} s",
            r["pack"],
            TARGETS["pack"],
        ),
        (
            "verify + unpack",
            f"{med['unpack']:.2f} s",
            f"zstd -d | tar -x: {med['zstd_tar_x']:.2f} s",
            r["verify_unpack"],
            TARGETS["verify_unpack"],
        ),
        (
            "bundle size",
            f"{s['bundle'] / 2**20:.1f} MiB",
            f"tar -cz: {s['tar_gz'] / 2**20:.1f} MiB",
            r["size"],
            TARGETS["size"],
        ),
    ]
    lines = [
        f"# Bundle format benchmark ({n_files} files, {tree_bytes / 2**20:.0f} MiB tree, "
        f"{args.rounds} interleaved rounds, medians, {os.cpu_count()} CPUs)",
        "",
        "| measure | airgap | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|",
        *(
            f"| {a} | {b} | {c} | {d:.2f}x | <= {e}x | {'yes' if d <= e else 'NO'} |"
            for a, b, c, d, e in rows
        ),
        "",
        "verify + unpack includes signature, payload hash, per-file hashes and one syncfs "
        "before the atomic rename; the baseline does none of these.",
    ]
    text = "\n".join(lines) + "\n"
    (args.out / "format.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
