"""The CLI's contract: help with examples, exit codes, one-line errors, --json, key files."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from bundler.cli import cli, main

COMMANDS = ["keygen", "pack", "inspect", "verify", "unpack", "audit"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_an_example(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output
    assert f"airgap {command}" in result.output


def test_usage_error_exits_2() -> None:
    assert main(["verify"]) == 2
    assert main(["no-such-command"]) == 2


def test_keygen_writes_private_key_0600_and_prints_key_id(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["keygen", "--out", str(tmp_path / "k"), "--no-passphrase", "--json"]
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    key = Path(info["private_key"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in key.read_bytes()
    assert len(info["key_id"]) == 64
    # A second keygen into the same folder refuses rather than overwriting the key.
    again = CliRunner().invoke(cli, ["keygen", "--out", str(tmp_path / "k"), "--no-passphrase"])
    assert again.exit_code == 1
    assert "already exists" in again.output


def test_keygen_encrypts_with_passphrase_from_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PASS", "correct horse")
    result = CliRunner().invoke(cli, ["keygen", "--out", str(tmp_path), "--passphrase-env", "PASS"])
    assert result.exit_code == 0, result.output
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in (tmp_path / "airgap.key").read_bytes()
    from bundler.errors import KeyFileError
    from bundler.formats.signing import load_private_key

    load_private_key(tmp_path / "airgap.key", b"correct horse")
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_private_key(tmp_path / "airgap.key", b"wrong")
    with pytest.raises(KeyFileError, match="encrypted"):
        load_private_key(tmp_path / "airgap.key", None)


def test_missing_passphrase_variable_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["keygen", "--out", str(tmp_path), "--passphrase-env", "AIRGAP_TEST_UNSET_VARIABLE"]
    )
    assert result.exit_code == 2
    assert "AIRGAP_TEST_UNSET_VARIABLE" in result.output


def test_verify_json_failure_is_machine_readable(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.airgap"
    bogus.write_bytes(b"\0" * 4096)
    keys = tmp_path / "k"
    assert main(["keygen", "--out", str(keys), "--no-passphrase"]) == 0
    result = CliRunner().invoke(
        cli, ["verify", str(bogus), "--trust", str(keys / "airgap.pub"), "--json"]
    )
    assert result.exit_code == 3
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    assert doc["exit_code"] == 3
    assert doc["error"].startswith("bundle rejected: integrity:")
