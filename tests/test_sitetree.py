"""Building a site-packages tree from wheels: layout, RECORD, modes, determinism, refusals."""

from __future__ import annotations

import base64
import csv
import hashlib
import os
import re
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _wheelfactory import make_wheel

from bundler.errors import SiteTreeError
from bundler.pack.lock import parse_lock_text
from bundler.pack.sitetree import INSTALLER, ZIP_EPOCH, Installed, build_site_tree
from bundler.pack.wheels import fetch_wheels
from bundler.target import Target

X86_311 = Target.create("3.11", ["manylinux_2_17_x86_64"])


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under ``root``: (mode bits, mtime, sha256 or 'dir')."""
    out: dict[str, tuple[int, int, str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        out[path.relative_to(root).as_posix()] = (
            stat.S_IMODE(st.st_mode),
            int(st.st_mtime),
            digest,
        )
    return out


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _demo_wheels(directory: Path) -> list[Path]:
    directory.mkdir(exist_ok=True)
    return [
        make_wheel(
            directory,
            "demo-pkg",
            "1.2",
            {
                "demo_pkg/__init__.py": b"VALUE = 42\n",
                "demo_pkg/tool.sh": b"#!/bin/sh\necho hi\n",
                "demo_pkg/__pycache__/__init__.cpython-311.pyc": b"\x00bytecode",
            },
            data={
                "purelib/demo_extra.py": b"EXTRA = 1\n",
                "platlib/demo_native.py": b"NATIVE = 1\n",
                "scripts/demo-cli": b"#!python\n",
                "headers/demo.h": b"int x;\n",
                "data/share/demo.txt": b"data\n",
            },
            executables=("demo_pkg/tool.sh",),
            extra_dist_info={"INSTALLER": b"pip\n", "entry_points.txt": b"[console_scripts]\n"},
        ),
        make_wheel(
            directory,
            "other",
            "0.1",
            {"other/__init__.py": b"", "other/native.so": b"\x7fELF"},
            tag="cp311-cp311-manylinux_2_17_x86_64",
        ),
    ]


def test_tree_layout_record_and_installer(tmp_path: Path) -> None:
    wheels = _demo_wheels(tmp_path / "w")
    dest = tmp_path / "site"
    installed = build_site_tree(wheels, X86_311, dest)
    assert installed == [Installed("demo-pkg", "1.2"), Installed("other", "0.1")]
    tree = snapshot(dest)
    files = sorted(p for p, (_, _, d) in tree.items() if d != "dir")
    assert files == [
        "demo_extra.py",
        "demo_native.py",
        "demo_pkg-1.2.dist-info/INSTALLER",
        "demo_pkg-1.2.dist-info/METADATA",
        "demo_pkg-1.2.dist-info/RECORD",
        "demo_pkg-1.2.dist-info/WHEEL",
        "demo_pkg-1.2.dist-info/entry_points.txt",
        "demo_pkg/__init__.py",
        "demo_pkg/tool.sh",
        "other-0.1.dist-info/INSTALLER",
        "other-0.1.dist-info/METADATA",
        "other-0.1.dist-info/RECORD",
        "other-0.1.dist-info/WHEEL",
        "other/__init__.py",
        "other/native.so",
    ]
    assert (dest / "demo_pkg-1.2.dist-info" / "INSTALLER").read_text() == f"{INSTALLER}\n"

    # The regenerated RECORD lists every installed file with its real hash and size.
    record_path = dest / "demo_pkg-1.2.dist-info" / "RECORD"
    rows = list(csv.reader(record_path.read_text().splitlines()))
    assert rows[-1] == ["demo_pkg-1.2.dist-info/RECORD", "", ""]
    listed = {row[0] for row in rows}
    assert listed == {p for p in files if p.startswith(("demo_", "demo_pkg"))}
    for rel, digest, size in rows[:-1]:
        data = (dest / rel).read_bytes()
        want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert digest == f"sha256={want}"
        assert int(size) == len(data)
    assert [r[0] for r in rows[:-1]] == sorted(r[0] for r in rows[:-1])


def test_modes_times_and_no_bytecode(tmp_path: Path, umask: None) -> None:
    dest = tmp_path / "site"
    build_site_tree(_demo_wheels(tmp_path / "w"), X86_311, dest, mtime=1_700_000_000)
    tree = snapshot(dest)
    assert tree["demo_pkg/tool.sh"][0] == 0o755
    assert tree["demo_pkg/__init__.py"][0] == 0o644
    assert {mode for p, (mode, _, d) in tree.items() if d == "dir"} == {0o755}
    assert {mode for p, (mode, _, d) in tree.items() if d != "dir"} == {0o644, 0o755}
    assert {mtime for _, mtime, _ in tree.values()} == {1_700_000_000}
    assert int(dest.stat().st_mtime) == 1_700_000_000
    assert not [p for p in tree if p.endswith(".pyc") or "__pycache__" in p]


def test_identical_inputs_give_identical_trees(tmp_path: Path) -> None:
    wheels = _demo_wheels(tmp_path / "w")
    build_site_tree(wheels, X86_311, tmp_path / "a")
    old = os.umask(0o027)
    try:
        build_site_tree(list(reversed(wheels)), X86_311, tmp_path / "b")
    finally:
        os.umask(old)
    first, second = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    assert first == second
    assert {mtime for _, mtime, _ in first.values()} == {ZIP_EPOCH}


def test_the_tree_is_importable(tmp_path: Path) -> None:
    dest = tmp_path / "site"
    build_site_tree(_demo_wheels(tmp_path / "w"), X86_311, dest)
    code = "import demo_pkg, demo_extra; print(demo_pkg.VALUE + demo_extra.EXTRA)"
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(dest)!r}); {code}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "43"


def test_a_wheel_for_another_target_is_refused(tmp_path: Path) -> None:
    wheel = make_wheel(
        tmp_path, "native", "1.0", {"n.py": b""}, tag="cp312-cp312-manylinux_2_17_x86_64"
    )
    with pytest.raises(SiteTreeError, match="does not fit target cp311"):
        build_site_tree([wheel], X86_311, tmp_path / "site")
    assert not (tmp_path / "site").exists()


@pytest.mark.parametrize(
    "member",
    [
        "../evil.py",
        "/abs.py",
        "pkg/../../evil.py",
        "C:/evil.py",
        "pkg\\evil.py",
        "pkg//x.py",
        "./x.py",
    ],
)
def test_unsafe_member_paths_are_refused(tmp_path: Path, member: str) -> None:
    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / "canary").write_text("keep")
    wheel = make_wheel(tmp_path, "bad", "1.0", {"bad/__init__.py": b"", member: b"owned"})
    with pytest.raises(SiteTreeError, match="unsafe path"):
        build_site_tree([wheel], X86_311, outer / "dest")
    assert sorted(p.name for p in outer.iterdir()) == ["canary"]
    assert not (tmp_path / "evil.py").exists()


def test_unsafe_purelib_path_in_data_dir_is_refused(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "bad", "1.0", {}, data={"purelib/../../../evil.py": b"x"})
    with pytest.raises(SiteTreeError, match="unsafe path"):
        build_site_tree([wheel], X86_311, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_symlink_members_are_refused(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "bad", "1.0", {"bad.py": b""}, symlinks={"link": "/etc/passwd"})
    with pytest.raises(SiteTreeError, match="not a regular file"):
        build_site_tree([wheel], X86_311, tmp_path / "dest")


def test_members_missing_from_record_are_refused(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "bad", "1.0", {"bad.py": b""}, unrecorded={"sneaky.py": b"x"})
    with pytest.raises(SiteTreeError, match=re.escape("sneaky.py is not listed in its RECORD")):
        build_site_tree([wheel], X86_311, tmp_path / "dest")


def test_record_hash_and_size_mismatches_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    bad_hash = make_wheel(
        tmp_path / "a",
        "bad",
        "1.0",
        {"bad.py": b"real"},
        record_overrides={"bad.py": "sha256=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA,4"},
    )
    with pytest.raises(SiteTreeError, match="does not match the hash in its RECORD"):
        build_site_tree([bad_hash], X86_311, tmp_path / "d1")
    real = base64.urlsafe_b64encode(hashlib.sha256(b"real").digest()).rstrip(b"=").decode()
    bad_size = make_wheel(
        tmp_path / "b",
        "bad",
        "1.0",
        {"bad.py": b"real"},
        record_overrides={"bad.py": f"sha256={real},99"},
    )
    with pytest.raises(SiteTreeError, match="is 4 bytes, its RECORD says 99"):
        build_site_tree([bad_size], X86_311, tmp_path / "d2")
    weak = make_wheel(
        tmp_path / "c",
        "bad",
        "1.0",
        {"bad.py": b"real"},
        record_overrides={"bad.py": "md5=abc,4"},
    )
    with pytest.raises(SiteTreeError, match="need sha256 or better"):
        build_site_tree([weak], X86_311, tmp_path / "d3")


def test_unknown_wheel_major_version_is_refused(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "future", "1.0", {"f.py": b""}, wheel_version="2.0")
    with pytest.raises(SiteTreeError, match=re.escape("Wheel-Version 2.0 is not supported")):
        build_site_tree([wheel], X86_311, tmp_path / "dest")


def test_dist_info_for_another_distribution_is_refused(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "liar", "1.0", {"l.py": b""}, dist_info="other-1.0.dist-info")
    with pytest.raises(SiteTreeError, match="names another distribution"):
        build_site_tree([wheel], X86_311, tmp_path / "dest")


def test_duplicate_zip_members_are_refused(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "dup", "1.0", {"dup.py": b"one"})
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(wheel, "a") as zf:
        zf.writestr("dup.py", b"two")
    with pytest.raises(SiteTreeError, match="appears twice"):
        build_site_tree([wheel], X86_311, tmp_path / "dest")


def test_two_wheels_of_one_distribution_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    one = make_wheel(tmp_path, "twin", "1.0", {"twin.py": b""})
    two = make_wheel(tmp_path / "a", "twin", "2.0", {"twin.py": b""})
    with pytest.raises(SiteTreeError, match="more than one wheel for twin"):
        build_site_tree([one, two], X86_311, tmp_path / "dest")


def test_clashing_files_between_wheels(tmp_path: Path) -> None:
    # Identical bytes at one path (a shared namespace __init__.py) are fine ...
    same_a = make_wheel(tmp_path, "ns-a", "1", {"ns/__init__.py": b"", "ns/a.py": b"A"})
    same_b = make_wheel(tmp_path, "ns-b", "1", {"ns/__init__.py": b"", "ns/b.py": b"B"})
    build_site_tree([same_a, same_b], X86_311, tmp_path / "ok")
    assert (tmp_path / "ok" / "ns" / "a.py").exists() and (tmp_path / "ok" / "ns" / "b.py").exists()
    # ... different bytes are not, and a failed build leaves nothing behind.
    diff = make_wheel(tmp_path, "ns-c", "1", {"ns/__init__.py": b"x = 1\n"})
    with pytest.raises(
        SiteTreeError, match=re.escape("both install ns/__init__.py with different")
    ):
        build_site_tree([same_a, diff], X86_311, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_a_file_where_another_wheel_needs_a_folder_is_refused(tmp_path: Path) -> None:
    first = make_wheel(tmp_path, "aaa", "1", {"shared": b"a file"})
    second = make_wheel(tmp_path, "bbb", "1", {"shared/mod.py": b"x = 1\n"})
    with pytest.raises(SiteTreeError, match=re.escape("cannot create shared/mod.py")) as info:
        build_site_tree([first, second], X86_311, tmp_path / "one")
    assert "a file or a folder" in (info.value.remedy or "")
    assert not (tmp_path / "one").exists()
    third = make_wheel(tmp_path, "ccc", "1", {"aaa_dir/sub.py": b""})
    fourth = make_wheel(tmp_path, "ddd", "1", {"aaa_dir": b"a file"})
    with pytest.raises(SiteTreeError, match="cannot create aaa_dir:") as info:
        build_site_tree([third, fourth], X86_311, tmp_path / "two")
    assert "a file or a folder" in (info.value.remedy or "")


def test_paths_differing_only_in_case_are_refused(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "cases", "1", {"cases/Readme.txt": b"a", "cases/README.txt": b"b"})
    with pytest.raises(SiteTreeError, match="differ only in letter case"):
        build_site_tree([wheel], X86_311, tmp_path / "dest")


def test_paths_differing_only_in_unicode_normalisation_are_refused(tmp_path: Path) -> None:
    # "café" composed (NFC) in one wheel and decomposed (NFD) in another: one name on macOS,
    # and the bundle format folds them together too, so the installer must refuse them first.
    nfc, nfd = "cases/caf\u00e9.txt", "cases/cafe\u0301.txt"
    one = make_wheel(tmp_path, "one", "1", {nfc: b"a"})
    two = make_wheel(tmp_path, "two", "1", {nfd: b"b"})
    with pytest.raises(SiteTreeError, match="Unicode normalisation"):
        build_site_tree([one, two], X86_311, tmp_path / "dest")


def test_dest_must_be_empty(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "ok", "1", {"ok.py": b""})
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "existing").write_text("keep")
    with pytest.raises(SiteTreeError, match="is not an empty folder"):
        build_site_tree([wheel], X86_311, dest)
    assert (dest / "existing").read_text() == "keep"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_site_tree([wheel], X86_311, empty) == [Installed("ok", "1")]


def test_not_a_zip_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "fake-1.0-py3-none-any.whl"
    fake.write_bytes(b"not a zip")
    with pytest.raises(SiteTreeError, match="not a readable zip archive"):
        build_site_tree([fake], X86_311, tmp_path / "dest")
    with pytest.raises(SiteTreeError, match="not a wheel file name"):
        build_site_tree([tmp_path / "nope.zip"], X86_311, tmp_path / "dest")


# --- a real binary wheel for a foreign target ------------------------------------------

MARKUPSAFE_LOCK = """\
markupsafe==3.0.2 \\
    --hash=sha256:1c99d261bd2d5f6b59325c92c73df481e05e57f19837bdca8413b9eac4bd8028
"""


@pytest.mark.network
def test_cross_target_tree_from_a_real_aarch64_wheel(tmp_path: Path) -> None:
    """A tree for CPython 3.12 on aarch64, built on any host: the .so is the target's."""
    target = Target.create("3.12", ["manylinux_2_17_aarch64"])
    wheels = fetch_wheels(parse_lock_text(MARKUPSAFE_LOCK), target, tmp_path / "cache")
    dest = tmp_path / "site"
    assert build_site_tree(wheels, target, dest) == [Installed("markupsafe", "3.0.2")]
    native = sorted(p.name for p in (dest / "markupsafe").glob("*.so"))
    assert native == ["_speedups.cpython-312-aarch64-linux-gnu.so"]
    elf = (dest / "markupsafe" / native[0]).read_bytes()[:20]
    assert elf[:4] == b"\x7fELF"
    assert int.from_bytes(elf[18:20], "little") == 183  # e_machine EM_AARCH64
    wheel_meta = (dest / "MarkupSafe-3.0.2.dist-info" / "WHEEL").read_text()
    assert "Tag: cp312-cp312-manylinux_2_17_aarch64" in wheel_meta
    assert not list(dest.rglob("*.pyc"))
    assert (dest / "MarkupSafe-3.0.2.dist-info" / "INSTALLER").read_text() == "airgap-bundler\n"
    # The same wheels again give a byte-identical tree.
    build_site_tree(wheels, target, tmp_path / "again")
    assert snapshot(dest) == snapshot(tmp_path / "again")


# ---- bytecode ---------------------------------------------------------------------------

_SOURCE = "FLAGS = {'alpha', 'beta', 'gamma', 'delta'}\n\ndef f(x):\n    return x in FLAGS\n"


def _compiled_tree(root: Path) -> Path:
    tree = root / "site"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "__init__.py").write_text(_SOURCE)
    return tree


def test_bytecode_is_hash_based_and_identical_across_builds(tmp_path: Path) -> None:
    from bundler.pack.sitetree import compile_bytecode

    host = Target.create(f"{sys.version_info[0]}.{sys.version_info[1]}", ["manylinux_2_17_x86_64"])
    pycs = []
    for name in ("one", "two"):
        tree = _compiled_tree(tmp_path / name)
        assert compile_bytecode(tree, host) is True
        (pyc,) = (tree / "pkg" / "__pycache__").iterdir()
        assert stat.S_IMODE(pyc.stat().st_mode) == 0o644
        pycs.append(pyc.read_bytes())
    assert pycs[0] == pycs[1]  # different build folders, set constants: same bytes
    flags = int.from_bytes(pycs[0][4:8], "little")
    assert flags == 0b11  # PEP 552: hash-based (bit 0) and checked (bit 1)
    assert str(tmp_path).encode() not in pycs[0]


def test_bytecode_is_loaded_instead_of_compiling(tmp_path: Path) -> None:
    from bundler.pack.sitetree import compile_bytecode

    host = Target.create(f"{sys.version_info[0]}.{sys.version_info[1]}", ["manylinux_2_17_x86_64"])
    tree = _compiled_tree(tmp_path)
    compile_bytecode(tree, host)
    # Compiling from source would call source_to_code; make that fail, so the import only
    # succeeds if the shipped hash-based pyc is accepted as it is.
    code = (
        "import importlib._bootstrap_external as ext\n"
        "def refuse(*a, **k): raise SystemExit('compiled from source')\n"
        "ext.SourceLoader.source_to_code = refuse\n"
        "import pkg; print(pkg.f('beta'))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-B", "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tree), "PATH": os.environ["PATH"]},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


def _missing_python() -> str | None:
    """A CPython minor version with no interpreter on this machine, if there is one."""
    from bundler.errors import LocalRunnerError
    from bundler.interpreters import find_python

    for minor in range(14, 30):
        try:
            find_python(f"3.{minor}")
        except LocalRunnerError:
            return f"3.{minor}"
    return None


def test_no_interpreter_of_the_target_version_gives_no_bytecode(tmp_path: Path) -> None:
    from bundler.pack.sitetree import bytecode_interpreter, compile_bytecode

    tree = _compiled_tree(tmp_path)
    missing = _missing_python()
    if missing is None:
        pytest.skip("every CPython 3.14-3.29 is installed here")
    target = Target.create(missing, ["manylinux_2_17_x86_64"])
    assert bytecode_interpreter(target) is None
    assert compile_bytecode(tree, target) is False
    assert not (tree / "pkg" / "__pycache__").exists()
    # Nor for a Python without hash-based pycs, or another implementation.
    assert bytecode_interpreter(Target.create("3.6", ["manylinux_2_17_x86_64"])) is None
    pypy = Target.create("3.10", ["manylinux_2_17_x86_64"], implementation="pp", abi="pypy310_pp73")
    assert bytecode_interpreter(pypy) is None
