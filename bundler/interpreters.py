"""Finding host Python interpreters by version: probing candidates on PATH, pyenv, system dirs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .errors import LocalRunnerError

_PROBE: Final = (
    "import sys; print(sys.implementation.name, '%d.%d' % sys.version_info[:2], sys.executable)"
)


@dataclass(frozen=True)
class Interpreter:
    """A host Python, as it reported itself."""

    path: Path
    implementation: str  # sys.implementation.name, e.g. "cpython"
    version: str  # "3.11"


def probe_interpreter(candidate: str | Path) -> Interpreter | None:
    """Ask ``candidate`` what it is; None when it does not run (e.g. an inactive pyenv shim)."""
    try:
        proc = subprocess.run(
            # -B: asking a cached venv's Python must not write bytecode into the venv.
            [str(candidate), "-I", "-B", "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = proc.stdout.strip().split(" ", 2)
    if proc.returncode != 0 or len(parts) != 3:
        return None
    return Interpreter(Path(parts[2]), parts[0], parts[1])


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else -1 for p in name.split("."))


def candidate_interpreters(version: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """Places a Python ``version`` may be, best first: this Python, PATH, pyenv, system dirs."""
    env = os.environ if environ is None else environ
    found: list[str] = []
    if "{}.{}".format(*sys.version_info[:2]) == version:
        found.append(sys.executable)
    on_path = shutil.which(f"python{version}", path=env.get("PATH"))
    if on_path:
        found.append(on_path)
    pyenv_root = Path(env.get("PYENV_ROOT") or Path.home() / ".pyenv")
    versions = pyenv_root / "versions"
    if versions.is_dir():
        # Newest patch release first: 3.11.9 before 3.11.7.
        names = sorted(
            (p.name for p in versions.iterdir() if p.name.startswith(f"{version}.")),
            key=_version_key,
            reverse=True,
        )
        found.extend(str(versions / n / "bin" / f"python{version}") for n in names)
    for folder in ("/usr/local/bin", "/usr/bin"):
        found.append(f"{folder}/python{version}")
    unique: list[str] = []
    for c in found:
        if c not in unique:
            unique.append(c)
    return unique


def find_python(version: str, implementation: str = "cp") -> Interpreter:
    """The first host interpreter that reports ``version`` (e.g. "3.11") and is CPython.

    Raises:
        LocalRunnerError: none was found; the message names the Python the bundle needs.
    """
    wanted_impl = "cpython" if implementation == "cp" else implementation
    for candidate in candidate_interpreters(version):
        if not (os.path.isabs(candidate) and Path(candidate).exists()):
            continue
        found = probe_interpreter(candidate)
        if found and found.version == version and found.implementation == wanted_impl:
            return found
    raise LocalRunnerError(
        f"the bundle needs Python {version} ({wanted_impl}), and none was found on this machine "
        f"(looked for python{version} on PATH, in pyenv and in /usr/bin, /usr/local/bin)",
        remedy=f"install Python {version} (e.g. `apt-get install python{version}` or "
        f"`pyenv install {version}`), or use the Docker path: airgap build / airgap run",
    )


__all__ = ["Interpreter", "candidate_interpreters", "find_python", "probe_interpreter"]
