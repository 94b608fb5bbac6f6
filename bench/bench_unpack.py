"""Verify + unpack against `zstd -d | tar -x` of the same payload, and peak RSS at scale.

Issue 9 parts 3 and 6. Three inputs, each packed once by the real writer:

- ``iris``: the iris example's site-packages tree (as bench_format.py builds it);
- ``tree``: a few GB of real wheels (torch, xgboost, onnxruntime, pandas, lightgbm, ...)
  unzipped into ``site-packages/`` plus the wheels themselves in ``wheels/`` (what
  ``--include-wheels`` carries);
- ``model``: one model file over 8 GiB (GNU base-256 size in its tar header) from a seeded
  stream that does not compress, like real weights.

Per input, interleaved rounds of: ``unpack()`` (signature, payload hash, every file hash, one
syncfs, atomic rename), ``unpack(sync=False)`` (``--no-sync``: the same without the syncfs),
the issue's baseline ``zstd -d -c payload.tar.zst | tar -x`` of the very payload inside the
bundle (no hashing, no fsync), and the same followed by ``sync`` (the durability of our
default); likewise ``verify()`` against ``zstd -d -c | sha256sum``. Every ratio goes to
bench/results/unpack.{md,json}, with the load average (the machine is shared). Peak RSS of
`pack` and `unpack` is measured on the large inputs, each in a fresh process.

    python bench/bench_unpack.py                          # all three, 3 rounds
    python bench/bench_unpack.py --cases iris --rounds 5
    python bench/bench_unpack.py --wheels DIR --work /var/tmp/bench   # DIR: *.whl to use

Needs the disk for the model case: about 4x --model-gib free under --work (the model is
deleted once packed). Everything large is removed at the end.
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
import zipfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bundler.formats.archive import read_outer  # noqa: E402
from bundler.formats.manifest import Target  # noqa: E402
from bundler.formats.signing import generate_keypair, load_private_key  # noqa: E402
from bundler.pack.assemble import BundleMeta, SourceFile, collect_tree, write_bundle  # noqa: E402
from bundler.verify import unpack as unpack_module  # noqa: E402
from bundler.verify.unpack import unpack, verify  # noqa: E402

GiB = 1 << 30
MiB = 1 << 20
TARGET_RATIO = 1.0
TARGET_RSS_MIB = 300
# Real wheels for the large tree (binary, for CPython 3.11 on x86_64).
WHEELS = (
    "torch==2.13.0",
    "xgboost",
    "onnxruntime",
    "pandas",
    "lightgbm",
    "numpy",
    "scipy",
    "scikit-learn",
    "nvidia-cublas",
)

_RSS_SCRIPT = r"""
import resource, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from bundler.verify.unpack import unpack
from bundler.pack.assemble import collect_tree, write_bundle
from bundler.formats.signing import load_private_key
import pickle
what, work = sys.argv[2], Path(sys.argv[3])
if what == "pack":
    files, meta = pickle.loads((work / "pack-args.pickle").read_bytes())
    key = load_private_key(work / "keys" / "airgap.key", None)
    write_bundle(work / "rss.airgap", files, meta, key)
else:
    unpack(work / "b.airgap", work / "rss-dest", [work / "keys" / "airgap.pub"])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def sh(cmd: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)


def timed(fn: Callable[[], object]) -> float:
    subprocess.run(["sync"], check=True)  # start each run without the last one's writeback
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def wheel_tree(work: Path, wheels: Path | None) -> Path:
    """site-packages/ from real wheels, unzipped; wheels/ with the wheels themselves."""
    if wheels is None:
        wheels = work / "wheel-cache"
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary",
             ":all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
             *(f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                                          "manylinux_2_17_x86_64", "manylinux2014_x86_64")),
             "-d", str(wheels), *WHEELS],
            check=True,
        )  # fmt: skip
    root = work / "tree"
    site = root / "site-packages"
    site.mkdir(parents=True)
    (root / "wheels").mkdir()
    for whl in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(whl) as z:
            z.extractall(site)
        shutil.copy(whl, root / "wheels" / whl.name)
    return root


def model_file(path: Path, size: int) -> None:
    """``size`` bytes from a seeded stream zstd cannot shrink (its window is smaller than the
    period), written in 1 MiB blocks."""
    rng = random.Random(9)
    period = [rng.randbytes(MiB) for _ in range(8)]
    with path.open("wb") as f:
        left = size
        i = 0
        while left:
            block = period[i % len(period)][: min(MiB, left)]
            f.write(block)
            left -= len(block)
            i += 1


def rss_kib(what: str, work: Path) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(ROOT), what, str(work)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(proc.stdout.split()[-1])


class _NoWriteback:
    """Writeback's interface doing nothing: ours without the early writeback, to measure
    what the hints are worth (the final syncfs still runs)."""

    def __init__(self, root: str) -> None:
        pass

    def range(self, fd: int, offset: int, length: int) -> None:
        pass

    def small(self, length: int) -> None:
        pass

    def close(self) -> None:
        pass


def unpack_without_writeback(bundle: Path, dest: Path, trust: list[Path]) -> None:
    real = unpack_module.Writeback
    unpack_module.Writeback = _NoWriteback  # type: ignore[misc,assignment]
    try:
        unpack(bundle, dest, trust)
    finally:
        unpack_module.Writeback = real  # type: ignore[misc]


def run_case(name: str, work: Path, sources: list[SourceFile], rounds: int, rss: bool) -> dict:
    import pickle

    key = load_private_key(work / "keys" / "airgap.key", None)
    trust = [work / "keys" / "airgap.pub"]
    entry = next((f.path for f in sources if f.path.endswith(".py")), sources[0].path)
    meta = BundleMeta(
        name=f"bench-{name}",
        version="1",
        created=1700000000,
        target=Target("3.11", "cp", "cp311", ("manylinux_2_28_x86_64",)),
        entry_script=entry,
        mode="mounted",
    )
    bundle = work / "b.airgap"
    write_bundle(bundle, sources, meta, key)
    result: dict = {"files": len(sources), "tree_bytes": sum(f.size() for f in sources)}
    if rss:
        (work / "pack-args.pickle").write_bytes(pickle.dumps((sources, meta)))
        result["rss_pack_mib"] = rss_kib("pack", work) / 1024
        (work / "rss.airgap").unlink()
    # The baseline reads the very payload inside the bundle.
    with bundle.open("rb") as f:
        outer = read_outer(f)
        payload = work / "payload.tar.zst"
        f.seek(outer.payload_offset)
        with payload.open("wb") as out:
            left = outer.payload_size
            while left:
                chunk = f.read(min(16 * MiB, left))
                out.write(chunk)
                left -= len(chunk)
    result["bundle_bytes"] = bundle.stat().st_size
    kinds = ("unpack", "unpack_nowb", "unpack_nosync", "tar_x", "tar_x_sync", "verify", "zstd_sha")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    tar_x = f"zstd -d -q -c '{payload}' | tar -x -C"
    for i in range(rounds):
        runs: dict[str, Callable[[Path], object]] = {
            "unpack": lambda d: unpack(bundle, d, trust),
            "unpack_nowb": lambda d: unpack_without_writeback(bundle, d, trust),
            "unpack_nosync": lambda d: unpack(bundle, d, trust, sync=False),
            "tar_x": lambda d: sh(f"{tar_x} '{d}'"),
            "tar_x_sync": lambda d: sh(f"{tar_x} '{d}' && sync"),
        }
        # Rotated each round, so no one always runs right after another's writeback.
        order = list(runs)[i % len(runs) :] + list(runs)[: i % len(runs)]
        for kind in order:
            dest = work / f"dest-{kind}-{i}"
            if kind.startswith("tar"):
                dest.mkdir()
            times[kind].append(timed(lambda fn=runs[kind], d=dest: fn(d)))
            shutil.rmtree(dest)
        times["verify"].append(timed(lambda: verify(bundle, trust)))
        times["zstd_sha"].append(
            timed(lambda: sh(f"zstd -d -q -c '{payload}' | sha256sum > /dev/null"))
        )
    if rss:
        result["rss_unpack_mib"] = rss_kib("unpack", work) / 1024
        shutil.rmtree(work / "rss-dest")
    med = {k: statistics.median(v) for k, v in times.items()}
    result["median_seconds"] = med
    result["ratios"] = {
        "verify_unpack": med["unpack"] / med["tar_x"],
        "verify_unpack_vs_sync": med["unpack"] / med["tar_x_sync"],
        "verify_unpack_nosync": med["unpack_nosync"] / med["tar_x"],
        "verify_unpack_no_writeback": med["unpack_nowb"] / med["tar_x"],
        "writeback_gain": med["unpack"] / med["unpack_nowb"],
        "verify": med["verify"] / med["zstd_sha"],
    }
    result["load_average_after"] = os.getloadavg()
    bundle.unlink()
    payload.unlink()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="iris,tree,model")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--wheels", type=Path, help="a folder of *.whl for the large tree")
    parser.add_argument("--model-gib", type=float, default=8.5)
    parser.add_argument("--work", type=Path, help="where the large files go (default: TMPDIR)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    for tool in ("tar", "zstd", "sha256sum"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is needed for the baselines")
    cases = args.cases.split(",")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="airgap-bench-unpack-", dir=args.work) as tmp:
        work = Path(tmp)
        generate_keypair(work / "keys", None)
        for case in cases:
            print(f"== {case}", file=sys.stderr)
            if case == "iris":
                from bench_format import example_tree

                tree = example_tree(work)
                sources = collect_tree(tree, "site-packages", skip_pycache=False)
                results[case] = run_case(case, work, sources, args.rounds, rss=False)
                shutil.rmtree(tree)
            elif case == "tree":
                root = wheel_tree(work, args.wheels)
                sources = collect_tree(root / "site-packages", "site-packages")
                sources += collect_tree(root / "wheels", "wheels")
                results[case] = run_case(case, work, sources, args.rounds, rss=True)
                shutil.rmtree(root)
            elif case == "model":
                (work / "model").mkdir()
                model_file(work / "model" / "weights.bin", int(args.model_gib * GiB))
                sources = collect_tree(work / "model", "model")
                sources.append(SourceFile("app/score.py", b"def init(): pass\n", 0o644))
                results[case] = run_case(case, work, sources, args.rounds, rss=True)
                shutil.rmtree(work / "model")
            else:
                parser.error(f"unknown case {case!r}")
    write_results(args.out, results, args.rounds)
    return 0


def write_results(out: Path, results: dict[str, dict], rounds: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    (out / "unpack.json").write_text(
        json.dumps({"rounds": rounds, "cpus": os.cpu_count(), "cases": results}, indent=2) + "\n"
    )
    lines = [
        f"# Verify + unpack benchmark ({rounds} interleaved rounds, medians, "
        f"{os.cpu_count()} CPUs; load average {load[0]:.1f} at the end: the machine was shared)",
        "",
        "| input | measure | airgap | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, r in results.items():
        med, rat = r["median_seconds"], r["ratios"]
        what = f"{case} ({r['files']} files, {r['tree_bytes'] / GiB:.2f} GiB)"
        for ours, base, ratio, target in (
            ("unpack", "tar_x", "verify_unpack", True),
            ("unpack_nosync", "tar_x", "verify_unpack_nosync", True),
            ("unpack", "tar_x_sync", "verify_unpack_vs_sync", False),
            ("unpack_nowb", "tar_x", "verify_unpack_no_writeback", False),
        ):
            label = "verify + unpack" + {
                "unpack_nosync": " --no-sync",
                "unpack_nowb": " without the early writeback",
            }.get(ours, "")
            shown = "zstd -d \\| tar -x" + (" && sync" if base == "tar_x_sync" else "")
            met = ("yes" if rat[ratio] <= TARGET_RATIO else "NO") if target else "-"
            lines.append(
                f"| {what} | {label} | {med[ours]:.2f} s | {shown}: {med[base]:.2f} s | "
                f"{rat[ratio]:.2f}x | {f'<= {TARGET_RATIO}x' if target else '-'} | {met} |"
            )
        lines.append(
            f"| {what} | verify | {med['verify']:.2f} s | zstd -d \\| sha256sum: "
            f"{med['zstd_sha']:.2f} s | {rat['verify']:.2f}x | - | - |"
        )
        for step in ("pack", "unpack"):
            if f"rss_{step}_mib" in r:
                mib = r[f"rss_{step}_mib"]
                lines.append(
                    f"| {what} | peak RSS, {step} | {mib:.0f} MiB | - | - | "
                    f"< {TARGET_RSS_MIB} MiB | {'yes' if mib < TARGET_RSS_MIB else 'NO'} |"
                )
    lines += [
        "",
        "verify + unpack includes the signature, the payload hash, every file's hash, one "
        "syncfs of the stage and the atomic rename; `zstd -d | tar -x` (the issue's "
        "baseline, and the target's) does none of these, `&& sync` adds the durability of "
        'our default. `--no-sync` is ours without the syncfs; "without the early writeback" '
        "is our default with the sync_file_range/background-syncfs hints disabled (the final "
        "syncfs still runs), to show what they are worth. Each timed run starts after a "
        "`sync`; the five unpack kinds run in a rotated order each round. Load average "
        "after each input: "
        + ", ".join(f"{case} {r['load_average_after'][0]:.1f}" for case, r in results.items())
        + ".",
    ]
    text = "\n".join(lines) + "\n"
    (out / "unpack.md").write_text(text)
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
