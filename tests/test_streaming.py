"""Memory stays flat: packing and unpacking a large tree does not grow with its size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = r"""
import os, resource, sys
from pathlib import Path
from bundler.pack.assemble import BundleMeta, SourceFile, collect_tree, write_bundle
from bundler.formats.manifest import Target
from bundler.formats.signing import generate_keypair, load_private_key
from bundler.verify.unpack import unpack

work = Path(sys.argv[1])
generate_keypair(work / "k", None)
key = load_private_key(work / "k" / "airgap.key", None)
files = collect_tree(work / "tree", "model") + [SourceFile("app/score.py", b"", 0o644)]
meta = BundleMeta("big", "1", 1700000000, Target("3.11", "cp", "cp311", ("any",)),
                  "app/score.py", "mounted")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
write_bundle(work / "big.airgap", files, meta, key, level=1)
unpack(work / "big.airgap", work / "dest", [work / "k" / "airgap.pub"])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after)
"""


def test_pack_and_unpack_of_1_gib_keep_memory_flat(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    # 1 GiB in four files, mostly zeros with random blocks so zstd has real work to do.
    block = os.urandom(1 << 20)
    for i in range(4):
        with (tree / f"part{i}.bin").open("wb") as f:
            for j in range(256):
                f.write(block if j % 16 == 0 else b"\0" * (1 << 20))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    before_kib, after_kib = map(int, proc.stdout.split())
    # Peak RSS grows by far less than the 1 GiB that went through (chunks are 1 MiB, the
    # decompression queue holds at most 8, zstd's window is bounded).
    print("rss before/after (KiB):", before_kib, after_kib)
    assert after_kib - before_kib < 160 * 1024, (before_kib, after_kib)
    assert (tmp_path / "dest" / "model" / "part3.bin").stat().st_size == 256 << 20
