"""Real PyPI wheels with console scripts, .data/data and .pth files, packed through the CLI,
unpacked, and a launcher run from the unpacked prefix."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from _wheelfactory import make_wheel, sha256_hex

from bundler.pack.lock import parse_lock_text
from bundler.pack.sitetree import LAUNCHER_SHEBANG, build_site_tree
from bundler.pack.wheels import fetch_wheels
from bundler.target import Target

pytestmark = [pytest.mark.network, pytest.mark.slow]

AIRGAP = [sys.executable, "-m", "bundler"]
HOST = f"{sys.version_info[0]}.{sys.version_info[1]}"
LOCK = """\
jupyterlab-widgets==3.0.17 \\
    --hash=sha256:40ac1e9955acf116c4d995d9bfa082d86ad9ec6d91c4f134827cf5e0a5eb75e0
setuptools==75.8.0 \\
    --hash=sha256:e3982f444617239225d675215d51f6ba05f845d4eec313da4418fdbb56fb27e3
tabulate==0.9.0 \\
    --hash=sha256:024ca478df22e9340661486f85298cff5f6dcdba14f3813e8830015b9ed1948f
"""
SKLEARNEX_LOCK = """\
scikit-learn-intelex==2026.2.0 \\
    --hash=sha256:c80198883dc8ecb349ca3200ae3deafbb269c09db3633e752462ef0eb7c7321f
"""
LABEXT = "share/jupyter/labextensions/@jupyter-widgets/jupyterlab-manager/package.json"


def airgap(*args: str | Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*AIRGAP, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=900,
    )
    if proc.returncode != 0:
        raise AssertionError(f"airgap {args} exited {proc.returncode}:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project locking the three real wheels plus one local wheel (via --find-links)
    whose console script clashes with tabulate's."""
    work = tmp_path_factory.mktemp("prefix-net")
    proj = work / "proj"
    (proj / "model").mkdir(parents=True)
    (proj / "model" / "m.txt").write_text("m")
    (proj / "score.py").write_text("def init():\n    pass\n\ndef run(raw_data):\n    return 1\n")
    house = work / "wheelhouse"
    house.mkdir()
    local = make_wheel(
        house,
        "zz-local-tool",
        "1.0",
        {"zz_local_tool.py": b"def main():\n    print('local')\n"},
        extra_dist_info={
            "entry_points.txt": b"[console_scripts]\ntabulate = zz_local_tool:main\n"
            b"zz-local = zz_local_tool:main\n"
        },
    )
    lock = LOCK + f"zz-local-tool==1.0 \\\n    --hash=sha256:{sha256_hex(local)}\n"
    (proj / "requirements.lock").write_text(lock)
    (proj / "bundle.toml").write_text(
        'name = "prefix-demo"\nversion = "1.0.0"\nmodel = "model"\n'
        f'[target]\npython = "{HOST}"\nplatforms = ["manylinux_2_28_x86_64"]\n'
    )
    airgap("keygen", "--out", "keys", "--no-passphrase", cwd=work)
    return work


def test_pack_carries_launchers_data_and_pth_and_the_launcher_runs(project: Path) -> None:
    work = project
    cache = work / "cache"
    proc = airgap(
        "pack",
        "proj",
        "-o",
        "b.airgap",
        "--key",
        "keys/airgap.key",
        "--cache-dir",
        cache,
        "--find-links",
        "wheelhouse",
        "--json",
        cwd=work,
    )
    report = json.loads(proc.stdout)
    assert report["warnings"] == [
        "zz_local_tool-1.0-py3-none-any.whl: prefix/bin/tabulate is left out: tabulate "
        "already installs it with different contents"
    ]
    assert "zz-local-tool==1.0" in report["packages"]
    dest = work / "dest"
    airgap("unpack", "b.airgap", dest, "--trust", "keys/airgap.pub", "-q", cwd=work)

    prefix, site = dest / "prefix", dest / "site-packages"
    bin_files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (prefix / "bin").iterdir()}
    # setuptools 75 has no console scripts of its own.
    assert bin_files == {"tabulate": 0o755, "zz-local": 0o755}
    assert (prefix / "bin" / "tabulate").read_bytes().startswith(LAUNCHER_SHEBANG)
    assert (
        json.loads((prefix / LABEXT).read_text())["name"] == "@jupyter-widgets/jupyterlab-manager"
    )
    assert (site / "distutils-precedence.pth").is_file()
    assert not (site / "share").exists() and not (site / "bin").exists()
    record = site / "tabulate-0.9.0.dist-info" / "RECORD"
    assert "../prefix/bin/tabulate" in {row[0] for row in csv.reader(record.open())}
    widgets = site / "jupyterlab_widgets-3.0.17.dist-info" / "RECORD"
    assert f"../prefix/{LABEXT}" in {row[0] for row in csv.reader(widgets.open())}
    # Bytecode was compiled for the target (the packing Python here).
    assert list((site / "tabulate").glob("__pycache__/*.pyc"))

    env = {
        "PATH": f"{prefix / 'bin'}:{os.environ['PATH']}",
        "AIRGAP_PYTHON": sys.executable,
        "PYTHONPATH": str(site),
    }
    run = subprocess.run(
        [str(prefix / "bin" / "tabulate"), "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "Usage: tabulate [options] [FILE ...]" in run.stdout
    table = subprocess.run(
        ["tabulate", "-1"], input="a b\n1 2\n", capture_output=True, text=True, env=env
    )
    assert table.stdout.split() == ["a", "b", "---", "---", "1", "2"], table.stderr
    local = subprocess.run(["zz-local"], capture_output=True, text=True, env=env)
    assert local.stdout == "local\n", local.stderr


def test_human_output_prints_warning_lines(project: Path) -> None:
    proc = airgap(
        "pack",
        "proj",
        "-o",
        "c.airgap",
        "--key",
        "keys/airgap.key",
        "--cache-dir",
        project / "cache",
        "--find-links",
        "wheelhouse",
        "-q",
        cwd=project,
    )
    assert proc.stderr.splitlines() == [
        "warning: zz_local_tool-1.0-py3-none-any.whl: prefix/bin/tabulate is left out: "
        "tabulate already installs it with different contents"
    ]
    assert proc.stdout.startswith("wrote c.airgap: prefix-demo 1.0.0")


def test_without_find_links_the_local_pin_is_named(project: Path) -> None:
    proc = subprocess.run(
        [*AIRGAP, "pack", "proj", "-o", "d.airgap", "--key", "keys/airgap.key", "-q"],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, "AIRGAP_CACHE_DIR": str(project / "empty-cache")},
        timeout=900,
    )
    assert proc.returncode == 1
    assert "zz-local-tool==1.0" in proc.stderr
    assert "jupyterlab-widgets" not in proc.stderr.split(";")[0]  # only the failing pin
    assert "--find-links wheelhouse" in proc.stderr
    assert "Pins without a wheel" in proc.stderr


def test_scikit_learn_intelex_data_maps_into_site_packages(tmp_path: Path) -> None:
    """Its whole package is .data/data/lib/python3.11/site-packages: purelib in a venv."""
    target = Target.create("3.11", ["manylinux_2_28_x86_64"])
    wheels = fetch_wheels(parse_lock_text(SKLEARNEX_LOCK), target, tmp_path / "cache")
    warnings: list[str] = []
    site, prefix = tmp_path / "site-packages", tmp_path / "prefix"
    build_site_tree(wheels, target, site, prefix=prefix, warn=warnings.append)
    assert warnings == []
    assert not prefix.exists()
    tops = sorted(p.name for p in site.iterdir())
    assert tops == ["daal4py", "onedal", "scikit_learn_intelex-2026.2.0.dist-info", "sklearnex"]
    assert (site / "sklearnex" / "__init__.py").is_file()
    record = (site / "scikit_learn_intelex-2026.2.0.dist-info" / "RECORD").read_text()
    assert "sklearnex/__init__.py," in record
    assert "../" not in record


def test_a_pack_for_another_python_ships_that_pythons_bytecode(
    project: Path, tmp_path: Path
) -> None:
    from bundler.errors import LocalRunnerError
    from bundler.interpreters import find_python
    from bundler.pack import pack

    other = "3.12" if HOST != "3.12" else "3.11"
    try:
        find_python(other)
    except LocalRunnerError:
        pytest.skip(f"no Python {other} here")
    proj = tmp_path / "proj"
    shutil.copytree(project / "proj", proj)
    (proj / "bundle.toml").write_text(
        (proj / "bundle.toml").read_text().replace(f'python = "{HOST}"', f'python = "{other}"')
    )
    warnings: list[str] = []
    manifest = pack(
        proj,
        tmp_path / "x.airgap",
        project / "keys" / "airgap.key",
        cache_dir=project / "cache",
        find_links=[project / "wheelhouse"],
        warn=warnings.append,
    )
    tag = f"cpython-{other.replace('.', '')}"
    paths = {f.path for f in manifest.files}
    assert f"site-packages/tabulate/__pycache__/__init__.{tag}.pyc" in paths
    assert any(p.startswith("runtime/lib/") and p.endswith(f".{tag}.pyc") for p in paths)
    assert not [p for p in paths if p.endswith(".pyc") and tag not in p]
    assert "prefix/bin/tabulate" in paths
    assert len(warnings) == 1 and "prefix/bin/tabulate is left out" in warnings[0]
