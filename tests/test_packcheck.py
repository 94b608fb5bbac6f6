"""Pack-time refusals: entry scripts the server cannot call, targets it cannot serve."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from conftest import KeyPair

from bundler.errors import ProjectError
from bundler.pack import pack
from bundler.pack.checks import check_pack, entry_script_problems, target_problems
from bundler.pack.project import load_project
from bundler.target import Target

LINUX = Target.create("3.11", ["manylinux_2_28_x86_64"])

ACCEPTED = {
    "plain": "def init():\n    pass\n\ndef run(raw_data):\n    return raw_data\n",
    "defaults": "def init(path=None):\n    pass\n\ndef run(data, request_headers=None):\n    ...\n",
    "keyword_only": "def init():\n    pass\n\ndef run(*, data):\n    return data\n",
    "assigned": "init = lambda: None\nrun = print\n",
    "imported": "from os import sep as init\nfrom json import dumps as run\n",
    "import_module": "import init\nimport run.sub\n",
    "fallback": (
        "try:\n    from fast import init, run\nexcept ImportError:\n"
        "    def init():\n        pass\n    def run(raw):\n        return raw\n"
    ),
    "conditional": (
        "import os\nif os.environ.get('X'):\n    def init():\n        pass\nelse:\n"
        "    init = None\nwith open(__file__) as f:\n    run = f.read\n"
    ),
    "tuple": "init, (run, other) = None, (None, None)\n",
    "decorated": (
        "from inference_schema.schema_decorators import input_schema\n"
        "def init():\n    pass\n\n@input_schema('data', None)\ndef run(*args, **kwargs):\n    ...\n"
    ),
    "class": "class init:\n    pass\n\nclass run:\n    def __init__(self, data):\n        pass\n",
}

REFUSED = {
    "no_run": ("def init():\n    pass\n", ["has no top-level run()"]),
    "nothing": ("x = 1\n", ["has no top-level init()", "has no top-level run()"]),
    "nested": (
        "def outer():\n    def init():\n        pass\n    def run(d):\n        pass\n",
        ["has no top-level init()", "has no top-level run()"],
    ),
    "in_class": (
        "class Model:\n    def init(self):\n        pass\n    def run(self, d):\n        pass\n",
        ["has no top-level init()", "has no top-level run()"],
    ),
    "annotation_only": (
        "from typing import Callable\ninit: Callable\nrun: Callable\n",
        ["has no top-level init()", "has no top-level run()"],
    ),
    "async": (
        "async def init():\n    pass\n\nasync def run(d):\n    return d\n",
        ["init() is `async def`", "run() is `async def`"],
    ),
    "init_args": ("def init(model):\n    pass\ndef run(d):\n    pass\n", ["init() must take no"]),
    "init_kwonly": ("def init(*, m):\n    pass\ndef run(d):\n    pass\n", ["init() must take no"]),
    "run_no_arg": (
        "def init():\n    pass\ndef run():\n    pass\n",
        ["run() must take an argument"],
    ),
    "run_headers_only": (
        "def init():\n    pass\ndef run(request_headers):\n    pass\n",
        ["run() must take an argument"],
    ),
    "run_varargs": (
        "def init():\n    pass\ndef run(*data):\n    pass\n",
        ["run() cannot take positional-only parameters, *args or **kwargs"],
    ),
    "run_posonly": (
        "def init():\n    pass\ndef run(data, /):\n    pass\n",
        ["run() cannot take positional-only parameters"],
    ),
    "syntax": (
        "def init():\n    pass\ndef run(d)\n    pass\n",
        ["does not compile for Python 3.11 (line 3"],
    ),
}


def _script(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "score.py"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_servable_entry_scripts_are_accepted(tmp_path: Path, name: str) -> None:
    warnings: list[str] = []
    assert entry_script_problems(_script(tmp_path, ACCEPTED[name]), LINUX, warnings.append) == []
    assert warnings == []


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unservable_entry_scripts_are_refused(tmp_path: Path, name: str) -> None:
    text, expected = REFUSED[name]
    problems = entry_script_problems(_script(tmp_path, text), LINUX, lambda _line: None)
    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected, strict=True):
        assert problem.startswith("entry script score.py")
        assert fragment in problem


def test_the_script_is_never_executed(tmp_path: Path) -> None:
    canary = tmp_path / "ran"
    text = f"open({str(canary)!r}, 'w').close()\nraise SystemExit(9)\ndef init(): pass\n"
    assert entry_script_problems(_script(tmp_path, text), LINUX, lambda _line: None) == [
        "entry script score.py has no top-level run() (the server calls run(raw_data))"
    ]
    assert not canary.exists()


def test_a_star_import_is_a_warning_not_a_refusal(tmp_path: Path) -> None:
    warnings: list[str] = []
    text = "from .impl import *\ndef init():\n    pass\n"
    assert entry_script_problems(_script(tmp_path, text), LINUX, warnings.append) == []
    assert warnings == [
        "entry script score.py: run() is not defined in it; it may come from "
        "`from .impl import *`, which is not checked"
    ]


def test_syntax_newer_than_the_target_is_refused(tmp_path: Path) -> None:
    text = (
        "def init():\n    pass\n\ndef run(d):\n    match d:\n        case _:\n"
        "            return d\n"
    )
    old = Target.create("3.9", ["manylinux_2_28_x86_64"])
    (problem,) = entry_script_problems(_script(tmp_path, text), old, lambda _line: None)
    assert problem.startswith("entry script score.py does not compile for Python 3.9 (line ")
    assert "Pattern matching is only supported in Python 3.10" in problem
    assert entry_script_problems(_script(tmp_path, text), LINUX, lambda _line: None) == []


def test_syntax_only_a_newer_target_knows_is_checked_by_that_target(tmp_path: Path) -> None:
    if sys.version_info >= (3, 12):
        pytest.skip("needs a packing Python older than 3.12")
    from bundler.errors import LocalRunnerError
    from bundler.interpreters import find_python

    try:
        find_python("3.12")
    except LocalRunnerError:
        pytest.skip("no Python 3.12 here")
    newer = Target.create("3.12", ["manylinux_2_28_x86_64"])
    pep695 = (
        "type Vector = list[float]\ndef init():\n    pass\ndef run[T](d: T) -> T:\n    return d\n"
    )
    assert entry_script_problems(_script(tmp_path, pep695), newer, lambda _line: None) == []
    broken = pep695 + "def oops(:\n"
    (problem,) = entry_script_problems(_script(tmp_path, broken), newer, lambda _line: None)
    assert "does not compile for Python 3.12" in problem


@pytest.mark.parametrize("platform", ["win_amd64", "win32", "win_arm64"])
def test_windows_targets_are_refused(platform: str) -> None:
    (problem,) = target_problems(Target.create("3.11", [platform]))
    assert f"target platform {platform} is Windows" in problem
    assert "gunicorn needs a POSIX system" in problem
    assert target_problems(LINUX) == []
    assert target_problems(Target.create("3.11", ["macosx_11_0_arm64"])) == []


def test_mixed_architectures_are_refused_by_the_target() -> None:
    with pytest.raises(
        ValueError, match=re.escape("platforms mix architectures (aarch64, x86_64)")
    ):
        Target.create("3.11", ["manylinux_2_28_x86_64", "manylinux_2_28_aarch64"])
    with pytest.raises(ValueError, match="mix architectures"):
        Target.create("3.11", ["manylinux_2_17_x86_64", "musllinux_1_2_i686"])
    # One architecture and C library under several tags is fine, and so are macOS fat tags.
    Target.create("3.11", ["manylinux_2_28_x86_64", "manylinux2014_x86_64"])
    Target.create("3.11", ["musllinux_1_2_x86_64", "musllinux_1_1_x86_64"])
    Target.create("3.11", ["macosx_11_0_arm64", "macosx_11_0_universal2"])


def test_mixed_c_libraries_are_refused_by_the_target() -> None:
    # A manylinux extension module needs glibc: no host can run both halves of such a tree.
    with pytest.raises(ValueError, match=re.escape("platforms mix C libraries (glibc, musl)")):
        Target.create("3.11", ["manylinux_2_28_x86_64", "musllinux_1_1_x86_64"])
    with pytest.raises(ValueError, match="mix C libraries"):
        Target.create("3.11", ["manylinux2014_x86_64", "musllinux_1_2_x86_64"])


def test_mixed_architectures_in_bundle_toml(tmp_path: Path) -> None:
    (tmp_path / "bundle.toml").write_text(
        'name = "demo"\nversion = "1.0.0"\nmodel = "model"\n[target]\npython = "3.11"\n'
        'platforms = ["manylinux_2_17_x86_64", "manylinux_2_17_aarch64"]\n'
    )
    (tmp_path / "score.py").write_text("def init(): pass\ndef run(d): pass\n")
    (tmp_path / "model").write_bytes(b"m")
    (tmp_path / "requirements.lock").write_text("")
    with pytest.raises(ProjectError, match="platforms mix architectures"):
        load_project(tmp_path)


def test_check_pack_lists_every_problem_at_once(tmp_path: Path) -> None:
    script = _script(tmp_path, "async def run(d):\n    pass\n")
    with pytest.raises(ProjectError) as info:
        check_pack(script, Target.create("3.11", ["win_amd64"]))
    message = info.value.diagnostics()
    assert "3 problem(s)" in message
    assert "is Windows" in message
    assert "no top-level init()" in message
    assert "run() is `async def`" in message
    assert "docs/project-file.md" in message


def test_pack_refuses_before_any_download(tmp_path: Path, publisher: KeyPair) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "bundle.toml").write_text(
        'name = "demo"\nversion = "1.0.0"\nmodel = "model.bin"\n'
        '[target]\npython = "3.11"\nplatforms = ["win_amd64"]\n'
    )
    (project / "score.py").write_text("def init(model):\n    pass\n")
    (project / "model.bin").write_bytes(b"m")
    # A pin no index has: reaching the download step would fail differently, and slowly.
    (project / "requirements.lock").write_text(
        "no-such-package-airgap==1.0 --hash=sha256:" + "0" * 64 + "\n"
    )
    cache = tmp_path / "cache"
    with pytest.raises(ProjectError) as info:
        pack(project, tmp_path / "out.airgap", publisher.key, cache_dir=cache)
    message = info.value.message
    assert message.startswith("the bundle could not serve: 3 problem(s): ")
    assert "init() must take no arguments" in message
    assert "no top-level run()" in message
    assert "win_amd64 is Windows" in message
    assert not cache.exists()
    assert not (tmp_path / "out.airgap").exists()
