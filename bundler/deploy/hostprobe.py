"""Asking a machine what it is: this host, a given interpreter, or a base image in a container.

Every probe runs the same small script (``PROBE``) with the interpreter in question and reads
the JSON line it prints; ``bundler.deploy.hostcheck`` then decides whether that fits the bundle.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ..errors import ImageBuildError, LocalRunnerError
from ..interpreters import Interpreter
from .hostcheck import HostFacts, normalise_machine, require

if TYPE_CHECKING:
    from ..formats.manifest import Manifest
    from .engine import Engine

# Plain Python 3.6+ (a base image or an old pyenv interpreter runs it), standard library only.
# The C library: glibc answers confstr; on musl confstr fails and musl's dynamic loader prints
# its version when run without arguments (what packaging does to tell musllinux hosts).
PROBE: Final = r"""
import glob, json, os, platform, re, subprocess, sys, sysconfig
libc, version = None, None
try:
    found = os.confstr("CS_GNU_LIBC_VERSION") or ""
except (AttributeError, ValueError, OSError):
    found = ""
if found.startswith("glibc "):
    libc, version = "glibc", found.split()[1]
elif sys.platform.startswith("linux"):
    for ld in sorted(glob.glob("/lib/ld-musl-*.so.1")):
        libc = "musl"
        try:
            out = subprocess.run([ld], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 universal_newlines=True, timeout=10).stderr
        except (OSError, subprocess.SubprocessError):
            continue
        m = re.search(r"^Version (\d+\.\d+)", out, re.M)
        if m:
            version = m.group(1)
            break
flags = "t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""
print(json.dumps({
    "machine": platform.machine(),
    "system": "linux" if sys.platform.startswith("linux") else sys.platform,
    "libc": libc,
    "libc_version": version,
    "python": "%d.%d" % sys.version_info[:2],
    "implementation": sys.implementation.name,
    "abi_flags": flags,
    "executable": sys.executable or "",
}))
"""
_TIMEOUT: Final = 60.0  # seconds; a cold container start on a busy engine can take a while


def parse_probe(output: str) -> HostFacts:
    """The facts in the probe's output (its last line).

    Raises:
        ValueError: the output is not the probe's JSON.
    """
    # A container's log interleaves stderr: the answer is the last line that is an object.
    lines = [line for line in output.splitlines() if line.startswith("{")]
    if not lines:
        raise ValueError("the probe printed no answer")
    return HostFacts.from_probe(json.loads(lines[-1]))


def probe_interpreter_facts(python: str | Path) -> HostFacts:
    """Run ``python`` and return what it says about itself and its machine.

    Raises:
        LocalRunnerError: it does not run, or does not print the probe's answer.
    """
    try:
        # -I: no user site, no PYTHON* variables; -B: nothing written next to it.
        proc = subprocess.run(
            [str(python), "-I", "-B", "-c", PROBE],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LocalRunnerError(
            f"cannot run {python}: {e}", remedy="pass --python the path of a Python interpreter"
        ) from e
    try:
        if proc.returncode != 0:
            raise ValueError((proc.stderr.strip().splitlines() or ["no output"])[-1])
        return parse_probe(proc.stdout)
    except ValueError as e:
        raise LocalRunnerError(
            f"{python} did not answer as a Python 3 interpreter ({e})",
            remedy="pass --python the path of a Python interpreter of the bundle's version",
        ) from e


def this_host() -> HostFacts:
    """This machine's operating system, architecture and C library (no Python facts).

    Asked through the running interpreter, with the same probe as every other machine.

    Raises:
        LocalRunnerError: the probe failed (should not happen: it is this Python).
    """
    return probe_interpreter_facts(sys.executable).platform_only()


def interpreter_at(python: Path, manifest: Manifest) -> Interpreter:
    """The interpreter ``--python`` names, once it is checked against the bundle's target.

    Raises:
        LocalRunnerError: it does not run as Python.
        HostMismatchError: its version, implementation or ABI (or machine) does not fit.
    """
    facts = probe_interpreter_facts(python)
    require(manifest, facts, subject=f"--python {python}", doing="serve")
    assert facts.python is not None  # the probe always reports it
    implementation = {"cp": "cpython", "pp": "pypy"}.get(manifest.target.implementation, "")
    return Interpreter(Path(facts.executable or python), implementation, facts.python)


def image_facts(engine: Engine, image: str) -> HostFacts:
    """What ``image``'s ``python3`` reports, run in a throwaway container with no network.

    ``python3`` is what the image runs the scoring server with (its ENTRYPOINT).

    Raises:
        ImageBuildError: the container could not run the probe (no python3, wrong
            architecture for the engine, ...).
    """
    code, output = engine.run_once(image, ["python3", "-I", "-B", "-c", PROBE], timeout=_TIMEOUT)
    try:
        if code != 0:
            raise ValueError(f"exit status {code}")
        return parse_probe(output)
    except ValueError as e:
        os_arch = engine.platform()
        tail = " | ".join(output.strip().splitlines()[-3:]) or "no output"
        raise ImageBuildError(
            f"cannot ask the base image {image} for its Python on this {os_arch} engine "
            f"(python3 -c ...: {e}: {tail})",
            remedy="the base image must have python3 on PATH for the engine's architecture "
            "(its ENTRYPOINT runs python3 -m airgap_runtime)",
        ) from e


def engine_facts(engine: Engine) -> HostFacts:
    """The engine's operating system and architecture (``docker info``), no libc or Python."""
    os_arch = engine.platform()
    system, _, machine = os_arch.partition("/")
    return HostFacts(normalise_machine(machine), system, None, None)


__all__ = [
    "PROBE",
    "engine_facts",
    "image_facts",
    "interpreter_at",
    "parse_probe",
    "probe_interpreter_facts",
    "this_host",
]
