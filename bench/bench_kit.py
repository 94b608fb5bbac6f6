"""Bootstrap kit benchmark: kit size, build time and install time against the old recipe.

The baseline is what the README said before the kit: `pip wheel . -w airgap-wheels` on the
online side, `pip install --no-index --find-links airgap-wheels airgap-bundler` (into a fresh
`python3 -m venv`) on the isolated side. Ours: `airgap kit` (builds the wheel twice, resolves
for the target, signs) and `sh install.sh` (sha256sum -c, the signature with --trust, host
check, venv --without-pip, pip from its wheel with --require-hashes). Both are run in one
run, interleaved, on this machine's Python and platform; medians and ratios are reported.

    python bench/bench_kit.py                      # 1 build round, 3 install rounds
    python bench/bench_kit.py --rounds 5 --build-rounds 2
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EPOCH = "1700000000"


def clean_env(**extra: str) -> dict[str, str]:
    """No pip configuration and no checkout on the path, as on an isolated host."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    return {**env, "PIP_CONFIG_FILE": "/dev/null", **extra}


def run(cmd: list[str], **kw: object) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - start


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="install rounds")
    parser.add_argument("--build-rounds", type=int, default=1, help="build rounds (network)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    airgap = [sys.executable, "-m", "bundler"]
    online_env = {**os.environ, "SOURCE_DATE_EPOCH": EPOCH, "PYTHONPATH": str(ROOT)}

    with tempfile.TemporaryDirectory(prefix="airgap-bench-kit-") as tmp:
        work = Path(tmp)
        subprocess.run(
            [*airgap, "keygen", "--out", str(work / "keys"), "--no-passphrase"],
            check=True,
            capture_output=True,
            env=online_env,
        )
        build: dict[str, list[float]] = {"ours": [], "baseline": []}
        for i in range(args.build_rounds):
            kit = work / f"kit-{i}.tar"
            build["ours"].append(
                run(
                    [
                        *airgap,
                        "kit",
                        "-o",
                        str(kit),
                        "--key",
                        str(work / "keys" / "airgap.key"),
                        "--cache-dir",
                        str(work / "cache"),
                        "-q",
                    ],
                    env=online_env,
                )
            )
            src = work / f"src-{i}"  # pip wheel . builds in the tree: use a copy
            shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "*.airgap", "bench"))
            build["baseline"].append(
                run(
                    [
                        sys.executable,
                        "-m",
                        "pip",
                        "wheel",
                        ".",
                        "-w",
                        str(work / f"wheels-{i}"),
                        "--disable-pip-version-check",
                        "-q",
                    ],
                    cwd=src,
                )
            )
        kit = work / "kit-0.tar"
        wheels = work / "wheels-0"
        subprocess.run(["tar", "-xf", str(kit), "-C", str(work)], check=True)
        installer = work / "airgap-kit" / "install.sh"
        install: dict[str, list[float]] = {"ours": [], "baseline": []}
        for i in range(args.rounds):
            for side in ("ours", "baseline") if i % 2 == 0 else ("baseline", "ours"):
                venv = work / f"venv-{side}-{i}"
                if side == "ours":
                    t = run(
                        [
                            "sh",
                            str(installer),
                            "--trust",
                            str(work / "keys" / "airgap.pub"),
                            "--venv",
                            str(venv),
                        ],
                        env=clean_env(),
                    )
                else:
                    t = run([sys.executable, "-m", "venv", str(venv)], env=clean_env())
                    t += run(
                        [
                            str(venv / "bin" / "python"),
                            "-m",
                            "pip",
                            "install",
                            "-q",
                            "--no-index",
                            "--find-links",
                            str(wheels),
                            "airgap-bundler",
                        ],
                        env=clean_env(),
                    )
                subprocess.run(
                    [str(venv / "bin" / "airgap"), "--version"], check=True, capture_output=True
                )
                install[side].append(t)
                shutil.rmtree(venv)
        kit_size = kit.stat().st_size
        wheels_size = dir_size(wheels)
        manifest = json.loads((work / "airgap-kit" / "kit.json").read_bytes())

    med = {
        k: {s: statistics.median(v) for s, v in d.items()}
        for k, d in (("build", build), ("install", install))
    }
    result = {
        "machine": "2 shared CPU cores, loaded by other jobs (noisy)",
        "target": manifest["target"],
        "libc": manifest["libc"],
        "wheels": len(manifest["packages"]),
        "kit_bytes": kit_size,
        "baseline_wheels_bytes": wheels_size,
        "size_ratio": kit_size / wheels_size,
        "build_s": med["build"],
        "build_ratio": med["build"]["ours"] / med["build"]["baseline"],
        "install_s": med["install"],
        "install_ratio": med["install"]["ours"] / med["install"]["baseline"],
        "rounds": {"build": args.build_rounds, "install": args.rounds},
    }
    libc = manifest["libc"]
    floor = "none" if libc is None else f"{libc['family']} {libc['min_version']}"
    lines = [
        "# Bootstrap kit (bench/bench_kit.py)",
        "",
        f"Target {manifest['target']['abi']} on {', '.join(manifest['target']['platforms'])}, "
        f"C-library floor {floor}; {result['wheels']} wheels. "
        "Baseline: `pip wheel . -w airgap-wheels` + `python3 -m venv` + `pip install "
        "--no-index --find-links airgap-wheels airgap-bundler`. Medians; "
        f"{args.build_rounds} build round(s), {args.rounds} install rounds, interleaved. "
        "Machine: 2 shared cores, loaded by other engineers' jobs.",
        "",
        "| measure | ours (kit) | baseline | ratio |",
        "|---|---|---|---|",
        f"| size | {kit_size / 2**20:.1f} MiB (tar) | {wheels_size / 2**20:.1f} MiB (wheels) "
        f"| {result['size_ratio']:.2f}x |",
        f"| build (online) | {med['build']['ours']:.1f} s | {med['build']['baseline']:.1f} s "
        f"| {result['build_ratio']:.2f}x |",
        f"| install (isolated) | {med['install']['ours']:.1f} s "
        f"| {med['install']['baseline']:.1f} s | {result['install_ratio']:.2f}x |",
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kit.md").write_text("\n".join(lines), encoding="utf-8")
    (args.out / "kit.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
