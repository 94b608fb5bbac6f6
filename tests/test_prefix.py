"""The install prefix beside the tree: launchers, .data/scripts, headers, data, warnings."""

from __future__ import annotations

import base64
import csv
import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from _wheelfactory import make_wheel

from bundler.errors import SiteTreeError
from bundler.pack.sitetree import LAUNCHER_SHEBANG, build_site_tree
from bundler.target import Target

X86_311 = Target.create("3.11", ["manylinux_2_17_x86_64"])
HOST = Target.create(f"{sys.version_info[0]}.{sys.version_info[1]}", ["manylinux_2_17_x86_64"])

ENTRY_POINTS = b"""\
[console_scripts]
demo-cli = demo_pkg.cli:main
demo-nested = demo_pkg.cli:Tool.run

[gui_scripts]
demo-gui = demo_pkg.cli:main

[other.group]
ignored = demo_pkg:nothing
"""

CLI = b"""\
import sys

def main():
    print("demo", sys.argv[0].rsplit("/", 1)[-1], *sys.argv[1:])
    return 3

class Tool:
    @staticmethod
    def run():
        print("nested")
        return 0
"""


def _files(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its mode bits."""
    return {
        p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _demo(directory: Path, **overrides: object) -> Path:
    directory.mkdir(exist_ok=True)
    options: dict[str, object] = {
        "data": {
            "scripts/demo-run": b"#!python -u\nimport demo_pkg\nprint('script', demo_pkg.V)\n",
            "scripts/demo-sh": b"#!/bin/sh\necho shell\n",
            "headers/demo.h": b"int demo;\n",
            "data/share/jupyter/labextensions/demo/package.json": b"{}\n",
            "data/etc/demo.conf": b"x=1\n",
            "data/lib/python3.11/site-packages/demo_data_pkg/__init__.py": b"D = 1\n",
            "data/lib64/python3.11/site-packages/demo_data64.py": b"D64 = 1\n",
            "data/lib/python3.9/site-packages/old.py": b"OLD = 1\n",
        },
        "extra_dist_info": {"entry_points.txt": ENTRY_POINTS},
    }
    options.update(overrides)
    return make_wheel(
        directory,
        "demo-pkg",
        "1.0",
        {
            "demo_pkg/__init__.py": b"V = 7\n",
            "demo_pkg/cli.py": CLI,
            "demo-nspkg.pth": b"import sys; sys.demo_pth = True\n",
        },
        **options,  # type: ignore[arg-type]
    )


def _build(tmp_path: Path, wheels: list[Path], target: Target = X86_311) -> list[str]:
    warnings: list[str] = []
    build_site_tree(
        wheels, target, tmp_path / "site-packages", prefix=tmp_path / "prefix", warn=warnings.append
    )
    return warnings


def test_every_scheme_lands_where_a_venv_puts_it(tmp_path: Path) -> None:
    warnings = _build(tmp_path, [_demo(tmp_path / "w")])
    assert _files(tmp_path / "prefix") == {
        "bin/demo-cli": 0o755,
        "bin/demo-gui": 0o755,
        "bin/demo-nested": 0o755,
        "bin/demo-run": 0o755,
        "bin/demo-sh": 0o755,
        "etc/demo.conf": 0o644,
        "include/site/python3.11/demo_pkg/demo.h": 0o644,
        "lib/python3.9/site-packages/old.py": 0o644,
        "share/jupyter/labextensions/demo/package.json": 0o644,
    }
    site = _files(tmp_path / "site-packages")
    # .data/data/lib{,64}/python3.11/site-packages is purelib in a venv: into the tree.
    assert "demo_data_pkg/__init__.py" in site
    assert "demo_data64.py" in site
    assert "demo-nspkg.pth" in site  # kept; the serving process processes it
    assert not [p for p in site if p.startswith(("bin/", "share/", "lib/", "etc/"))]
    # Only the data files for another Python are worth a warning, naming the wheel.
    assert warnings == [
        "demo_pkg-1.0-py3-none-any.whl: its data files under lib/python3.9/site-packages are "
        "for another Python than the target's 3.11; they are carried in prefix/ but are not "
        "importable"
    ]


def test_record_lists_prefix_files_relative_to_the_tree(tmp_path: Path) -> None:
    _build(tmp_path, [_demo(tmp_path / "w")])
    record = tmp_path / "site-packages" / "demo_pkg-1.0.dist-info" / "RECORD"
    rows = {row[0]: row for row in csv.reader(record.read_text().splitlines())}
    prefix_rows = {p for p in rows if p.startswith("../")}
    assert prefix_rows == {f"../prefix/{p}" for p in _files(tmp_path / "prefix")}
    # Every row resolves from the tree to the real file with its real hash and size.
    for rel, digest, size in rows.values():
        if rel.endswith("RECORD"):
            continue
        data = (tmp_path / "site-packages" / rel).read_bytes()
        want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert (digest, int(size)) == (f"sha256={want}", len(data)), rel
    assert list(rows) == sorted(rows, key=lambda r: (r.endswith("/RECORD"), r))


def test_launchers_are_relocatable_and_run(tmp_path: Path) -> None:
    _build(tmp_path, [_demo(tmp_path / "w")], HOST)
    # Move the pair elsewhere: nothing in them names the folder they were built in.
    moved = tmp_path / "elsewhere" / "deep"
    moved.mkdir(parents=True)
    (tmp_path / "site-packages").rename(moved / "site-packages")
    (tmp_path / "prefix").rename(moved / "prefix")
    launcher = (moved / "prefix" / "bin" / "demo-cli").read_bytes()
    assert launcher.startswith(LAUNCHER_SHEBANG)
    assert str(tmp_path).encode() not in launcher
    assert b"from demo_pkg.cli import main\n" in launcher
    env = {
        "PATH": os.environ["PATH"],
        "AIRGAP_PYTHON": sys.executable,
        "PYTHONPATH": str(moved / "site-packages"),
    }
    bin_dir = moved / "prefix" / "bin"

    def run(name: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(bin_dir / name), *args],
            capture_output=True,
            text=True,
            env={**env, **extra},
            timeout=60,
        )

    proc = run("demo-cli", "a", "b c")
    assert (proc.returncode, proc.stdout) == (3, "demo demo-cli a b c\n"), proc.stderr
    assert run("demo-nested").stdout == "nested\n"
    assert run("demo-gui").returncode == 3  # gui_scripts: the same launcher on POSIX
    # A #!python script gets the same trampoline (its options dropped, as pip drops them).
    script = (bin_dir / "demo-run").read_bytes()
    assert script == LAUNCHER_SHEBANG + b"import demo_pkg\nprint('script', demo_pkg.V)\n"
    assert run("demo-run").stdout == "script 7\n"
    # Other scripts are copied as they are.
    assert (bin_dir / "demo-sh").read_bytes() == b"#!/bin/sh\necho shell\n"
    assert run("demo-sh").stdout == "shell\n"
    # Without AIRGAP_PYTHON the launcher runs python3 from PATH.
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "python3").write_text(f'#!/bin/sh\necho via-path\nexec {sys.executable} "$@"\n')
    (fake / "python3").chmod(0o755)
    proc = subprocess.run(
        [str(bin_dir / "demo-cli")],
        capture_output=True,
        text=True,
        env={"PATH": f"{fake}:{os.environ['PATH']}", "PYTHONPATH": env["PYTHONPATH"]},
        timeout=60,
    )
    assert proc.stdout.splitlines() == ["via-path", "demo demo-cli"], proc.stderr


def test_prefix_is_deterministic_and_absent_without_files(tmp_path: Path) -> None:
    wheel = _demo(tmp_path / "w")
    old = os.umask(0o077)
    try:
        build_site_tree([wheel], X86_311, tmp_path / "a" / "site", prefix=tmp_path / "a" / "pre")
    finally:
        os.umask(old)
    build_site_tree([wheel], X86_311, tmp_path / "b" / "site", prefix=tmp_path / "b" / "pre")

    def snap(root: Path) -> dict[str, tuple[int, int, bytes]]:
        return {
            p.relative_to(root).as_posix(): (
                stat.S_IMODE(p.stat().st_mode),
                int(p.stat().st_mtime),
                p.read_bytes() if p.is_file() else b"",
            )
            for p in sorted(root.rglob("*"))
        }

    assert snap(tmp_path / "a") == snap(tmp_path / "b")
    assert {m for _, m, _ in snap(tmp_path / "a").values()} == {315_532_800}
    plain = make_wheel(tmp_path / "w", "plain", "1.0", {"plain.py": b""})
    build_site_tree([plain], X86_311, tmp_path / "c" / "site", prefix=tmp_path / "c" / "pre")
    assert not (tmp_path / "c" / "pre").exists()
    # Without a prefix those files are left out, and RECORD does not list them.
    build_site_tree([wheel], X86_311, tmp_path / "d" / "site")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["site"]
    record = (tmp_path / "d" / "site" / "demo_pkg-1.0.dist-info" / "RECORD").read_text()
    assert "../prefix" not in record


def test_prefix_clashes_keep_the_first_wheel_and_warn(tmp_path: Path) -> None:
    first = make_wheel(
        tmp_path,
        "aaa",
        "1.0",
        {"aaa.py": b"def main(): pass\n"},
        data={"data/share/x.txt": b"from aaa\n", "data/share/same.txt": b"same\n"},
        extra_dist_info={"entry_points.txt": b"[console_scripts]\ntool = aaa:main\n"},
    )
    second = make_wheel(
        tmp_path,
        "bbb",
        "1.0",
        {"bbb.py": b"def main(): pass\n"},
        data={
            "data/share/x.txt": b"from bbb\n",
            "data/share/same.txt": b"same\n",
            "data/share/X.TXT": b"case\n",
        },
        extra_dist_info={"entry_points.txt": b"[console_scripts]\ntool = bbb:main\n"},
    )
    warnings = _build(tmp_path, [second, first])  # order of the inputs does not matter
    prefix = tmp_path / "prefix"
    assert (prefix / "share" / "x.txt").read_bytes() == b"from aaa\n"
    assert b"from aaa import main" in (prefix / "bin" / "tool").read_bytes()
    assert not (prefix / "share" / "X.TXT").exists()
    assert warnings == [
        "bbb-1.0-py3-none-any.whl: prefix/share/X.TXT is left out: prefix/share/x.txt of aaa "
        "differs only in letter case",
        "bbb-1.0-py3-none-any.whl: prefix/share/x.txt is left out: aaa already installs it "
        "with different contents",
        "bbb-1.0-py3-none-any.whl: prefix/bin/tool is left out: aaa already installs it with "
        "different contents",
    ]
    record = (tmp_path / "site-packages" / "bbb-1.0.dist-info" / "RECORD").read_text()
    assert "../prefix/share/same.txt" in record  # identical bytes are shared
    assert "../prefix/share/x.txt" not in record
    assert "../prefix/bin/tool" not in record


def test_unusable_entry_points_warn_and_an_entry_point_replaces_its_script(
    tmp_path: Path,
) -> None:
    wheel = make_wheel(
        tmp_path,
        "odd",
        "1.0",
        {"odd.py": b"def main(): pass\n"},
        data={"scripts/odd": b"#!/bin/sh\necho old\n"},
        extra_dist_info={
            "entry_points.txt": b"[console_scripts]\nodd = odd:main\nno-attr = odd\n"
            b"../escape = odd:main\n.hidden = odd:main\n"
        },
    )
    warnings = _build(tmp_path, [wheel])
    assert sorted(_files(tmp_path / "prefix")) == ["bin/odd"]
    assert b"from odd import main" in (tmp_path / "prefix" / "bin" / "odd").read_bytes()
    name = "odd-1.0-py3-none-any.whl"
    assert warnings == [
        f"{name}: console_scripts entry no-attr = 'odd' is not module:function; "
        "no launcher was written for it",
        f"{name}: console_scripts entry '../escape' is not a safe file name; no launcher was "
        "written for it",
        f"{name}: console_scripts entry '.hidden' is not a safe file name; no launcher was "
        "written for it",
        f"{name}: the entry point odd replaces its .data/scripts/odd",
    ]


@pytest.mark.parametrize(
    "member",
    [
        "demo_pkg-1.0.data/scripts/../../../evil",
        "demo_pkg-1.0.data/data/../escape",
        "demo_pkg-1.0.data/headers//abs.h",
        "demo_pkg-1.0.data/data/lib/python3.11/site-packages/../../../../x",
    ],
)
def test_unsafe_prefix_paths_are_refused_before_any_write(tmp_path: Path, member: str) -> None:
    wheel = make_wheel(tmp_path, "demo-pkg", "1.0", {"ok.py": b"", member: b"x"})
    outer = tmp_path / "outer"
    with pytest.raises(SiteTreeError, match="unsafe path"):
        build_site_tree([wheel], X86_311, outer / "site", prefix=outer / "prefix")
    assert not outer.exists() or not any(outer.rglob("*"))


def test_prefix_must_be_empty(tmp_path: Path) -> None:
    (tmp_path / "prefix").mkdir()
    (tmp_path / "prefix" / "stale").write_text("x")
    with pytest.raises(SiteTreeError, match="not an empty folder"):
        _build(tmp_path, [_demo(tmp_path / "w")])
    assert not (tmp_path / "site-packages").exists()


def test_a_tampered_script_is_refused_even_when_rewritten(tmp_path: Path) -> None:
    wheel = make_wheel(
        tmp_path,
        "demo-pkg",
        "1.0",
        {"ok.py": b""},
        data={"scripts/tool": b"#!python\nprint(1)\n"},
        record_overrides={"demo_pkg-1.0.data/scripts/tool": f"sha256={'A' * 43},18"},
    )
    with pytest.raises(SiteTreeError, match="does not match the hash in its RECORD"):
        _build(tmp_path, [wheel])
    assert not (tmp_path / "prefix").exists()
    assert not (tmp_path / "site-packages").exists()
