"""The key file as `airgap serve`/`run` hand it over (bundler/deploy/authkeys.py), no engine."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from bundler.deploy.authkeys import CONTAINER_KEY_PATH, check_container_key_file, check_key_file
from bundler.deploy.docker import CONTAINER_METRICS_PORT, RunOptions, _auth_and_metrics
from bundler.deploy.engine import BindMount, PortBinding
from bundler.errors import EXIT_USAGE, AuthKeyFileError


def _keys(tmp_path: Path, mode: int = 0o600) -> tuple[Path, str]:
    key = secrets.token_urlsafe(32)
    path = tmp_path / "keys"
    path.write_text(f"# endpoint keys\n{key}\n")
    path.chmod(mode)
    return path, key


def test_a_good_key_file_is_returned_as_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = _keys(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert check_key_file(Path("keys")) == path


def test_a_key_file_others_can_read_is_a_usage_error_without_the_key(tmp_path: Path) -> None:
    path, key = _keys(tmp_path, 0o604)
    with pytest.raises(AuthKeyFileError) as info:
        check_key_file(path)
    assert info.value.exit_code == EXIT_USAGE
    text = info.value.diagnostics()
    assert "mode 0604" in text and f"chmod 600 {path}" in text
    assert "one key per line, at most two" in text
    assert key not in text


def test_the_container_user_must_own_the_key_file(tmp_path: Path) -> None:
    path, _ = _keys(tmp_path)
    uid = os.getuid()
    assert check_container_key_file(path, f"{uid}:{os.getgid()}") == path
    with pytest.raises(AuthKeyFileError) as info:
        check_container_key_file(path, f"{uid + 1}:{uid + 1}")
    assert f"chown {uid + 1}:{uid + 1} {path}" in info.value.diagnostics()


def test_run_options_become_a_read_only_mount_a_path_and_a_loopback_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, key = _keys(tmp_path)
    monkeypatch.setattr("bundler.deploy.docker.IMAGE_USER", f"{os.getuid()}:{os.getgid()}")
    env, mounts, ports = _auth_and_metrics(
        RunOptions(auth_key_file=path, metrics_port=9999, bind="0.0.0.0")
    )
    assert env == {
        "AIRGAP_AUTH_KEY_FILE": CONTAINER_KEY_PATH,
        "AIRGAP_METRICS_PORT": str(CONTAINER_METRICS_PORT),
    }
    assert mounts == (BindMount(str(path), CONTAINER_KEY_PATH, read_only=True),)
    assert ports == (PortBinding(CONTAINER_METRICS_PORT, "127.0.0.1", 9999),)
    assert key not in repr((env, mounts, ports))
    assert _auth_and_metrics(RunOptions()) == ({}, (), ())
