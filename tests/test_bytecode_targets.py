"""Bytecode for a target Python other than the packing one, with a host interpreter of it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bundler.errors import LocalRunnerError
from bundler.interpreters import Interpreter, find_python, probe_interpreter
from bundler.pack.sitetree import COMPILE_BATCHES, bytecode_interpreter, compile_bytecode
from bundler.target import Target

HOST = f"{sys.version_info[0]}.{sys.version_info[1]}"
# Sources whose pycs are sensitive to the compiler's process state: set constants (hash
# order) and many short shared strings (marshal's reference flags before 3.12).
SOURCES = {
    "pkg/__init__.py": "FLAGS = {'alpha', 'beta', 'gamma', 'delta'}\n",
    "pkg/text.py": "def esc(s):\n    return s.replace('{', '\\\\{').replace('}', '\\\\}')\n",
    "pkg/deep/a/b/c/d/e/f/g/h/i/j/k/leaf.py": "LEAF = frozenset(['x', 'y', 'z'])\n",
    "pkg/broken.py": "def f(:\n",  # does not compile: stays source-only
    **{f"pkg/m{i:02d}.py": f"def f{i}(x):\n    return {{'{i}': x, '{{': 1}}\n" for i in range(40)},
}


def _other_python() -> Interpreter:
    """A CPython of another minor version than this one (pyenv has 3.8-3.13 here)."""
    for version in ("3.12", "3.8", "3.13", "3.10", "3.9"):
        if version == HOST:
            continue
        try:
            return find_python(version)
        except LocalRunnerError:
            continue
    pytest.skip("no CPython of another minor version on this machine")


def _tree(root: Path) -> Path:
    for rel, text in SOURCES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _pycs(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.pyc"))}


def test_a_target_version_found_on_the_host_gets_its_bytecode(tmp_path: Path) -> None:
    other = _other_python()
    target = Target.create(other.version, ["manylinux_2_17_x86_64"])
    assert bytecode_interpreter(target) == other.path
    tree = _tree(tmp_path / "one" / "site")
    assert compile_bytecode(tree, target) is True
    pycs = _pycs(tree)
    tag = f"cpython-{other.version.replace('.', '')}"
    expected = {
        str(Path(rel).parent / "__pycache__" / f"{Path(rel).stem}.{tag}.pyc")
        for rel in SOURCES
        if not rel.endswith("broken.py")
    }
    assert set(pycs) == expected  # every level, the broken file skipped
    for data in pycs.values():
        assert int.from_bytes(data[4:8], "little") == 0b11  # PEP 552 checked-hash
        assert str(tmp_path).encode() not in data
    # The target's interpreter loads them as they are (compiling would be refused), and
    # the code objects name tree-relative files.
    code = (
        "import importlib._bootstrap_external as ext\n"
        "def refuse(*a, **k): raise SystemExit('compiled from source')\n"
        "ext.SourceLoader.source_to_code = refuse\n"
        "import pkg, pkg.m07, pkg.deep.a.b.c.d.e.f.g.h.i.j.k.leaf as leaf\n"
        "f = pkg.m07.f7\n"
        "print(sorted(pkg.FLAGS), f(1), sorted(leaf.LEAF), f.__code__.co_filename)\n"
    )
    proc = subprocess.run(
        [str(other.path), "-B", "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tree), "PATH": os.environ["PATH"]},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split(" ")[-1].strip() == f"{tree}/pkg/m07.py"  # the import system
    # re-points co_filename at the real source; what the pyc itself records is relative:
    assert b"pkg/m07.py" in pycs[f"pkg/__pycache__/m07.{tag}.pyc"]


def test_cross_version_bytecode_is_reproducible(tmp_path: Path) -> None:
    other = _other_python()
    target = Target.create(other.version, ["manylinux_2_17_x86_64"])
    first = _tree(tmp_path / "a" / "site")
    second = _tree(tmp_path / "somewhere-else" / "x" / "site")
    compile_bytecode(first, target)
    compile_bytecode(second, target)
    assert _pycs(first) == _pycs(second)
    assert len(_pycs(first)) == len(SOURCES) - 1 > COMPILE_BATCHES  # several per batch


def test_python_38_pycs_do_not_depend_on_scheduling(tmp_path: Path) -> None:
    """3.8 marshals reference flags from refcounts; compileall's worker pool made pycs differ
    between runs. Fixed batches in sorted order give the same bytes every time."""
    try:
        py38 = find_python("3.8")
    except LocalRunnerError:
        pytest.skip("no Python 3.8 here")
    target = Target.create("3.8", ["manylinux_2_17_x86_64"])
    pip_src = Path(__import__("pip").__file__).parent / "_vendor" / "rich"
    results = []
    for name in ("one", "two", "three"):
        tree = tmp_path / name
        shutil.copytree(pip_src, tree / "rich", ignore=shutil.ignore_patterns("__pycache__"))
        compile_bytecode(tree, target, py38.path)
        results.append(_pycs(tree))
    assert results[0] and results[0] == results[1] == results[2]


def test_patch_releases_of_one_minor_version_write_the_same_pycs(tmp_path: Path) -> None:
    """The pyc format is per minor version: two patch releases give identical files."""
    found: dict[str, Interpreter] = {}
    candidates = [f"/usr/bin/python{HOST}", sys.executable]
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    candidates += [str(p / "bin" / f"python{HOST}") for p in sorted(pyenv.glob(f"{HOST}.*"))]
    for candidate in candidates:
        if not Path(candidate).exists():
            continue
        probe = probe_interpreter(candidate)
        if probe and probe.version == HOST:
            full = subprocess.run(
                [candidate, "-c", "import platform; print(platform.python_version())"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            found.setdefault(full, probe)
    if len(found) < 2:
        pytest.skip(f"only one patch release of {HOST} here: {sorted(found)}")
    target = Target.create(HOST, ["manylinux_2_17_x86_64"])
    results = []
    for full, interp in sorted(found.items()):
        tree = _tree(tmp_path / full / "site")
        compile_bytecode(tree, target, interp.path)
        results.append(_pycs(tree))
    assert results[0] and all(r == results[0] for r in results[1:])


def _missing_minor() -> str:
    for minor in range(14, 30):
        try:
            find_python(f"3.{minor}")
        except LocalRunnerError:
            return f"3.{minor}"
    pytest.skip("every CPython 3.14-3.29 is installed here")


def test_pack_warns_when_no_interpreter_of_the_target_version_exists(tmp_path: Path) -> None:
    from bundler.pack.pipeline import _bytecode_python

    missing = _missing_minor()
    warnings: list[str] = []
    target = Target.create(missing, ["manylinux_2_17_x86_64"])
    assert _bytecode_python(target, "auto", warnings.append) is None
    assert warnings == [
        f"no Python {missing} was found on this machine, so site-packages ships without "
        "bytecode and the isolated host compiles every module in memory at each start; "
        f"install python{missing} (or `pyenv install {missing}`) here and pack again to "
        "include it (the bundle then differs from one packed where that Python exists: "
        "--bytecode require or none make it machine-independent)"
    ]
    # With an interpreter there is no warning, and the bytecode is there.
    other = _other_python()
    other_target = Target.create(other.version, ["manylinux_2_17_x86_64"])
    python = _bytecode_python(other_target, "auto", warnings.append)
    assert python is not None
    tree = _tree(tmp_path / "site")
    compile_bytecode(tree, other_target, python)
    assert len(warnings) == 1
    assert _pycs(tree)


def test_bytecode_require_fails_without_the_interpreter_and_none_never_compiles() -> None:
    from bundler.errors import ProjectError
    from bundler.pack.pipeline import _bytecode_python

    missing = _missing_minor()
    with pytest.raises(ProjectError, match=f"--bytecode require: no Python {missing}"):
        _bytecode_python(Target.create(missing, ["manylinux_2_17_x86_64"]), "require", print)
    other = _other_python()
    target = Target.create(other.version, ["manylinux_2_17_x86_64"])
    assert _bytecode_python(target, "require", print) is not None
    warnings: list[str] = []
    assert _bytecode_python(target, "none", warnings.append) is None
    assert warnings == []
