"""Targets and their wheel tags; fetching locked wheels through the cache."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from _wheelfactory import make_wheel, pin, sha256_hex
from conftest import require_netns
from packaging.tags import Tag

from bundler.errors import DownloadError
from bundler.pack.lock import LockedRequirement, parse_lock_text
from bundler.pack.wheels import (
    LocalWheelSource,
    PipDownloader,
    Saved,
    default_cache_dir,
    fetch_wheels,
)
from bundler.target import Target

X86_311 = Target.create("3.11", ["manylinux_2_17_x86_64"])
ARM_312 = Target.create("3.12", ["manylinux_2_17_aarch64"])


# --- Target ----------------------------------------------------------------------------


def test_host_target_is_this_interpreter_on_a_portable_platform() -> None:
    host = Target.host()
    assert host.python == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert host.implementation == "cp"
    assert host.abi == f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert len(host.platforms) == 1
    if sys.platform == "linux":
        assert host.platforms[0].startswith(("manylinux_", "musllinux_"))
    assert Tag(host.abi, host.abi, host.expanded_platforms()[-1]) in host.supported_tags()


def test_manylinux_expands_to_every_older_tag_and_legacy_alias() -> None:
    plats = Target.create("3.11", ["manylinux_2_17_x86_64"]).expanded_platforms()
    assert plats[:2] == ("manylinux_2_17_x86_64", "manylinux2014_x86_64")
    assert "manylinux2010_x86_64" in plats
    assert plats[-2:] == ("manylinux_2_5_x86_64", "manylinux1_x86_64")
    assert len(plats) == 13 + 3
    # Other architectures start at glibc 2.17 and only had manylinux2014.
    assert ARM_312.expanded_platforms() == ("manylinux_2_17_aarch64", "manylinux2014_aarch64")
    # A legacy alias as input means the same as its PEP 600 name.
    legacy = Target.create("3.11", ["manylinux2014_x86_64"]).expanded_platforms()
    assert legacy == plats
    newer = Target.create("3.11", ["manylinux_2_28_aarch64"]).expanded_platforms()
    assert newer[0] == "manylinux_2_28_aarch64" and newer[-1] == "manylinux2014_aarch64"


def test_musllinux_and_macos_and_windows_expansion() -> None:
    musl = Target.create("3.11", ["musllinux_1_2_x86_64"]).expanded_platforms()
    assert musl == ("musllinux_1_2_x86_64", "musllinux_1_1_x86_64", "musllinux_1_0_x86_64")
    mac = Target.create("3.11", ["macosx_11_0_arm64"]).expanded_platforms()
    assert mac[0] == "macosx_11_0_arm64" and "macosx_11_0_universal2" in mac
    assert Target.create("3.11", ["win_amd64"]).expanded_platforms() == ("win_amd64",)


def test_supported_tags_order_specific_abi3_none_then_pure() -> None:
    tags = ARM_312.supported_tags()
    rank = {t: i for i, t in enumerate(tags)}
    specific = Tag("cp312", "cp312", "manylinux_2_17_aarch64")
    abi3 = Tag("cp312", "abi3", "manylinux2014_aarch64")
    older_abi3 = Tag("cp38", "abi3", "manylinux_2_17_aarch64")
    pure = Tag("py3", "none", "any")
    assert rank[specific] < rank[abi3] < rank[older_abi3] < rank[pure]
    assert Tag("cp311", "cp311", "manylinux_2_17_aarch64") not in rank
    assert Tag("cp312", "cp312", "manylinux_2_17_x86_64") not in rank
    assert Tag("cp312", "cp312", "manylinux_2_28_aarch64") not in rank
    assert ARM_312.accepts(frozenset({pure}))
    assert not ARM_312.accepts(frozenset({Tag("py2", "none", "any")}))


def test_json_round_trip_and_strictness() -> None:
    data = ARM_312.to_json()
    assert data == {
        "python": "3.12",
        "implementation": "cp",
        "abi": "cp312",
        "platforms": ["manylinux_2_17_aarch64"],
    }
    assert Target.from_json(json.loads(json.dumps(data))) == ARM_312
    with pytest.raises(ValueError, match="unknown"):
        Target.from_json({**data, "extra": 1})
    with pytest.raises(ValueError, match="missing"):
        Target.from_json({k: v for k, v in data.items() if k != "abi"})
    with pytest.raises(ValueError, match="list of strings"):
        Target.from_json({**data, "platforms": "manylinux_2_17_aarch64"})
    with pytest.raises(ValueError, match="not a version"):
        Target.from_json({**data, "python": "three"})


def test_invalid_targets_are_refused_with_every_reason() -> None:
    with pytest.raises(ValueError) as info:
        Target("3", "CP", "cp 3", ("Bad Tag",))
    message = str(info.value)
    assert "python '3'" in message and "implementation 'CP'" in message
    assert "abi 'cp 3'" in message and "malformed" in message
    with pytest.raises(ValueError, match="at least one"):
        Target.create("3.11", [])
    with pytest.raises(ValueError, match="mix operating systems"):
        Target.create("3.11", ["manylinux_2_17_x86_64", "macosx_11_0_arm64"])
    with pytest.raises(ValueError, match="'any' is not a machine"):
        Target.create("3.11", ["any"])


def test_marker_environment_describes_the_target() -> None:
    env = ARM_312.marker_environment()
    assert env["python_version"] == "3.12"
    assert env["platform_machine"] == "aarch64"
    assert env["sys_platform"] == "linux"
    assert env["platform_system"] == "Linux"
    assert env["implementation_name"] == "cpython"
    win = Target.create("3.11", ["win_amd64"]).marker_environment()
    assert (win["sys_platform"], win["os_name"], win["platform_machine"]) == (
        "win32",
        "nt",
        "AMD64",
    )


def test_pip_download_args_pass_the_expanded_platforms() -> None:
    args = ARM_312.pip_download_args()
    assert args[:7] == [
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        "--abi",
        "cp312",
    ]
    assert args[7:] == [
        "--platform",
        "manylinux_2_17_aarch64",
        "--platform",
        "manylinux2014_aarch64",
    ]


# --- fetching --------------------------------------------------------------------------


class CountingSource:
    """A LocalWheelSource that records which pins it was asked for."""

    def __init__(self, directory: Path) -> None:
        self.inner = LocalWheelSource(directory)
        self.asked: list[list[str]] = []

    def download(
        self, reqs: Sequence[LockedRequirement], target: Target, dest: Path, saved: Saved
    ) -> None:
        self.asked.append([r.pin() for r in reqs])
        self.inner.download(reqs, target, dest, saved)


class NoNetwork:
    """A source that fails the test if the cache did not answer by itself."""

    def download(
        self, reqs: Sequence[LockedRequirement], target: Target, dest: Path, saved: Saved
    ) -> None:
        raise AssertionError(f"the cache should have answered; asked for {reqs}")


class RecordingProgress:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def start(self, label: str, total: int | None = None, unit: str = "B") -> None:
        self.events.append(("start", total))

    def advance(self, amount: int = 1) -> None:
        self.events.append(("advance", amount))

    def finish(self) -> None:
        self.events.append(("finish", None))


@pytest.fixture
def house(tmp_path: Path) -> Path:
    """A wheelhouse: a pure wheel, a package with an x86_64 and a pure wheel, an arm wheel."""
    directory = tmp_path / "house"
    directory.mkdir()
    make_wheel(directory, "alpha", "1.0", {"alpha.py": b"A = 1\n"})
    make_wheel(directory, "beta", "2.0", {"beta.py": b"B = 'pure'\n"})
    make_wheel(
        directory,
        "beta",
        "2.0",
        {"beta.py": b"B = 'x86'\n"},
        tag="cp311-cp311-manylinux_2_17_x86_64",
    )
    make_wheel(
        directory,
        "gamma",
        "3.0",
        {"gamma.py": b"G = 1\n"},
        tag="cp312-cp312-manylinux_2_17_aarch64",
    )
    return directory


def _lock(house: Path, *names: str) -> tuple[LockedRequirement, ...]:
    """Pins allowing every file of each named package in the wheelhouse (as pip-compile does)."""
    reqs = []
    for name in names:
        files = sorted(house.glob(f"{name}-*.whl"))
        base = pin(files[0])
        reqs.append(dataclasses.replace(base, hashes=frozenset(sha256_hex(f) for f in files)))
    return tuple(reqs)


def test_fetch_picks_the_best_wheel_per_target_and_caches_it(tmp_path: Path, house: Path) -> None:
    reqs = _lock(house, "alpha", "beta")
    cache = tmp_path / "cache"
    source = CountingSource(house)
    progress = RecordingProgress()
    paths = fetch_wheels(reqs, X86_311, cache, progress, source=source)
    assert [p.name for p in paths] == [
        "alpha-1.0-py3-none-any.whl",
        "beta-2.0-cp311-cp311-manylinux_2_17_x86_64.whl",
    ]
    assert all(p.is_relative_to(cache) for p in paths)
    assert [p.parent.name for p in paths] == [sha256_hex(p) for p in paths]
    assert source.asked == [["alpha==1.0", "beta==2.0"]]
    assert progress.events == [("start", 2), ("advance", 1), ("advance", 1), ("finish", None)]

    # A second fetch for the same target needs no source at all.
    assert fetch_wheels(reqs, X86_311, cache, source=NoNetwork()) == paths

    # Another target picks (and records) its own best file: the pure beta on arm.
    arm = fetch_wheels(reqs, ARM_312, cache, source=source)
    assert [p.name for p in arm] == ["alpha-1.0-py3-none-any.whl", "beta-2.0-py3-none-any.whl"]
    assert fetch_wheels(reqs, ARM_312, cache, source=NoNetwork()) == arm


def test_only_missing_pins_reach_the_source(tmp_path: Path, house: Path) -> None:
    cache = tmp_path / "cache"
    fetch_wheels(_lock(house, "alpha"), X86_311, cache, source=LocalWheelSource(house))
    source = CountingSource(house)
    fetch_wheels(_lock(house, "alpha", "beta"), X86_311, cache, source=source)
    assert source.asked == [["beta==2.0"]]


def test_requirements_whose_markers_do_not_apply_are_skipped(tmp_path: Path, house: Path) -> None:
    alpha, gamma = _lock(house, "alpha", "gamma")
    gamma = dataclasses.replace(gamma, markers='platform_machine == "aarch64"')
    x86 = fetch_wheels([alpha, gamma], X86_311, tmp_path / "c", source=LocalWheelSource(house))
    assert [p.name for p in x86] == ["alpha-1.0-py3-none-any.whl"]
    arm = fetch_wheels([alpha, gamma], ARM_312, tmp_path / "c", source=LocalWheelSource(house))
    assert [p.name.split("-")[0] for p in arm] == ["alpha", "gamma"]


def test_a_wheel_whose_hash_is_not_in_the_lock_is_refused(tmp_path: Path, house: Path) -> None:
    (alpha,) = _lock(house, "alpha")
    wrong = dataclasses.replace(alpha, hashes=frozenset({"0" * 64}))
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError) as info:
        fetch_wheels([wrong], X86_311, cache, source=LocalWheelSource(house))
    message = info.value.message
    assert "alpha==1.0" in message
    assert "which the lock does not list" in message
    assert X86_311.describe() in message
    assert not list(cache.glob("sha256/*/*.whl"))
    assert not (cache / "picks").exists()


def test_every_unavailable_pin_is_named_with_the_target(tmp_path: Path, house: Path) -> None:
    reqs = (
        *_lock(house, "alpha", "gamma"),
        LockedRequirement("delta", "9.9", frozenset({"d" * 64})),
    )
    with pytest.raises(DownloadError) as info:
        fetch_wheels(reqs, X86_311, tmp_path / "cache", source=LocalWheelSource(house))
    message = info.value.message
    assert "gamma==3.0" in message and "delta==9.9" in message
    assert "alpha" not in message
    assert "cp311 (python 3.11) on manylinux_2_17_x86_64" in message
    assert "bundle.toml" in (info.value.remedy or "")


def test_a_tampered_cache_file_is_dropped_and_fetched_again(tmp_path: Path, house: Path) -> None:
    reqs = _lock(house, "alpha")
    cache = tmp_path / "cache"
    (path,) = fetch_wheels(reqs, X86_311, cache, source=LocalWheelSource(house))
    good = path.read_bytes()
    path.write_bytes(good + b"tampered")
    source = CountingSource(house)
    (again,) = fetch_wheels(reqs, X86_311, cache, source=source)
    assert source.asked == [["alpha==1.0"]]
    assert again == path
    assert again.read_bytes() == good


def test_a_source_delivering_a_foreign_wheel_is_refused(tmp_path: Path, house: Path) -> None:
    """The source's choice is checked: gamma exists only for arm, so x86 gets nothing."""

    class Careless:
        def download(
            self, reqs: Sequence[LockedRequirement], target: Target, dest: Path, saved: Saved
        ) -> None:
            for wheel in house.glob("gamma-*.whl"):
                shutil.copy(wheel, dest / wheel.name)

    with pytest.raises(DownloadError, match=r"gamma==3.0 \(no wheel for this target"):
        fetch_wheels(_lock(house, "gamma"), X86_311, tmp_path / "c", source=Careless())


def test_cache_dir_comes_from_the_environment(
    tmp_path: Path, house: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRGAP_CACHE_DIR", str(tmp_path / "airgap-cache"))
    assert default_cache_dir() == tmp_path / "airgap-cache" / "wheels"
    (path,) = fetch_wheels(_lock(house, "alpha"), X86_311, source=LocalWheelSource(house))
    assert path.is_relative_to(tmp_path / "airgap-cache" / "wheels")
    monkeypatch.delenv("AIRGAP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "airgap-bundler" / "wheels"


# --- real wheels from the index ----------------------------------------------------------

# A real lock for a small binary package, hashed as pip-compile writes it: the sha256 of
# MarkupSafe 3.0.2's wheel for CPython 3.12 on manylinux2014 aarch64 (published on PyPI).
MARKUPSAFE_LOCK = """\
markupsafe==3.0.2 \\
    --hash=sha256:1c99d261bd2d5f6b59325c92c73df481e05e57f19837bdca8413b9eac4bd8028
"""
MARKUPSAFE_WHEEL = "MarkupSafe-3.0.2-cp312-cp312-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"


@pytest.mark.network
@pytest.mark.netns
def test_real_foreign_wheel_then_offline_from_cache(tmp_path: Path) -> None:
    reqs = parse_lock_text(MARKUPSAFE_LOCK)
    cache = tmp_path / "cache"
    (path,) = fetch_wheels(reqs, ARM_312, cache)
    assert path.name == MARKUPSAFE_WHEEL
    assert sha256_hex(path) == next(iter(reqs[0].hashes))

    # Second fetch with pip unusable: only the cache can answer.
    broken_pip = PipDownloader(python=str(tmp_path / "no-such-python"))
    assert fetch_wheels(reqs, ARM_312, cache, source=broken_pip) == [path]

    # And with no network at all: a fresh process in an empty network namespace.
    require_netns()
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from bundler.pack.lock import parse_lock_text\n"
        "from bundler.target import Target\n"
        "from bundler.pack.wheels import fetch_wheels\n"
        "reqs = parse_lock_text(sys.argv[1])\n"
        "t = Target.create('3.12', ['manylinux_2_17_aarch64'])\n"
        "print(json.dumps([str(p) for p in fetch_wheels(reqs, t, Path(sys.argv[2]))]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    offline = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", code, MARKUPSAFE_LOCK, str(cache)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout) == [str(path)]


@pytest.mark.network
def test_real_download_failure_names_the_pin_and_target(tmp_path: Path) -> None:
    """MarkupSafe 3.0.2 publishes no wheel for CPython 3.6: pip finds none for that target."""
    reqs = parse_lock_text(MARKUPSAFE_LOCK)
    old = Target.create("3.6", ["manylinux_2_17_aarch64"])
    with pytest.raises(DownloadError) as info:
        fetch_wheels(reqs, old, tmp_path / "cache")
    assert "markupsafe==3.0.2" in info.value.message
    assert "cp36 (python 3.6) on manylinux_2_17_aarch64" in info.value.message


def test_cached_picks_are_the_last_fetchs_files_without_hashing(
    tmp_path: Path, house: Path
) -> None:
    from bundler.pack.wheels import cached_picks

    cache = tmp_path / "cache"
    reqs = _lock(house, "alpha", "beta")
    assert cached_picks(reqs, X86_311, cache) is None  # nothing fetched yet
    fetch_wheels(reqs[:1], X86_311, cache, source=LocalWheelSource(house))
    assert cached_picks(reqs, X86_311, cache) is None  # beta has no pick record
    paths = fetch_wheels(reqs, X86_311, cache, source=LocalWheelSource(house))
    assert cached_picks(reqs, X86_311, cache) == paths
    assert cached_picks(reqs, ARM_312, cache) is None  # picks are per target
    # A hint only: a changed file is still named (fetch_wheels is what re-hashes it).
    paths[0].write_bytes(b"changed")
    assert cached_picks(reqs, X86_311, cache) == paths
