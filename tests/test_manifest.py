"""The manifest model: canonical bytes, strict parsing, names, modes and limits."""

from __future__ import annotations

import json
import re
from typing import Any

import craft
import pytest

from bundler.errors import ManifestError, ResourceLimitError, UnsafeMemberError
from bundler.formats.limits import Limits
from bundler.formats.manifest import (
    FORMAT,
    BaseImage,
    FileEntry,
    Manifest,
    Package,
    PayloadInfo,
    Target,
    check_member_name,
    check_name_set,
    fold_name,
    parse_manifest,
    peek_signer,
)

SIGNER = "ab" * 32
SHA = "cd" * 32


def sample(**changes: Any) -> Manifest:
    files = (
        FileEntry("app/score.py", 10, 0o644, SHA),
        FileEntry("model/mod\u00e8le.bin", 5, 0o644, SHA),
        FileEntry("runtime/start.sh", 7, 0o755, SHA),
    )
    values: dict[str, Any] = {
        "name": "iris",
        "version": "1.2.3",
        "created": 1_700_000_000,
        "expires": 1_800_000_000,
        "signer": SIGNER,
        "target": Target("3.11", "cp", "cp311", ("manylinux_2_17_x86_64", "linux_x86_64")),
        "entry_script": "app/score.py",
        "mode": "dynamic",
        "env": {"B": "2", "A": "1"},
        "packages": (Package("numpy", "1.26.4"), Package("scikit-learn", "1.4.2")),
        "base_image": BaseImage("python:3.11-slim", "sha256:" + "e" * 64, True),
        "payload": PayloadInfo(sha256=SHA, size=99, unpacked_size=22, file_count=3),
        "files": files,
    }
    values.update(changes)
    return Manifest(**values)


def as_json(manifest: Manifest) -> dict[str, Any]:
    return json.loads(manifest.to_bytes())


def encode(obj: dict[str, Any]) -> bytes:
    return craft.dumps(obj)


# ---- canonical bytes ------------------------------------------------------------------------


def test_round_trip() -> None:
    manifest = sample()
    assert parse_manifest(manifest.to_bytes()) == manifest


def test_round_trip_without_optional_parts() -> None:
    manifest = sample(expires=None, base_image=None, packages=(), env={})
    assert parse_manifest(manifest.to_bytes()) == manifest


def test_canonical_bytes_are_sorted_compact_utf8_with_a_newline() -> None:
    data = sample().to_bytes()
    assert data.endswith(b"}\n") and data.count(b"\n") == 1
    assert b": " not in data and b", " not in data
    assert "mod\u00e8le".encode() in data  # not \\u escaped
    obj = json.loads(data)
    assert list(obj) == sorted(obj)
    assert list(obj["env"]) == ["A", "B"]
    assert obj["format"] == FORMAT


def test_canonical_bytes_do_not_depend_on_insertion_order() -> None:
    assert (
        sample(env={"A": "1", "B": "2"}).to_bytes() == sample(env={"B": "2", "A": "1"}).to_bytes()
    )


def test_file_map() -> None:
    assert sample().file_map()["runtime/start.sh"].mode == 0o755


def test_missing_expires_means_none() -> None:
    obj = as_json(sample())
    del obj["expires"]
    assert parse_manifest(encode(obj)).expires is None


# ---- strict JSON ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b'{"a":1,"a":2}', "duplicate key 'a'"),
        (b'{"a":{"b":1,"b":1}}', "duplicate key 'b'"),
        (b'{"a":NaN}', "NaN is not allowed"),
        (b'{"a":Infinity}', "Infinity is not allowed"),
        (b'{"a":-Infinity}', "-Infinity is not allowed"),
        (b'{"a":1}garbage', "not valid JSON"),
        (b"\xef\xbb\xbf{}", "not valid JSON"),  # a BOM is not JSON
        (b'{"a":"\xc3"}', "not valid UTF-8"),
        (b"", "not valid JSON"),
        (b"[1]", "manifest must be a JSON object"),
        (b'"text"', "manifest must be a JSON object"),
        (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
        (b'{"created":' + b"1" * 5000 + b"}", "not valid JSON: a number is too long"),
    ],
)
def test_not_strict_json_is_refused(data: bytes, text: str) -> None:
    with pytest.raises(ManifestError, match=text) as info:
        parse_manifest(data)
    assert info.value.member == "manifest.json"


def test_peek_signer_refuses_a_number_too_long_for_python() -> None:
    # peek_signer reads untrusted bytes (for the message of a failed signature check).
    with pytest.raises(ManifestError, match="a number is too long"):
        peek_signer(b'{"signer":"x","created":' + b"9" * 5000 + b"}")


def test_unknown_format_version_is_refused_with_a_remedy() -> None:
    obj = as_json(sample())
    obj["format"] = "airgap-bundle/2"
    with pytest.raises(ManifestError, match="unknown format version") as info:
        parse_manifest(encode(obj))
    assert "upgrade airgap-bundler" in info.value.diagnostics()


@pytest.mark.parametrize(
    "path",
    [
        "format",
        "name",
        "version",
        "created",
        "signer",
        "target",
        "entry_script",
        "mode",
        "env",
        "base_image",
        "packages",
        "payload",
        "files",
        "target.python",
        "target.abi",
        "target.platforms",
        "payload.sha256",
        "payload.size",
        "base_image.ref",
        "base_image.included",
        "packages.0.name",
        "packages.1.version",
        "files.1.path",
        "files.0.size",
        "files.2.mode",
        "files.0.sha256",
    ],
)
def test_every_missing_field_is_named(path: str) -> None:
    obj = as_json(sample())
    *parents, last = path.split(".")
    node: Any = obj
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    del node[last]
    shown = re.sub(r"\.(\d+)\.", r"[\1].", path)  # files.1.path -> files[1].path
    with pytest.raises(ManifestError, match=re.escape(f"missing field {shown!r}")) as info:
        parse_manifest(encode(obj))
    assert str(info.value).startswith("manifest: manifest.json: missing field")


@pytest.mark.parametrize(
    ("field", "value"),
    [("signer", "a" * 64 + "\n"), ("payload.sha256", "b" * 64 + "\n")],
)
def test_hex_fields_are_matched_whole(field: str, value: str) -> None:
    obj = as_json(sample())
    if "." in field:
        outer, inner = field.split(".")
        obj[outer][inner] = value
    else:
        obj[field] = value
    with pytest.raises(ManifestError, match=re.escape(field)):
        parse_manifest(encode(obj))


def test_bool_is_not_an_integer() -> None:
    obj = as_json(sample())
    obj["files"][0]["size"] = True
    with pytest.raises(ManifestError, match=r"'files\[0\].size' must be a non-negative integer"):
        parse_manifest(encode(obj))


def test_totals_must_agree_with_the_file_list() -> None:
    obj = as_json(sample())
    obj["payload"]["unpacked_size"] += 1
    with pytest.raises(ManifestError, match="disagree with the file list"):
        parse_manifest(encode(obj))


def test_peek_signer_reads_only_the_signer() -> None:
    assert peek_signer(b'{"signer":"x","files":"not checked"}') == "x"
    with pytest.raises(ManifestError, match="missing field 'signer'"):
        peek_signer(b'{"signer":7}')
    with pytest.raises(ManifestError, match="duplicate key"):
        peek_signer(b'{"signer":"a","signer":"b"}')


# ---- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "app/score.py",
        "site-packages/numpy/core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so",
        "model/mod\u00e8le final (2).bin",
        "wheels/requirements.txt",
        "docker/Dockerfile",
        "runtime/lib/gunicorn/__init__.py",
        "app/.hidden",
        "app/..dots",
        "app/" + "d/" * 62 + "f",  # 64 components: the limit
    ],
)
def test_safe_names_pass(name: str) -> None:
    check_member_name(name)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("", "empty member name"),
        ("/etc/passwd", "absolute path"),
        ("C:/Windows/evil", "absolute path"),
        ("c:evil", "absolute path"),
        ("app\\evil", "backslash in name"),
        ("../evil", "'..' in path"),
        ("app/../../evil", "'..' in path"),
        ("app/..", "'..' in path"),
        ("app//x", "empty or '.' path component"),
        ("app/./x", "empty or '.' path component"),
        ("app/x/", "empty or '.' path component"),
        ("app/a\x00b", "control character"),
        ("app/a\tb", "control character"),
        ("app/a\x7fb", "control character"),
        ("evil/x", "top-level folder 'evil'"),
        (".airgap/manifest.json", "top-level folder '.airgap'"),
        ("App/score.py", "top-level folder 'App'"),
        ("app/" + "d/" * 63 + "f", "deeper than 64 levels"),
        ("app/" + "\u00e9" * 126, "name longer than 255 bytes"),  # 256 bytes in UTF-8
    ],
)
def test_unsafe_names_are_refused(name: str, text: str) -> None:
    with pytest.raises(UnsafeMemberError, match=text):
        check_member_name(name)


def test_name_in_message_is_cut_and_control_characters_are_escaped() -> None:
    with pytest.raises(UnsafeMemberError) as info:
        check_member_name("app/\x1b[2J" + "x" * 300)
    assert info.value.member is not None and "\x1b" not in info.value.member
    assert len(info.value.member) < 230


def test_path_depth_limit_is_configurable() -> None:
    check_member_name("app/a/b/c", Limits(max_path_depth=4))
    with pytest.raises(UnsafeMemberError, match="deeper than 3 levels"):
        check_member_name("app/a/b/c", Limits(max_path_depth=3))


@pytest.mark.parametrize(
    ("names", "member", "text"),
    [
        (["app/a", "app/a"], "app/a", "duplicate member"),
        (["app/Readme", "app/README"], "app/README", "collides with 'app/Readme'"),
        (["app/\u00e9", "app/e\u0301"], "app/e\u0301", "when case-folded"),
        (["app/stra\u00dfe", "app/STRASSE"], "app/STRASSE", "when case-folded"),
        (["app/x", "app/x/y"], "app/x/y", "'app/x' is a file, not a folder"),
        (["app/X/y/z", "app/x"], "app/X/y/z", "'app/x' is a file, not a folder"),
    ],
)
def test_colliding_name_sets_are_refused(names: list[str], member: str, text: str) -> None:
    with pytest.raises(UnsafeMemberError, match=text) as info:
        check_name_set(names)
    assert info.value.member == member


def test_similar_but_distinct_names_are_fine() -> None:
    check_name_set(["app/a", "app/a.txt", "app/ab", "app/b/a", "app/a-b/c"])


def test_fold_name_normalises_and_casefolds() -> None:
    assert fold_name("App/E\u0301") == fold_name("app/\u00c9".lower()) == "app/\u00e9"


# ---- modes and limits in the file list ----------------------------------------------------


@pytest.mark.parametrize("mode", [0o4755, 0o2755, 0o1755, 0o777, 0o600, 0o100644, 0])
def test_only_0644_and_0755_are_allowed(mode: int) -> None:
    obj = as_json(sample())
    obj["files"][0]["mode"] = mode
    with pytest.raises(UnsafeMemberError, match=f"mode {mode:o} is not one of 644, 755"):
        parse_manifest(encode(obj))


def test_manifest_size_limit() -> None:
    data = sample().to_bytes()
    parse_manifest(data, Limits(max_manifest_bytes=len(data)))
    with pytest.raises(ResourceLimitError, match="over the limit") as info:
        parse_manifest(data, Limits(max_manifest_bytes=len(data) - 1))
    assert info.value.member == "manifest.json"
    with pytest.raises(ResourceLimitError):
        peek_signer(data, Limits(max_manifest_bytes=len(data) - 1))


def test_member_count_limit() -> None:
    data = sample().to_bytes()
    parse_manifest(data, Limits(max_members=3))
    with pytest.raises(ResourceLimitError, match="3 files listed, over the limit of 2"):
        parse_manifest(data, Limits(max_members=2))


def test_declared_total_limit_has_a_remedy() -> None:
    data = sample().to_bytes()
    parse_manifest(data, Limits(max_unpacked_bytes=22))
    with pytest.raises(ResourceLimitError, match="declares 22 unpacked bytes") as info:
        parse_manifest(data, Limits(max_unpacked_bytes=21))
    # The remedy names no option: no command has one that raises this limit.
    assert info.value.diagnostics().endswith(
        "; the limit is fixed (docs/format.md, Limits); ask the publisher to split the model "
        "across several bundles"
    )


def test_entry_script_must_be_a_payload_file() -> None:
    with pytest.raises(ManifestError, match=r"entry_script 'app/other\.py' is not a payload file"):
        parse_manifest(sample(entry_script="app/other.py").to_bytes())
