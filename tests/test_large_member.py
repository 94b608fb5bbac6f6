"""A member over 8 GiB: GNU base-256 sizes in the writer's and the reader's headers, at full
size through the real pack and unpack, with flat memory and without 8 GiB of disk.

The model is 8 GiB of zeros from a stream (no file on disk): zstd shrinks it to a few
hundred KiB, and the unpacker turns its zero chunks into holes, so the test costs CPU time
(two passes of sha256 over 8 GiB, compression and decompression), not disk.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bundler.formats.archive import BLOCK, parse_header, ustar_header

GiB = 1 << 30
OCTAL_LIMIT = 8**11  # 11 octal digits: the largest size an octal ustar field holds, plus one


@pytest.mark.parametrize("size", [OCTAL_LIMIT - 1, OCTAL_LIMIT, 300 * GiB])
def test_sizes_from_8_gib_use_base_256_and_read_back_in_our_reader_and_tarfile(
    size: int,
) -> None:
    block = ustar_header("model/weights.bin", size, 0o644, 1_700_000_000)
    assert len(block) == BLOCK
    assert (block[124] == 0x80) == (size >= OCTAL_LIMIT)  # base-256 exactly from 8 GiB on
    assert parse_header(block, 0).size == size
    # An independent reader (GNU tar's rules, as Python's tarfile implements them) agrees.
    info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
    assert (info.name, info.size, info.mode) == ("model/weights.bin", size, 0o644)


SCRIPT = r"""
import io, resource, sys, zstandard
from pathlib import Path
from bundler.formats.archive import read_outer, parse_header, BLOCK
from bundler.formats.manifest import Target
from bundler.formats.signing import generate_keypair, load_private_key
from bundler.pack.assemble import BundleMeta, SourceFile, write_bundle
from bundler.verify.unpack import unpack

SIZE = int(sys.argv[2])
ZERO = memoryview(bytes(1 << 20))


class Zeros(io.RawIOBase):
    def __init__(self) -> None:
        self.left = SIZE

    def readable(self) -> bool:
        return True

    def readinto(self, b):
        n = min(len(b), self.left, len(ZERO))
        b[:n] = ZERO[:n]
        self.left -= n
        return n


class ZeroModel(SourceFile):
    def open(self):
        return io.BufferedReader(Zeros(), 1 << 20)

    def size(self) -> int:
        return SIZE


work = Path(sys.argv[1])
generate_keypair(work / "k", None)
key = load_private_key(work / "k" / "airgap.key", None)
files = [SourceFile("app/score.py", b"def init(): pass\n", 0o644),
         ZeroModel("model/weights.bin", b"", 0o644)]
meta = BundleMeta("big", "1", 1700000000, Target("3.11", "cp", "cp311", ("any",)),
                  "app/score.py", "mounted")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
write_bundle(work / "big.airgap", files, meta, key, level=1, threads=1)
unpack(work / "big.airgap", work / "dest", [work / "k" / "airgap.pub"])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
# The model's header inside the payload, as written: the second member's.
with (work / "big.airgap").open("rb") as f:
    outer = read_outer(f)
    f.seek(outer.payload_offset)
    head = zstandard.ZstdDecompressor().stream_reader(f).read(4 * BLOCK)
print(before, after, head[2 * BLOCK:3 * BLOCK].hex())
"""


@pytest.mark.slow
def test_a_model_over_8_gib_packs_and_unpacks_with_flat_memory(tmp_path: Path) -> None:
    size = 8 * GiB + 3 * (1 << 20) + 11  # not a whole number of chunks or blocks
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(size)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    before_kib, after_kib, header_hex = proc.stdout.split()
    header = bytes.fromhex(header_hex)
    assert header[124] == 0x80  # the writer used GNU base-256 for the size
    assert parse_header(header, 0).size == size
    assert tarfile.TarInfo.frombuf(header, "utf-8", "strict").size == size
    # Memory stays flat: 8 GiB went through twice (pack and unpack).
    assert int(after_kib) - int(before_kib) < 160 * 1024, (before_kib, after_kib)
    model = tmp_path / "dest" / "model" / "weights.bin"
    st = model.stat()
    assert st.st_size == size
    assert st.st_blocks * 512 < 64 << 20  # zero chunks became holes: no 8 GiB written
    with model.open("rb") as f:
        f.seek(size - 4096)
        assert f.read() == bytes(4096)
    assert (tmp_path / "big.airgap").stat().st_size < 16 << 20
