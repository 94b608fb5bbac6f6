"""Pack-time refusals of what cannot work on the isolated side (pure checks, no downloads)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ..errors import LocalRunnerError, ProjectError
from ..interpreters import find_python
from ..target import Target

DOCS: Final = "docs/project-file.md"
# The Azure ML server calls exactly these, synchronously, with no arguments for init.
_REQUIRED: Final = ("init", "run")
_WINDOWS_PREFIX: Final = "win"

Warn = Callable[[str], None]


@dataclass
class _Bindings:
    """Top-level names of a module as the AST shows them."""

    defs: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)  # every other binding (imports, assignments)
    star_imports: list[str] = field(default_factory=list)


def check_pack(entry_script: Path, target: Target, *, warn: Warn | None = None) -> None:
    """Refuse a project whose bundle could not serve on the isolated side.

    Collects every problem, then raises once: the entry script does not parse (for the
    target's Python), lacks a top-level ``init`` or ``run``, defines them ``async`` or with
    a signature the server cannot call; the target is Windows (the runtime's gunicorn needs
    POSIX). The script is read with :mod:`ast`, never imported. A name that could come from
    ``from x import *`` is not refused but reported through ``warn``.

    Raises:
        ProjectError: every problem found, in one message.
    """
    warn = warn or (lambda _line: None)
    problems = [*target_problems(target), *entry_script_problems(entry_script, target, warn)]
    if problems:
        raise ProjectError(
            f"the bundle could not serve: {len(problems)} problem(s): " + "; ".join(problems),
            remedy=f"fix them and pack again ({DOCS})",
        )


def target_problems(target: Target) -> list[str]:
    """Why the scoring runtime cannot serve ``target``, if it cannot."""
    windows = [p for p in target.platforms if p.startswith(_WINDOWS_PREFIX)]
    if windows:
        return [
            f"target platform {', '.join(windows)} is Windows, which the scoring runtime cannot "
            "serve (gunicorn needs a POSIX system); pack for a Linux platform such as "
            "manylinux_2_28_x86_64 and serve it in Docker or on a Linux host"
        ]
    return []


def entry_script_problems(path: Path, target: Target, warn: Warn) -> list[str]:
    """What keeps the Azure-ML-style server from calling ``init()`` and ``run(data)``."""
    name = path.name
    try:
        source = path.read_bytes()
    except OSError as e:
        return [f"entry script {name} cannot be read: {e.strerror}"]
    try:
        tree = _parse(source, path, target)
    except SyntaxError as e:
        if target.python_version > sys.version_info[:2]:
            # This Python may not know the target's newer syntax: ask the target's.
            verdict = _compile_with_target(path, target)
            if verdict is None:
                warn(
                    f"entry script {name} does not parse with Python "
                    f"{sys.version_info[0]}.{sys.version_info[1]} and no Python "
                    f"{target.python} was found to check it; its init() and run() are unchecked"
                )
                return []
            if not verdict:
                return []
        where = f"line {e.lineno}" if e.lineno else "somewhere"
        return [
            f"entry script {name} does not compile for Python {target.python} ({where}: {e.msg})"
        ]
    except ValueError as e:  # null bytes
        return [f"entry script {name} does not compile: {e}"]
    found = _Bindings()
    _collect(tree.body, found)
    problems: list[str] = []
    for required in _REQUIRED:
        node = found.defs.get(required)
        if node is None:
            if required in found.names:
                continue  # assigned or imported: callable-ness is only known at run time
            if found.star_imports:
                warn(
                    f"entry script {name}: {required}() is not defined in it; it may come from "
                    f"`from {found.star_imports[0]} import *`, which is not checked"
                )
                continue
            problems.append(
                f"entry script {name} has no top-level {required}() (the server calls "
                f"{'init()' if required == 'init' else 'run(raw_data)'})"
            )
            continue
        problems += _signature_problems(name, node)
    return problems


def _parse(source: bytes, path: Path, target: Target) -> ast.Module:
    """Parse with the target's grammar where this Python knows it.

    ``feature_version`` refuses syntax newer than the target (e.g. ``match`` for 3.9); a
    target newer than this Python is parsed with this Python's grammar (and a syntax error
    is then re-checked by the target's own interpreter, see entry_script_problems).
    """
    host = sys.version_info[:2]
    version = min(target.python_version, host)
    floor = (3, 7) if host >= (3, 13) else (3, 4)
    feature_version = version if version >= floor else None
    return ast.parse(source, filename=str(path), feature_version=feature_version)


def _compile_with_target(path: Path, target: Target) -> str | None:
    """The target interpreter's compile error for ``path`` ("" if it compiles), or None when
    no interpreter of the target's version is on this machine."""
    try:
        python = find_python(target.python, target.implementation)
    except LocalRunnerError:
        return None
    code = "import sys; compile(open(sys.argv[1], 'rb').read(), sys.argv[1], 'exec')"
    try:
        proc = subprocess.run(
            [str(python.path), "-I", "-c", code, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["error"])[-1]


def _collect(body: list[ast.stmt], found: _Bindings) -> None:
    """Names bound at module level, including inside top-level if/try/with/for blocks
    (``try: from fast import run`` / ``except ImportError: def run(...)``); never inside
    functions or classes."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.defs[node.name] = node
        elif isinstance(node, ast.ClassDef):
            found.names.add(node.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                found.names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    found.star_imports.append("." * node.level + (node.module or ""))
                else:
                    found.names.add(alias.asname or alias.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if isinstance(node, ast.AnnAssign) and node.value is None:
                continue  # `run: Callable` binds nothing
            for target in targets:
                found.names.update(_assigned(target))
        else:
            for block in _blocks(node):
                _collect(block, found)


def _assigned(target: ast.expr) -> Iterator[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, ast.Tuple | ast.List):
        for element in target.elts:
            yield from _assigned(element)
    elif isinstance(target, ast.Starred):
        yield from _assigned(target.value)


def _blocks(node: ast.stmt) -> Iterator[list[ast.stmt]]:
    """The statement lists nested directly in a compound statement."""
    for attr in ("body", "orelse", "finalbody"):
        block = getattr(node, attr, None)
        if isinstance(block, list):
            yield block
    for handler in getattr(node, "handlers", []):
        yield handler.body
    for case in getattr(node, "cases", []):  # match
        yield case.body


def _signature_problems(name: str, node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    kind = node.name
    if isinstance(node, ast.AsyncFunctionDef):
        return [
            f"entry script {name}: {kind}() is `async def`; the server calls init() and run() "
            "synchronously, as Azure ML does, so make it a plain def"
        ]
    if node.decorator_list:
        return []  # a decorator (e.g. inference-schema's) may change the signature
    args = node.args
    if kind == "init":
        required = len(args.posonlyargs) + len(args.args) - len(args.defaults)
        required_kw = [
            a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None
        ]
        if required > 0 or required_kw:
            return [f"entry script {name}: init() must take no arguments (the server calls init())"]
        return []
    # Azure ML's rules for run(): no positional-only parameters, *args or **kwargs, and
    # one parameter for the input besides request_headers.
    if args.posonlyargs or args.vararg or args.kwarg:
        return [
            f"entry script {name}: run() cannot take positional-only parameters, *args or "
            "**kwargs (Azure ML refuses them too)"
        ]
    params = [a.arg for a in (*args.args, *args.kwonlyargs) if a.arg != "request_headers"]
    if not params:
        return [f"entry script {name}: run() must take an argument for the input data"]
    return []


__all__ = ["check_pack", "entry_script_problems", "target_problems"]
