"""The user's side: sys.path, offline extra requirements, loading the entry script, init()."""

from __future__ import annotations

import importlib.util
import inspect
import os
import site
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .interface import PLAIN, InterfaceError, RunInterface, analyze

if TYPE_CHECKING:
    from collections.abc import Callable, MutableMapping
    from pathlib import Path

    from .config import Settings

# Read by the runtime's sitecustomize in child processes: folders whose .pth files to process.
SITE_DIRS_ENV = "AIRGAP_SITE_DIRS"
# The serving interpreter, for the bundle's prefix/bin launchers ("${AIRGAP_PYTHON:-python3}").
PYTHON_ENV = "AIRGAP_PYTHON"

# The module name Azure ML's server gives the entry script; reused when the file's own stem is
# already taken (e.g. a score.py named after an installed package).
FALLBACK_MODULE = "entry_module"


class EntryScriptError(Exception):
    """The entry script could not be imported, lacks init()/run(), or init() raised."""


class RequirementsError(Exception):
    """AZUREML_EXTRA_REQUIREMENTS_TXT could not be installed from its wheels folder."""


_PLAIN = RunInterface(PLAIN, "raw_data", (), None, None, ())


@dataclass(frozen=True)
class EntryScript:
    """A loaded entry script: its run(), whether run() takes ``request_headers``, and how it
    takes its input (plain text, inference-schema parameters or the raw request)."""

    run: Callable[..., Any]
    wants_headers: bool
    module_name: str
    init_seconds: float
    interface: RunInterface = field(default=_PLAIN)


def prepend_paths(paths: list[str]) -> None:
    """Put ``paths`` first on sys.path, in order, removing earlier copies of them."""
    for path in reversed(paths):
        while path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)


def install_requirements(requirements: Path) -> str:
    """Install ``requirements`` offline from the wheels in its folder into a fresh temp dir.

    Returns the folder, for the caller to put first on sys.path and delete at exit.

    Raises:
        RequirementsError: pip is missing, or failed (its output is already on stderr).
    """
    target = tempfile.mkdtemp(prefix="airgap-requirements-")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        # Offline by construction: no index, only the wheels shipped beside the file.
        "--no-index",
        "--find-links",
        str(requirements.parent),
        "--only-binary=:all:",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--no-input",
        "--target",
        target,
        "-r",
        str(requirements),
    ]
    # No host pip configuration may add an index or a find-links folder: only the wheels
    # beside the requirements file can be installed.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    try:
        # pip's own output goes to our stderr, so the log shows what was installed.
        proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, env=env, check=False)
    except OSError as e:
        raise RequirementsError(f"cannot run pip: {e}") from e
    if proc.returncode != 0:
        raise RequirementsError(
            f"installing {requirements} failed (pip exit status {proc.returncode}, see above); "
            "check that every pinned wheel is in its folder and built for this Python"
        )
    return target


def apply_paths(settings: Settings, requirements_dir: str | None) -> None:
    """Order sys.path as Azure ML does, and hand the same view to child processes.

    In this process: the user's packages first (AZUREML_EXTRA_PYTHON_LIB_PATH, or the folder
    the extra requirements went to), then the entry script's folder; the ``.pth`` files of
    those package folders are processed, as a virtualenv's site-packages would be.

    For child processes (``subprocess``, multiprocessing, joblib's loky workers), which start
    a fresh interpreter that knows nothing of this sys.path: PYTHONPATH gets the same
    folders in the same order, ``AIRGAP_SITE_DIRS`` names the package folders so the
    runtime's ``sitecustomize`` processes their ``.pth`` files there too, ``AIRGAP_PYTHON``
    is this interpreter (used by the bundle's ``prefix/bin`` launchers), and the bin folders
    of the bundle's prefix and of the extra requirements go first on PATH.
    """
    sites = [str(p) for p in settings.extra_lib_paths]
    if requirements_dir:
        sites.append(requirements_dir)
    first = [*sites, str(settings.entry_script.parent)]
    prepend_paths(first)
    for folder in sites:
        # Already on sys.path, so only its .pth files are processed (in sorted order, and
        # appending what they add, exactly as at interpreter start-up).
        site.addsitedir(folder)
    child_environment(os.environ, first, sites, settings, requirements_dir)


def child_environment(
    env: MutableMapping[str, str],
    first: list[str],
    sites: list[str],
    settings: Settings,
    requirements_dir: str | None,
) -> None:
    """Set the variables that give child processes this process's packages (see apply_paths)."""
    existing = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(_unique([*first, *existing]))
    env[SITE_DIRS_ENV] = os.pathsep.join(sites)
    env[PYTHON_ENV] = sys.executable
    bins = []
    if settings.prefix is not None:
        bins.append(str(settings.prefix / "bin"))
    if requirements_dir:
        bins.append(os.path.join(requirements_dir, "bin"))  # pip --target puts scripts there
    bins = [b for b in bins if os.path.isdir(b)]
    if bins:
        path = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p]
        env["PATH"] = os.pathsep.join(_unique([*bins, *path]))


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _module_name(entry: Path) -> str:
    stem = entry.stem
    if stem.isidentifier() and stem not in sys.modules:
        return stem
    return FALLBACK_MODULE


def load_entry_script(entry: Path) -> EntryScript:
    """Import the entry script, check its functions, call init() and time it.

    Raises:
        EntryScriptError: from the import, a missing or unusable init()/run(), or init()
            itself (the user's exception is chained, so its traceback reaches the log).
    """
    name = _module_name(entry)
    spec = importlib.util.spec_from_file_location(name, str(entry))
    if spec is None or spec.loader is None:
        raise EntryScriptError(f"{entry} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered before executing, so pickles and dataclasses that refer back to the module
    # by name (e.g. a model class defined in score.py) resolve.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as e:  # SystemExit in a script must fail the boot, not end a worker
        raise EntryScriptError(f"importing {entry} raised {type(e).__name__}: {e}") from e

    init = getattr(module, "init", None)
    run = getattr(module, "run", None)
    if not callable(init):
        raise EntryScriptError(f"{entry} defines no init() function")
    if not callable(run):
        raise EntryScriptError(f"{entry} defines no run() function")
    # Azure ML SDK-generated driver scripts forward to the real score script, but drop the
    # parameters of an @input_schema run(): Azure ML's server calls the real run() directly.
    driver = getattr(module, "driver_module", None)
    if isinstance(driver, ModuleType) and callable(getattr(driver, "run", None)):
        run = driver.run
    wants_headers = _check_run(entry, run)
    try:
        interface = analyze(run)
    except InterfaceError as e:
        raise EntryScriptError(f"{entry}: {e}") from e

    start = time.perf_counter()
    try:
        init()
    except BaseException as e:
        raise EntryScriptError(f"init() in {entry} raised {type(e).__name__}: {e}") from e
    return EntryScript(run, wants_headers, name, time.perf_counter() - start, interface)


def _check_run(entry: Path, run: Callable[..., Any]) -> bool:
    """Whether run() asks for ``request_headers``; it must also take the input."""
    try:
        params = list(inspect.signature(run).parameters.values())
    except (TypeError, ValueError):
        return False  # a builtin or odd callable: call it with the input only
    wants_headers = any(p.name == "request_headers" for p in params)
    others = [p for p in params if p.name != "request_headers"]
    takes_input = any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in others
    )
    if not takes_input:
        raise EntryScriptError(f"run() in {entry} must accept the input data as its first argument")
    return wants_headers


def environment_summary() -> str:
    """One line for the log: which Python serves, from where."""
    return f"Python {sys.version.split()[0]} at {sys.executable} (pid {os.getpid()})"
