"""SBOM and audit benchmark on the iris example: what the SBOM adds to `pack`, and what
`audit` costs next to `verify`.

There is no offline baseline tool to race (pip-audit has no offline mode), so each figure is
set beside the command it rides on, measured in the same run in interleaved rounds (medians):

- SBOM build (the pipeline's step: hash the wheels and the model, read every METADATA,
  render the CycloneDX document) vs the whole `pack` of the same project;
- `audit BUNDLE --trust` (verify the manifest and payload hash, stream to the SBOM, load the
  advisory zip, match) vs `verify BUNDLE --trust` (every check, every file);
- `audit DEST` and loading the advisory zip alone.

The advisory zip is synthetic (no network to OSV here): ``--records`` OSV records (default
15,000, the order of OSV's PyPI export) over as many package names, every 1,000th one
an iris package's (affected, so the matching path runs too).

    python bench/bench_sbom.py                  # 3 rounds
    python bench/bench_sbom.py --rounds 5 --records 30000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bundler.audit.osv import load_database  # noqa: E402
from bundler.audit.report import audit  # noqa: E402
from bundler.formats.signing import generate_keypair  # noqa: E402
from bundler.pack.assemble import collect_tree  # noqa: E402
from bundler.pack.lock import for_target, parse_lock  # noqa: E402
from bundler.pack.pipeline import RUNTIME_LOCK, _sbom_file, pack  # noqa: E402
from bundler.pack.project import load_project  # noqa: E402
from bundler.pack.sitetree import build_site_tree  # noqa: E402
from bundler.pack.wheels import fetch_wheels  # noqa: E402
from bundler.progress import NullProgress  # noqa: E402
from bundler.verify.unpack import unpack, verify  # noqa: E402

EXAMPLE = ROOT / "examples" / "iris-sklearn"


def synthetic_osv(path: Path, records: int) -> None:
    """``records`` OSV records in OSV's zip layout; every 1,000th names an iris package."""
    iris = ["numpy", "scipy", "joblib", "scikit-learn", "gunicorn"]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for i in range(records):
            name = iris[(i // 1000) % len(iris)] if i % 1000 == 0 else f"package-{i % 9000}"
            rec = {
                "schema_version": "1.6.0",
                "id": f"PYSEC-2026-{i}",
                "modified": f"2026-11-{1 + i % 28:02d}T00:00:00Z",
                "aliases": [f"CVE-2026-{i}"],
                "summary": "synthetic advisory",
                "details": "x" * 400,
                "affected": [
                    {
                        "package": {"ecosystem": "PyPI", "name": name},
                        "ranges": [
                            {
                                "type": "ECOSYSTEM",
                                "events": [{"introduced": "0"}, {"fixed": f"{100 + i % 50}.0"}],
                            }
                        ],
                        "versions": [f"{v}.0" for v in range(10)],
                    }
                ],
            }
            z.writestr(f"PYSEC-2026-{i}.json", json.dumps(rec))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--records", type=int, default=15_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    os.environ.setdefault("SOURCE_DATE_EPOCH", "1700000000")
    with tempfile.TemporaryDirectory(prefix="bench-sbom-") as tmp:
        work = Path(tmp)
        generate_keypair(work / "keys", None)
        key, pub = work / "keys" / "airgap.key", work / "keys" / "airgap.pub"
        bundle = work / "iris.airgap"
        pack(EXAMPLE, bundle, key, bytecode="none")  # warms the wheel cache, too
        unpack(bundle, work / "dest", [pub])  # the library call: no host check
        db = work / "osv.zip"
        synthetic_osv(db, args.records)
        # The SBOM step's inputs, as the pipeline has them.
        project = load_project(EXAMPLE)
        target = project.target
        wheels = fetch_wheels(for_target(parse_lock(project.lock), target), target)
        runtime = fetch_wheels(for_target(parse_lock(RUNTIME_LOCK), target), target)
        build_site_tree(wheels, target, work / "site")
        build_site_tree(runtime, target, work / "runtime-lib")
        model = collect_tree(project.models[0].path, project.models[0].payload_path)
        trees = {
            "site-packages": (work / "site", wheels),
            "runtime/lib": (work / "runtime-lib", runtime),
        }

        def sbom_step() -> object:
            return _sbom_file(project, 1700000000, None, model, trees, NullProgress())

        def pack_all() -> object:
            return pack(EXAMPLE, work / "again.airgap", key, bytecode="none")

        now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
        pairs: dict[str, list[float]] = {
            k: [] for k in ("sbom", "pack", "audit_bundle", "verify", "audit_dest", "load_db")
        }
        for _ in range(args.rounds):
            pairs["sbom"].append(timed(sbom_step))
            pairs["pack"].append(timed(pack_all))
            pairs["audit_bundle"].append(timed(lambda: audit(bundle, db, trust=[pub], now=now)))
            pairs["verify"].append(timed(lambda: verify(bundle, [pub])))
            pairs["audit_dest"].append(timed(lambda: audit(work / "dest", db, now=now)))
            with db.open("rb") as f:
                pairs["load_db"].append(timed(lambda: load_database(f)))
        med = {k: statistics.median(v) for k, v in pairs.items()}
        report = audit(bundle, db, trust=[pub], now=now)
        sbom_bytes = len(sbom_step().source)  # type: ignore[attr-defined]
    result = {
        "rounds": args.rounds,
        "records": args.records,
        "medians_s": {k: round(v, 4) for k, v in med.items()},
        "ratios": {
            "sbom_vs_pack": round(med["sbom"] / med["pack"], 4),
            "audit_bundle_vs_verify": round(med["audit_bundle"] / med["verify"], 3),
            "audit_dest_vs_verify": round(med["audit_dest"] / med["verify"], 3),
        },
        "sbom_bytes": sbom_bytes,
        "packages": len(report.packages),
        "findings": len(report.findings),
        "machine": f"{os.cpu_count()} CPUs, shared with other jobs (loaded)",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sbom.json").write_text(json.dumps(result, indent=2) + "\n")
    r, m = result["ratios"], result["medians_s"]
    lines = [
        "# SBOM and audit on the iris example",
        "",
        f"{args.rounds} interleaved rounds, medians; synthetic OSV zip of {args.records} records;"
        f" {result['machine']}.",
        "",
        "| measure | ours | beside | ratio |",
        "|---|---|---|---|",
        f"| SBOM build vs whole pack | {m['sbom']:.3f} s | {m['pack']:.3f} s"
        f" | {r['sbom_vs_pack']} |",
        f"| audit BUNDLE --trust vs verify --trust | {m['audit_bundle']:.3f} s"
        f" | {m['verify']:.3f} s | {r['audit_bundle_vs_verify']} |",
        f"| audit DEST vs verify --trust | {m['audit_dest']:.3f} s | {m['verify']:.3f} s"
        f" | {r['audit_dest_vs_verify']} |",
        f"| loading the advisory zip alone | {m['load_db']:.3f} s | | |",
        "",
        f"SBOM: {sbom_bytes} bytes, {result['packages']} packages; "
        f"{result['findings']} synthetic findings.",
    ]
    (args.out / "sbom.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
