"""The tree cache's pure parts: sizes, keys, and what an entry's record must hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bundler.errors import UsageError
from bundler.pack import treecache
from bundler.pack.treecache import TreeSpec, parse_size, tree_key
from bundler.pack.wheels import wheel_digest
from bundler.target import Target

TARGET = Target.create("3.11", ["manylinux_2_28_x86_64"])


@pytest.mark.parametrize(
    ("text", "size"),
    [("123", 123), ("1K", 1024), ("500M", 500 * 2**20), ("2G", 2 * 2**30), ("1.5GiB", 3 * 2**29)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1G", "1X", "G"])
def test_bad_sizes_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="is not a size"):
        parse_size(text)


def test_default_bound_and_its_environment_variable() -> None:
    assert treecache.default_max_size({}) == 4 * 2**30
    assert treecache.default_max_size({"AIRGAP_TREE_CACHE_MAX": "1G"}) == 2**30
    with pytest.raises(UsageError):
        treecache.default_max_size({"AIRGAP_TREE_CACHE_MAX": "big"})


def _spec(wheels: list[Path], prefix: bool = True) -> TreeSpec:
    roots = (("site", "site-packages"), ("prefix", "prefix")) if prefix else (("site", "x"),)
    return TreeSpec("site-packages", tuple(wheels), roots)


def test_the_key_covers_wheel_bytes_names_target_roots_and_bytecode(tmp_path: Path) -> None:
    a = tmp_path / "a-1.0-py3-none-any.whl"
    a.write_bytes(b"one")
    b = tmp_path / "b" / "a-1.0-py3-none-any.whl"
    b.parent.mkdir()
    b.write_bytes(b"two")
    base = tree_key(_spec([a]), TARGET, None)
    assert base == tree_key(_spec([a]), TARGET, None)
    other_target = Target.create("3.11", ["manylinux_2_31_x86_64"])
    keys = {
        base,
        tree_key(_spec([b]), TARGET, None),  # same name, other bytes
        tree_key(_spec([a], prefix=False), TARGET, None),
        tree_key(_spec([a]), other_target, None),
        tree_key(_spec([a]), TARGET, Path(treecache.sys.executable)),
    }
    assert len(keys) == 5
    # A wheel in the wheel cache is named by its (already checked) digest.
    stored = tmp_path / "sha256" / ("0" * 64) / a.name
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"anything")
    assert wheel_digest(stored) == "0" * 64
    assert wheel_digest(a) == treecache.hashlib.sha256(b"one").hexdigest()


def _record(**changes: object) -> bytes:
    doc: dict[str, object] = {
        "format": treecache.CACHE_FORMAT,
        "key": "k",
        "label": "site-packages",
        "installed": [["tabulate", "0.9.0"]],
        "warnings": ["tabulate: a warning"],
        "files": [["site/tabulate/__init__.py", 10, 0o644, "ab" * 32]],
        "size": 10,
        "groups": {"g": ["site/tabulate/__init__.py"]},
    }
    doc.update(changes)
    return json.dumps(doc).encode()


def test_a_record_is_parsed_strictly() -> None:
    record = treecache._parse_record(_record(), "k")
    assert record is not None and record.size == 10
    assert treecache._parse_record(_record(), "other key") is None
    assert treecache._parse_record(b"{", "k") is None
    assert treecache._parse_record(_record(format="airgap-tree-cache/0"), "k") is None
    assert treecache._parse_record(_record(files=[["p", "10", 0o644, "x"]]), "k") is None
    # A group naming a file the record does not hold, and a warning that would put
    # control characters on a terminal, make the record unusable (the entry is rebuilt).
    assert treecache._parse_record(_record(groups={"g": ["site/elsewhere.pyc"]}), "k") is None
    assert treecache._parse_record(_record(warnings=["\x1b[2J cleared"]), "k") is None
