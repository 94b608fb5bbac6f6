"""collect_tree: what a project folder may contribute to a payload."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bundler.errors import ProjectError
from bundler.pack.assemble import collect_tree


def test_collects_regular_files_with_normalised_modes_and_no_bytecode(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "mod.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "pkg" / "stale.pyc").write_bytes(b"\0")
    tool = tmp_path / "tool.sh"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o700)
    (tmp_path / "data.bin").write_bytes(b"d")
    (tmp_path / "data.bin").chmod(0o600)
    got = {f.path: f.mode for f in collect_tree(tmp_path, "app")}
    assert got == {"app/pkg/mod.py": 0o644, "app/tool.sh": 0o755, "app/data.bin": 0o644}
    with_pyc = {f.path for f in collect_tree(tmp_path, "app", skip_pycache=False)}
    assert "app/pkg/__pycache__/mod.cpython-311.pyc" in with_pyc


@pytest.mark.parametrize("kind", ["file link", "folder link", "fifo"])
def test_links_and_special_files_are_refused(tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    root = tmp_path / "project"
    root.mkdir()
    (root / "ok.py").write_text("")
    if kind == "file link":
        (root / "leak").symlink_to(outside / "secret")
    elif kind == "folder link":
        (root / "leak").symlink_to(outside)
    else:
        os.mkfifo(root / "leak")
    expected = "not a regular file" if kind == "fifo" else "is a symbolic link"
    with pytest.raises(ProjectError, match=expected):
        collect_tree(root, "app")
