"""The tree cache through the real CLI: `airgap pack` twice with one cache dir, real wheels.

A hit is observed through what the pack reports (`--json` "trees") and the entries' hit
counters (`airgap cache info --json`), never through timing; every bundle packed from the
cache is compared byte for byte with a cold pack (`--no-tree-cache`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.network, pytest.mark.slow]

AIRGAP = [sys.executable, "-m", "bundler"]
HOST = f"{sys.version_info[0]}.{sys.version_info[1]}"
EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}
TABULATE = """\
tabulate==0.9.0 \\
    --hash=sha256:024ca478df22e9340661486f85298cff5f6dcdba14f3813e8830015b9ed1948f
"""
SIX = """\
six==1.17.0 \\
    --hash=sha256:4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274
"""


def airgap(
    *args: str | Path, cwd: Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*AIRGAP, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **EPOCH, **(env or {})},
        timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"airgap {args} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def make_project(root: Path, lock: str, platform: str = "manylinux_2_28_x86_64") -> Path:
    proj = root / "proj"
    (proj / "model").mkdir(parents=True, exist_ok=True)
    (proj / "model" / "m.txt").write_text("m")
    (proj / "score.py").write_text("def init():\n    pass\n\ndef run(raw_data):\n    return 1\n")
    (proj / "requirements.lock").write_text(lock)
    (proj / "bundle.toml").write_text(
        'name = "cache-demo"\nversion = "1.0.0"\nmodel = "model"\n'
        f'[target]\npython = "{HOST}"\nplatforms = ["{platform}"]\n'
    )
    return proj


class Packer:
    """Packs ``proj`` with the keys and one cache dir (wheels warm, trees per test)."""

    def __init__(self, work: Path, cache: Path) -> None:
        self.work, self.cache = work, cache
        self.count = 0

    def pack(self, proj: Path, *extra: str, check: bool = True) -> tuple[dict[str, Any], Path]:
        self.count += 1
        out = self.work / f"b{self.count}.airgap"
        proc = airgap(
            "pack",
            proj,
            "-o",
            out,
            "--key",
            "keys/airgap.key",
            "--cache-dir",
            self.cache,
            "-q",
            "--json",
            *extra,
            cwd=self.work,
            check=check,
        )
        return json.loads(proc.stdout), out

    def uses(self, proj: Path, *extra: str) -> tuple[dict[str, str], Path]:
        doc, out = self.pack(proj, *extra)
        return {t["tree"]: t["cache"] for t in doc["trees"]}, out

    def info(self) -> dict[str, Any]:
        proc = airgap("cache", "info", "--cache-dir", self.cache, "--json", cwd=self.work)
        doc: dict[str, Any] = json.loads(proc.stdout)
        return doc


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work dir with keys and a wheel cache already holding every wheel these tests use."""
    work = tmp_path_factory.mktemp("treecache")
    airgap("keygen", "--out", "keys", "--no-passphrase", cwd=work)
    packer = Packer(work, work / "wheels-cache")
    proj = make_project(work / "seed", TABULATE + SIX)
    packer.pack(proj, "--no-tree-cache")
    packer.pack(make_project(work / "seed2", TABULATE, "manylinux_2_31_x86_64"), "--no-tree-cache")
    assert not (work / "wheels-cache" / "trees").exists()  # --no-tree-cache writes none
    return work


@pytest.fixture
def packer(warm: Path, tmp_path: Path) -> Packer:
    cache = tmp_path / "cache"
    shutil.copytree(warm / "wheels-cache", cache)
    return Packer(warm, cache)


def cold(packer: Packer, proj: Path, *extra: str) -> bytes:
    _, out = packer.pack(proj, "--no-tree-cache", *extra)
    return out.read_bytes()


def test_second_pack_takes_both_trees_from_the_cache_byte_identical(
    packer: Packer, tmp_path: Path
) -> None:
    proj = make_project(tmp_path, TABULATE)
    first, one = packer.uses(proj)
    assert first == {"site-packages": "miss", "runtime/lib": "miss"}
    info = packer.info()
    assert [e["hits"] for e in info["entries"]] == [0, 0]
    second, two = packer.uses(proj)
    assert second == {"site-packages": "hit", "runtime/lib": "hit"}
    # No install happened: each entry's own counter says it was used, not rebuilt.
    info = packer.info()
    assert sorted((e["tree"], e["hits"]) for e in info["entries"]) == [
        ("runtime/lib", 1),
        ("site-packages", 1),
    ]
    assert info["root"] == str(packer.cache / "trees")
    assert info["size"] == sum(e["size"] for e in info["entries"]) > 0
    site = next(e for e in info["entries"] if e["tree"] == "site-packages")
    assert site["packages"] == ["tabulate==0.9.0"]
    assert one.read_bytes() == two.read_bytes() == cold(packer, proj)


def test_lock_target_and_bytecode_changes_miss(packer: Packer, tmp_path: Path) -> None:
    proj = make_project(tmp_path / "a", TABULATE)
    packer.uses(proj)
    # A new lock entry: a new site-packages tree; the runtime's lock did not change.
    grown = make_project(tmp_path / "b", TABULATE + SIX)
    doc, out = packer.pack(grown)
    uses = {t["tree"]: t["cache"] for t in doc["trees"]}
    assert uses == {"site-packages": "miss", "runtime/lib": "hit"}
    # tabulate's bytecode came from the first tree (same files, same interpreter); only six
    # was compiled. The bundle is still the one a cold pack writes.
    assert [t["reused_bytecode"] for t in doc["trees"]] == [1, 0]
    assert out.read_bytes() == cold(packer, grown)
    # Another target: both trees are built again.
    other = make_project(tmp_path / "c", TABULATE, "manylinux_2_31_x86_64")
    assert packer.uses(other)[0] == {"site-packages": "miss", "runtime/lib": "miss"}
    # Another bytecode setting: no .pyc, so another tree.
    uses, out = packer.uses(proj, "--bytecode", "none")
    assert uses == {"site-packages": "miss", "runtime/lib": "miss"}
    assert out.read_bytes() == cold(packer, proj, "--bytecode", "none")
    assert packer.uses(proj, "--bytecode", "none")[0]["site-packages"] == "hit"
    assert len(packer.info()["entries"]) == 7  # 2 + 1 + 2 + 2


def _site_entry(packer: Packer, doc: dict[str, Any]) -> Path:
    key = next(t["key"] for t in doc["trees"] if t["tree"] == "site-packages")
    return packer.cache / "trees" / key / "site"


def _edit_same_size(entry: Path) -> None:
    target = entry / "tabulate" / "__init__.py"
    data = bytearray(target.read_bytes())
    data[-2:] = b"#\n" if data[-2:] != b"#\n" else b"!\n"
    target.write_bytes(bytes(data))


def _edit_longer(entry: Path) -> None:
    target = entry / "tabulate" / "__init__.py"
    target.write_bytes(target.read_bytes() + b"\nimport os; os.system('id')\n")


def _add(entry: Path) -> None:
    (entry / "evil.pth").write_text("import os; os.system('id')\n")


def _remove(entry: Path) -> None:
    (entry / "tabulate" / "version.py").unlink()


def _chmod(entry: Path) -> None:
    (entry / "tabulate" / "__init__.py").chmod(0o755)


def _record_packages(entry: Path) -> None:
    # The record is not trusted either: the signed package list comes from the wheels.
    record = entry.parent / "record.json"
    doc = json.loads(record.read_text())
    doc["installed"] = [["tabulate", "9.9.9"]]
    record.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("tamper", "said"),
    [
        (_edit_same_size, "tabulate/__init__.py was edited"),
        (_edit_longer, "tabulate/__init__.py changed size or mode"),
        (_add, "site/evil.pth was added"),
        (_remove, "site/tabulate/version.py was removed"),
        (_chmod, "tabulate/__init__.py changed size or mode"),
        (_record_packages, "its record lists other distributions than the wheels"),
    ],
    ids=["edited-same-size", "edited", "added", "removed", "chmod", "record-packages"],
)
def test_tampered_entry_warns_rebuilds_and_matches_a_cold_pack(
    packer: Packer, tmp_path: Path, tamper: Any, said: str
) -> None:
    proj = make_project(tmp_path, TABULATE)
    doc, _ = packer.pack(proj)
    entry = _site_entry(packer, doc)
    # Without kept frames the writer reads the tree's files (with them, see the frame tests).
    shutil.rmtree(entry.parent / "frames")
    tamper(entry)
    out = packer.work / f"tampered-{tmp_path.name}.airgap"
    proc = airgap(
        "pack",
        proj,
        "-o",
        out,
        "--key",
        "keys/airgap.key",
        "--cache-dir",
        packer.cache,
        "-q",
        cwd=packer.work,
    )
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, proc.stderr
    assert warnings[0].startswith("warning: tree cache: site-packages entry ")
    assert said in warnings[0] and "rebuilding it" in warnings[0]
    assert out.read_bytes() == cold(packer, proj)
    # The entry was replaced by a good one: the next pack is a hit again, with no warning.
    doc, again = packer.pack(proj)
    assert {t["tree"]: t["cache"] for t in doc["trees"]}["site-packages"] == "hit"
    assert doc["warnings"] == []
    assert again.read_bytes() == out.read_bytes()


def test_tampered_reused_bytecode_warns_rebuilds_and_matches_a_cold_pack(
    packer: Packer, tmp_path: Path
) -> None:
    doc, _ = packer.pack(make_project(tmp_path / "a", TABULATE))
    pyc = next((_site_entry(packer, doc) / "tabulate" / "__pycache__").glob("__init__.*.pyc"))
    data = bytearray(pyc.read_bytes())
    data[-1] ^= 1  # same size: only the writer's hash can tell
    pyc.write_bytes(bytes(data))
    grown = make_project(tmp_path / "b", TABULATE + SIX)
    out = packer.work / f"reused-{tmp_path.name}.airgap"
    proc = airgap(
        "pack",
        grown,
        "-o",
        out,
        "--key",
        "keys/airgap.key",
        "--cache-dir",
        packer.cache,
        "-q",
        cwd=packer.work,
    )
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, proc.stderr
    assert warnings[0].startswith("warning: tree cache: site-packages: site/tabulate/__pycache__/")
    assert "reused from entry" in warnings[0] and warnings[0].endswith(
        "rebuilding it from the wheels"
    )
    assert out.read_bytes() == cold(packer, grown)
    # The donor was dropped with the tree that used it; the rebuilt tree is stored.
    assert {e["tree"]: e["packages"] for e in packer.info()["entries"]}["site-packages"] == [
        "six==1.17.0",
        "tabulate==0.9.0",
    ]


def test_a_broken_record_is_a_miss(packer: Packer, tmp_path: Path) -> None:
    proj = make_project(tmp_path, TABULATE)
    doc, _ = packer.pack(proj)
    (_site_entry(packer, doc).parent / "record.json").write_text("{not json")
    uses, out = packer.uses(proj)
    assert uses["site-packages"] == "miss"
    assert out.read_bytes() == cold(packer, proj)


def test_size_bound_evicts_least_recently_used_and_prune(packer: Packer, tmp_path: Path) -> None:
    small = make_project(tmp_path / "a", TABULATE)
    grown = make_project(tmp_path / "b", TABULATE + SIX)
    packer.pack(small)
    packer.pack(grown)
    entries = {(e["tree"], tuple(e["packages"])): e for e in packer.info()["entries"]}
    runtime = next(e for (tree, _), e in entries.items() if tree == "runtime/lib")
    site_a = entries[("site-packages", ("tabulate==0.9.0",))]
    site_b = entries[("site-packages", ("six==1.17.0", "tabulate==0.9.0"))]
    # Bounded to what one pack needs: after packing `small` again, `grown`'s tree (now the
    # least recently used) is evicted; the trees this pack used are kept.
    bound = runtime["size"] + site_a["size"]
    uses, _ = packer.uses(small, "--tree-cache-max", str(bound))
    assert uses == {"site-packages": "hit", "runtime/lib": "hit"}
    left = {e["key"] for e in packer.info()["entries"]}
    assert left == {runtime["key"], site_a["key"]}
    assert site_b["key"] not in left
    # The environment variable sets the same bound.
    packer.uses(grown)  # stores site_b again (the bound is the default here)
    env = {"AIRGAP_TREE_CACHE_MAX": str(runtime["size"] + site_b["size"])}
    doc = json.loads(
        airgap(
            "pack",
            grown,
            "-o",
            "env.airgap",
            "--key",
            "keys/airgap.key",
            "--cache-dir",
            packer.cache,
            "-q",
            "--json",
            cwd=packer.work,
            env=env,
        ).stdout
    )
    assert {t["cache"] for t in doc["trees"]} == {"hit"}
    assert {e["key"] for e in packer.info()["entries"]} == {runtime["key"], site_b["key"]}
    # prune --max-size: least recently used first; that pack took site-packages before
    # runtime/lib, so site_b goes and the runtime, which then fits, stays.
    proc = airgap(
        "cache",
        "prune",
        "--cache-dir",
        packer.cache,
        "--max-size",
        str(runtime["size"]),
        "--json",
        cwd=packer.work,
    )
    pruned = json.loads(proc.stdout)
    assert pruned["ok"] is True
    assert pruned["size"] <= runtime["size"]
    assert pruned["entries"] == 1
    assert [e["key"] for e in pruned["removed"]] == [site_b["key"]]
    assert pruned["freed"] == sum(e["size"] for e in pruned["removed"]) > 0
    # prune --all empties it; the next pack builds again.
    proc = airgap("cache", "prune", "--cache-dir", packer.cache, "--all", cwd=packer.work)
    assert proc.stdout.startswith("removed 1 entries")
    info = packer.info()
    assert info["entries"] == [] and info["size"] == 0
    assert packer.uses(small)[0] == {"site-packages": "miss", "runtime/lib": "miss"}


def test_prune_refuses_all_with_max_size_and_a_bad_size(packer: Packer) -> None:
    both = airgap(
        "cache",
        "prune",
        "--cache-dir",
        packer.cache,
        "--all",
        "--max-size",
        "1G",
        cwd=packer.work,
        check=False,
    )
    assert both.returncode == 2
    assert both.stderr.strip() == "error: --all and --max-size exclude each other; pass one of them"
    bad = airgap(
        "cache",
        "prune",
        "--cache-dir",
        packer.cache,
        "--max-size",
        "lots",
        cwd=packer.work,
        check=False,
    )
    assert bad.returncode == 2
    assert "'lots' is not a size" in bad.stderr


def test_concurrent_packs_share_the_cache(packer: Packer, tmp_path: Path) -> None:
    proj = make_project(tmp_path, TABULATE)
    outs = [packer.work / f"conc-{tmp_path.name}-{i}.airgap" for i in range(2)]
    procs = [
        subprocess.Popen(
            [
                *AIRGAP,
                "pack",
                str(proj),
                "-o",
                str(out),
                "--key",
                "keys/airgap.key",
                "--cache-dir",
                str(packer.cache),
                "-q",
            ],
            cwd=packer.work,
            env={**os.environ, **EPOCH},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for out in outs
    ]
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err
        assert b"warning" not in err
    assert outs[0].read_bytes() == outs[1].read_bytes() == cold(packer, proj)
    info = packer.info()
    assert len(info["entries"]) == 2  # one per tree, whichever pack stored it first
    assert not list((packer.cache / "trees" / "tmp").iterdir())  # no stage left behind


# ---- kept compressed frames ---------------------------------------------------------------


def _frames(packer: Packer, doc: dict[str, Any]) -> Path:
    """The site-packages entry's one kept frame set: frames/<params>/{index.json,N.zst}."""
    (params,) = (_site_entry(packer, doc).parent / "frames").iterdir()
    return params


def _frame_with(folder: Path, needle: bytes) -> Path:
    """The kept frame file whose members hold ``needle``."""
    import zstandard

    for f in sorted(folder.glob("*.zst")):
        if needle in zstandard.ZstdDecompressor().decompressobj().decompress(f.read_bytes()):
            return f
    raise AssertionError(f"no frame holds {needle!r}")


def _flip_compressed_byte(folder: Path) -> None:
    f = _frame_with(folder, b"def tabulate(")
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


def _recompress_other_content(folder: Path) -> None:
    # A valid zstd frame, same members and sizes, one byte of tabulate's code changed: only
    # the members' sha256 against the entry's record can tell.
    import zstandard

    f = _frame_with(folder, b"def tabulate(")
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(f.read_bytes())
    at = raw.index(b"def tabulate(")
    f.write_bytes(
        zstandard.ZstdCompressor(level=1).compress(raw[:at] + b"def tabulatf(" + raw[at + 13 :])
    )


def _swap_frames(folder: Path) -> None:
    # The site and prefix roots' frames traded places: valid frames, other members.
    a, b = sorted(folder.glob("*.zst"))[:2]
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)


def _truncate(folder: Path) -> None:
    f = _frame_with(folder, b"def tabulate(")
    f.write_bytes(f.read_bytes()[:-100])


@pytest.mark.parametrize(
    ("tamper", "said"),
    [
        (_flip_compressed_byte, "cached frame"),
        (_recompress_other_content, "a cached frame's content differs from the cache's record"),
        (_swap_frames, "cached frame holds another header"),
        (_truncate, "cached frame"),
    ],
    ids=["flipped-byte", "other-content", "swapped", "truncated"],
)
def test_a_tampered_kept_frame_is_compressed_again_and_matches_a_cold_pack(
    packer: Packer, tmp_path: Path, tamper: Any, said: str
) -> None:
    proj = make_project(tmp_path, TABULATE)
    doc, first = packer.pack(proj)
    assert [t["reused_frames"] for t in doc["trees"]] == [0, 0]  # built: frames kept now
    doc, second = packer.pack(proj)
    reused = {t["tree"]: t["reused_frames"] for t in doc["trees"]}
    assert reused["site-packages"] == 2 and reused["runtime/lib"] >= 1  # site + prefix roots
    assert first.read_bytes() == second.read_bytes()
    tamper(_frames(packer, doc))
    doc, out = packer.pack(proj)
    assert len(doc["warnings"]) == 1, doc["warnings"]
    line = doc["warnings"][0]
    assert line.startswith("tree cache: site-packages entry ") and said in line, line
    assert line.endswith("compressing it again")
    # The tree itself was fine: still a hit, and the bundle is the cold pack's.
    assert {t["tree"]: t["cache"] for t in doc["trees"]}["site-packages"] == "hit"
    assert out.read_bytes() == cold(packer, proj)
    # The frames were kept again from that bundle: reused with no warning next time.
    doc, again = packer.pack(proj)
    assert doc["warnings"] == []
    assert {t["tree"]: t["reused_frames"] for t in doc["trees"]}["site-packages"] == 2
    assert again.read_bytes() == out.read_bytes()


def test_kept_frames_ship_checked_bytes_not_an_edited_tree(packer: Packer, tmp_path: Path) -> None:
    # With frames the tree's files are not read: what ships is the frame, checked member by
    # member against the record, so an edit to the tree on disk cannot reach the bundle.
    proj = make_project(tmp_path, TABULATE)
    doc, first = packer.pack(proj)
    _edit_same_size(_site_entry(packer, doc))
    doc, out = packer.pack(proj)
    assert doc["warnings"] == []
    assert {t["tree"]: t["reused_frames"] for t in doc["trees"]}["site-packages"] == 2
    assert out.read_bytes() == first.read_bytes() == cold(packer, proj)


def test_frames_are_kept_only_with_a_pinned_created_time(packer: Packer, tmp_path: Path) -> None:
    proj = make_project(tmp_path, TABULATE)
    packer.pack(proj, "--json")
    # SOURCE_DATE_EPOCH unset: `created` is now, which every header carries, so frames
    # written now could never be reused; none are kept (the kept set stays the pinned one).
    trees = packer.cache / "trees"
    before = sorted(p.relative_to(trees) for p in trees.glob("*/frames/*/*"))
    assert before
    out = packer.work / f"now-{tmp_path.name}.airgap"
    proc = airgap(
        "pack",
        proj,
        "-o",
        out,
        "--key",
        "keys/airgap.key",
        "--cache-dir",
        packer.cache,
        "-q",
        "--json",
        cwd=packer.work,
        env={"SOURCE_DATE_EPOCH": ""},
    )
    doc = json.loads(proc.stdout)
    assert [t["reused_frames"] for t in doc["trees"]] == [0, 0]
    assert sorted(p.relative_to(trees) for p in trees.glob("*/frames/*/*")) == before
    # The kept frames count toward the cache's size bound: each entry's size is its files'
    # (from its record) plus its frames'.
    for e in packer.info()["entries"]:
        entry = trees / e["key"]
        files = json.loads((entry / "record.json").read_text())["size"]
        kept = sum(p.stat().st_size for p in entry.glob("frames/*/*"))
        assert kept > 0 and e["size"] == files + kept
