"""Co-signing benchmark: `airgap sign` against repacking and against cp + openssl, and
`verify --policy` (2 of 3) against `verify --trust` (1 of 1), on one bundle.

Interleaved rounds in one run, medians, ratios. No speed target was set for co-signing; this
shows what "without repacking" buys and what a policy check costs.

    python bench/bench_cosign.py                 # 64 MiB incompressible model, 5 rounds
    python bench/bench_cosign.py --mib 256 --rounds 7
"""

from __future__ import annotations

import argparse
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
from bundler.pack.assemble import BundleMeta, SourceFile, write_bundle  # noqa: E402
from bundler.pack.cosign import cosign  # noqa: E402
from bundler.verify.unpack import verify  # noqa: E402


def timed(fn: Callable[[], object]) -> float:
    subprocess.run(["sync"], check=True)  # start each run without the last one's writeback
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="model size (random bytes)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if shutil.which("openssl") is None:
        parser.error("openssl is needed for the baseline")

    with tempfile.TemporaryDirectory(prefix="airgap-bench-cosign-") as tmp:
        work = Path(tmp)
        names = ("alice", "bob", "carol")
        for n in names:
            generate_keypair(work / n, None)
        alice = load_private_key(work / "alice" / "airgap.key", None)
        files = [
            SourceFile("app/score.py", b"def init(): pass\ndef run(d): return d\n", 0o644),
            SourceFile("model/m.bin", os.urandom(args.mib * 1024 * 1024), 0o644),
        ]
        meta = BundleMeta(
            name="bench",
            version="1.0",
            created=1_700_000_000,
            target=Target("3.11", "cp", "cp311", ("manylinux_2_17_x86_64",)),
            entry_script="app/score.py",
            mode="mounted",
        )
        original = work / "original.airgap"
        write_bundle(original, files, meta, alice, threads=1)
        policy = work / "policy.toml"
        policy.write_text(
            'format = "airgap-trust-policy/1"\n[keys]\n'
            + "".join(f'{n} = "{work / n / "airgap.pub"}"\n' for n in names)
            + "[[rules]]\nthreshold = 2\n"
        )
        cosigned = work / "cosigned.airgap"
        shutil.copy(original, cosigned)
        cosign(cosigned, work / "bob" / "airgap.key")

        times: dict[str, list[float]] = {
            k: [] for k in ("sign", "repack", "cp_openssl", "verify_policy", "verify_trust")
        }
        target = work / "round.airgap"
        copy = work / "copy.airgap"
        sign_cmd = ["openssl", "pkeyutl", "-sign", "-inkey", str(work / "bob" / "airgap.key")]
        sign_cmd += ["-rawin", "-in", str(work / "manifest.json"), "-out", str(work / "s")]

        def cp_openssl() -> None:
            shutil.copyfile(original, copy)
            subprocess.run(["tar", "-xf", str(copy), "-C", str(work), "manifest.json"], check=True)
            subprocess.run(sign_cmd, check=True)

        for _ in range(args.rounds):
            shutil.copy(original, target)  # outside the timing: a bundle not yet co-signed
            times["sign"].append(timed(lambda: cosign(target, work / "bob" / "airgap.key")))
            times["repack"].append(
                timed(lambda: write_bundle(work / "repacked.airgap", files, meta, alice))
            )
            times["cp_openssl"].append(timed(cp_openssl))
            times["verify_policy"].append(
                timed(lambda: verify(cosigned, [], policy=policy, now=1_700_000_001))
            )
            times["verify_trust"].append(
                timed(lambda: verify(cosigned, [work / "alice" / "airgap.pub"], now=1_700_000_001))
            )
        med = {k: statistics.median(v) for k, v in times.items()}

    rows = [
        ("sign (in the bundle)", "sign", "repack (write_bundle, same inputs)", "repack"),
        ("sign (in the bundle)", "sign", "cp + openssl pkeyutl -sign", "cp_openssl"),
        ("verify --policy (2 of 3)", "verify_policy", "verify --trust (1 of 1)", "verify_trust"),
    ]
    lines = [
        f"# Co-signing benchmark ({args.mib} MiB incompressible model, {args.rounds} "
        f"interleaved rounds, medians, {os.cpu_count()} CPUs shared with other work)",
        "",
        "| measure | airgap | baseline | ratio |",
        "|---|---|---|---|",
    ]
    for label, ours, base_label, base in rows:
        ratio = med[ours] / med[base]
        lines.append(
            f"| {label} | {med[ours]:.3f} s | {base_label}: {med[base]:.3f} s | {ratio:.2f}x |"
        )
    lines += [
        "",
        "sign checks the payload's sha256 before signing, copies the archive up to the first "
        "signature (copy_file_range) and renames over the bundle after an fsync; cp + openssl "
        "does neither check nor sync. No target was set for these numbers.",
    ]
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cosign.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
