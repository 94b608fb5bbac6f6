"""End to end through the real CLI: pack the iris example with real wheels, verify, and
unpack inside a network namespace with no network; then load the model from the tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_netns

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "iris-sklearn"
AIRGAP = [sys.executable, "-m", "bundler"]

pytestmark = [pytest.mark.network, pytest.mark.slow]


def airgap(
    *args: str | Path,
    cwd: Path,
    check: bool = True,
    netns: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    cmd = [*AIRGAP, *map(str, args)]
    if netns:
        # No network at all: a fresh namespace whose only interface is loopback.
        cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=900
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("e2e")
    airgap("keygen", "--out", "keys", "--no-passphrase", cwd=work)
    airgap(
        "pack",
        EXAMPLE,
        "-o",
        "iris.airgap",
        "--key",
        "keys/airgap.key",
        "-q",
        cwd=work,
        env={"SOURCE_DATE_EPOCH": "1700000000"},
    )
    return work


def test_pack_inspect_reports_the_example(packed: Path) -> None:
    info = json.loads(airgap("inspect", "iris.airgap", "--json", cwd=packed).stdout)
    assert info["name"] == "iris-sklearn"
    assert info["version"] == "1.0.0"
    assert info["created"] == 1700000000
    assert info["ok"] is True
    assert info["verified"] is False
    names = {p.split("==")[0] for p in info["packages"]}
    assert {"scikit-learn", "numpy", "scipy", "joblib"} <= names
    assert info["target"]["python"] == "3.11"
    assert info["file_count"] > 1000


def test_second_pack_is_byte_identical_and_needs_no_network(packed: Path) -> None:
    require_netns()
    # The wheel cache is warm from the first pack: this pack runs with no network at all.
    airgap(
        "pack",
        EXAMPLE,
        "-o",
        "again.airgap",
        "--key",
        "keys/airgap.key",
        "-q",
        "--threads",
        "1",
        cwd=packed,
        netns=True,
        env={"SOURCE_DATE_EPOCH": "1700000000"},
    )
    assert (packed / "again.airgap").read_bytes() == (packed / "iris.airgap").read_bytes()


def test_verify_then_unpack_offline_and_load_model(packed: Path) -> None:
    require_netns()
    out = airgap(
        "verify", "iris.airgap", "--trust", "keys/airgap.pub", "--json", cwd=packed, netns=True
    )
    assert json.loads(out.stdout)["verified"] is True
    airgap(
        "unpack",
        "iris.airgap",
        "deploy",
        "--trust",
        "keys/airgap.pub",
        "-q",
        cwd=packed,
        netns=True,
    )
    dest = packed / "deploy"
    assert (dest / "app" / "score.py").is_file()
    assert not list(packed.glob(".deploy.airgap-stage-*"))
    # Load and use the model with only the unpacked tree on sys.path (-S: no site-packages).
    code = (
        "import sys, os, json\n"
        f"sys.path[:0] = [{str(dest / 'site-packages')!r}, {str(dest / 'app')!r}]\n"
        f"os.environ['AZUREML_MODEL_DIR'] = {str(dest / 'model')!r}\n"
        "import score, sklearn\n"
        "assert sklearn.__file__.startswith(sys.path[0]), sklearn.__file__\n"
        "score.init()\n"
        "rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]\n"
        "print(json.dumps(score.run(json.dumps({'data': rows}))))\n"
    )
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"predictions": ["setosa", "virginica"]}


def test_wrong_key_is_rejected_with_exit_3(packed: Path) -> None:
    airgap("keygen", "--out", "other", "--no-passphrase", cwd=packed)
    proc = airgap(
        "unpack", "iris.airgap", "elsewhere", "--trust", "other/airgap.pub", cwd=packed, check=False
    )
    assert proc.returncode == 3
    assert proc.stderr.startswith("bundle rejected: signature: manifest.json.sig: signed by key")
    assert "Traceback" not in proc.stderr
    assert not (packed / "elsewhere").exists()
