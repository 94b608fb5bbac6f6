"""The local runner: serve a verified, unpacked bundle from a cached, isolated virtualenv.

The same runtime as the image (``runtime/airgap_runtime``) runs from a virtualenv made once
in DEST/.airgap/venv from a host interpreter of the bundle's Python version. Only the bundle's
own trees are on its path: nothing from the host's site-packages, user site or PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Final

from ..errors import LocalRunnerError
from ..formats.manifest import Manifest
from ..formats.source import open_regular, read_regular
from ..interpreters import Interpreter, find_python, probe_interpreter
from ..layout import (
    APP_DIR,
    MODEL_DIR,
    PREFIX_DIR,
    RUNTIME_DIR,
    RUNTIME_LIB,
    RUNTIME_PACKAGE,
    SCORING_PORT,
    SITE_DIR,
    STATE_VENV,
    WHEELS_DIR,
    WHEELS_REQUIREMENTS,
)
from ..verify.tree import check_unpacked
from .authkeys import check_key_file
from .hostcheck import require as require_host
from .hostprobe import interpreter_at, this_host

DEFAULT_HOST: Final = "127.0.0.1"  # local serving stays on this machine unless asked
VENV_MARKER: Final = "airgap-venv.json"
VENV_FORMAT: Final = 1
# What `serve` re-checks before every start; docker/ (a base image tar can be gigabytes) is
# never executed by the local runner, so it is not hashed again here.
SERVE_ROOTS: Final = frozenset({APP_DIR, MODEL_DIR, SITE_DIR, PREFIX_DIR, WHEELS_DIR, RUNTIME_DIR})
# Environment variables the runner always sets itself; the host's values never pass through.
_RUNNER_OWNED: Final = frozenset(
    {
        "AZUREML_ENTRY_SCRIPT",
        "AZUREML_MODEL_DIR",
        "AZUREML_EXTRA_PYTHON_LIB_PATH",
        "AZUREML_EXTRA_REQUIREMENTS_TXT",
        "AIRGAP_HOST",
        "AIRGAP_PORT",
        "AIRGAP_PREFIX",
        "AIRGAP_SITE_DIRS",
        "AIRGAP_PYTHON",
        "AIRGAP_TLS_CERT",
        "AIRGAP_TLS_KEY",
        "AIRGAP_PARENT_PID",
        "VIRTUAL_ENV",
        "CONDA_PREFIX",
        "CONDA_DEFAULT_ENV",
        "__PYVENV_LAUNCHER__",
    }
)
# Prefixes of variables that change what Python or pip load: PYTHONPATH, PYTHONHOME,
# PYTHONSTARTUP, PIP_FIND_LINKS, PIP_CONFIG_FILE ... all dropped, then set by us.
_DROPPED_PREFIXES: Final = ("PYTHON", "PIP_")


# ---- the cached virtualenv -------------------------------------------------------------


def _marker(interpreter: Interpreter, with_pip: bool) -> dict[str, object]:
    return {
        "format": VENV_FORMAT,
        "python": interpreter.version,
        "base": str(interpreter.path),
        "pip": with_pip,
    }


def _venv_digest(venv: Path) -> str | None:
    """sha256 over every entry of the venv: its path, kind, and content or link target.

    The venv is not part of the signed payload, yet every start runs it: the marker records
    this digest when the venv is made, so a planted ``.pth``, a swapped interpreter link or a
    package installed into it afterwards makes it be made again instead of run. None when
    ``venv`` is not a real folder, or when an entry is owned by another user (not us, not
    root) or writable by group or others: someone else could then have changed the venv and
    its marker together.
    """
    owners = {os.geteuid(), 0}
    digest = hashlib.sha256()
    try:
        if not stat.S_ISDIR(venv.lstat().st_mode):
            return None
        paths = [venv]
        for dirpath, dirnames, filenames in os.walk(venv):  # does not follow links
            dirnames.sort()
            paths.extend(Path(dirpath, name) for name in sorted(dirnames + filenames))
        for path in paths:
            st = path.lstat()
            if st.st_uid not in owners or (st.st_mode & 0o022 and not stat.S_ISLNK(st.st_mode)):
                return None
            rel = os.fsencode(path.relative_to(venv))
            if stat.S_ISLNK(st.st_mode):
                digest.update(b"link %s %s\0" % (rel, os.fsencode(os.readlink(path))))
            elif stat.S_ISDIR(st.st_mode):
                digest.update(b"dir %s\0" % rel)
            elif not stat.S_ISREG(st.st_mode):
                return None
            elif path != venv / VENV_MARKER:
                # open_regular: a file swapped for a FIFO after the lstat cannot block here.
                with open_regular(path, lambda reason: LocalRunnerError(reason)) as f:
                    content = hashlib.file_digest(f, "sha256").hexdigest()
                digest.update(b"file %s %s\0" % (rel, content.encode()))
    except (OSError, LocalRunnerError):  # unreadable, or no longer a regular file
        return None
    return digest.hexdigest()


def _venv_usable(venv: Path, want: dict[str, object]) -> bool:
    try:
        # A FIFO planted as the marker must not hang `serve`: regular files only; anything
        # else means the venv is made again.
        marker = read_regular(venv / VENV_MARKER, lambda reason: LocalRunnerError(reason), 1 << 20)
        have = json.loads(marker)
    except (OSError, ValueError, LocalRunnerError):
        return False
    if not isinstance(have, dict):
        return False
    tree = have.pop("tree", None)
    if have != want or tree is None or tree != _venv_digest(venv):
        return False
    # Only now that the venv is the one made here: this runs its interpreter.
    found = probe_interpreter(venv / "bin" / "python")
    return found is not None and found.version == want["python"]


_VENV_STAGE: Final = "venv.stage-"
# Making a virtualenv takes seconds; a stage this old was left by a killed `serve`.
_STALE_STAGE_SECONDS: Final = 600


def clean_stale_venv_stages(state_dir: Path, *, now: float | None = None) -> list[Path]:
    """Remove venv stages a killed run left behind; a stage still being built is kept.

    Returns:
        The stages removed.
    """
    now = time.time() if now is None else now
    removed = []
    for stage in state_dir.glob(_VENV_STAGE + "*"):
        try:
            if now - stage.lstat().st_mtime > _STALE_STAGE_SECONDS:
                _discard(stage)
                removed.append(stage)
        except OSError:
            continue  # gone already, or not ours to remove: the next run tries again
    return removed


def _discard(path: Path) -> None:
    """Remove whatever is at ``path``; a link is removed, never followed."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def ensure_venv(state_dir: Path, interpreter: Interpreter, *, with_pip: bool = False) -> Path:
    """The cached virtualenv's python under ``state_dir`` (DEST/.airgap), made once, offline.

    It is built in a staging folder beside its final place and renamed in, so a killed run
    never leaves a half-made environment that later runs would trust. ``with_pip`` seeds pip
    from virtualenv's embedded wheels (no download), for bundles that install wheels at start.

    A cached venv is reused only while it is exactly as made (see ``_venv_digest``);
    otherwise, or when it is a link, it is replaced.

    Raises:
        LocalRunnerError: virtualenv failed, or ``state_dir`` cannot be written.
    """
    venv = state_dir / Path(STATE_VENV).name
    want = _marker(interpreter, with_pip)
    if _venv_usable(venv, want):
        return venv / "bin" / "python"
    clean_stale_venv_stages(state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=_VENV_STAGE, dir=state_dir))
    except OSError as e:
        raise LocalRunnerError(
            f"cannot make the virtualenv under {state_dir}: {e.strerror}",
            remedy="serve as a user who can write there (the one who unpacked it), or unpack "
            "into a folder of your own",
        ) from e
    try:
        built = stage / "venv"
        seed = (
            ["--seeder", "app-data", "--no-download", "--no-setuptools"]
            if with_pip
            else ["--no-seed"]
        )
        cmd = [
            sys.executable,
            "-m",
            "virtualenv",
            *seed,
            "--python",
            str(interpreter.path),
            "--activators",
            "",
            "--no-periodic-update",
            "--app-data",
            str(stage / "app-data"),
            "--quiet",
            str(built),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED_PREFIXES)}
        env["VIRTUALENV_NO_DOWNLOAD"] = "1"
        try:
            # umask 022: nothing in the venv may be writable by others, or it is not reused.
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env=env, check=False, umask=0o022
            )
        except OSError as e:
            raise LocalRunnerError(
                f"cannot run virtualenv: {e}", remedy="reinstall airgap-bundler"
            ) from e
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise LocalRunnerError(
                f"creating the virtualenv with {interpreter.path} failed: " + " | ".join(detail),
                remedy="check that this Python runs and has its standard library",
            )
        marker = built / VENV_MARKER
        marker.write_text(json.dumps({**want, "tree": _venv_digest(built)}, sort_keys=True) + "\n")
        os.chmod(marker, 0o644)
        try:
            _discard(venv)
            os.replace(built, venv)
        except OSError:
            # Another `serve` of the same DEST won the race: use its environment if good.
            if not _venv_usable(venv, want):
                raise LocalRunnerError(
                    f"cannot install the virtualenv at {venv}",
                    remedy=f"remove {venv} and try again",
                ) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return venv / "bin" / "python"


# ---- the server's environment and command ----------------------------------------------


def scoring_environment(
    dest: Path, manifest: Manifest, host_env: Mapping[str, str]
) -> dict[str, str]:
    """The scoring process's environment (pure).

    Precedence, lowest first: the host's environment (tunables such as WORKER_COUNT pass
    through), the bundle's ``env`` for names the host does not set, then the runner's own
    paths. Every PYTHON* and PIP_* variable is dropped and replaced by ours.
    """

    def keep(name: str) -> bool:
        return name not in _RUNNER_OWNED and not name.startswith(_DROPPED_PREFIXES)

    env = {k: v for k, v in host_env.items() if keep(k)}
    for name, value in manifest.env.items():
        if keep(name) and name not in env:
            env[name] = value
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(dest / RUNTIME_DIR), str(dest / RUNTIME_LIB)]),
            "PYTHONNOUSERSITE": "1",
            # The verified tree must stay byte-identical: no __pycache__ written into it.
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONSAFEPATH": "1",  # 3.11+: the working folder is not put on sys.path
            "PYTHONUNBUFFERED": "1",
            # Host pip configuration (index URLs, find-links) must not reach an offline install.
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_NO_INDEX": "1",
            "AZUREML_ENTRY_SCRIPT": str(dest / manifest.entry_script),
            "AZUREML_MODEL_DIR": str(dest / MODEL_DIR),
        }
    )
    if manifest.mode == "dynamic":
        env["AZUREML_EXTRA_REQUIREMENTS_TXT"] = str(dest / WHEELS_REQUIREMENTS)
    else:
        tops = {f.path.split("/", 1)[0] for f in manifest.files}
        # A project with no packages has no site-packages/ at all (nothing to put on the path).
        if SITE_DIR in tops:
            env["AZUREML_EXTRA_PYTHON_LIB_PATH"] = str(dest / SITE_DIR)
        if PREFIX_DIR in tops:
            env["AIRGAP_PREFIX"] = str(dest / PREFIX_DIR)
    return env


def server_command(python: Path, host: str, port: int) -> list[str]:
    """The runtime's command line in the virtualenv."""
    return [str(python), "-m", RUNTIME_PACKAGE, "--host", host, "--port", str(port)]


def client_host(host: str) -> str:
    """The address a client on this machine uses to reach a server bound to ``host``: a
    wildcard becomes loopback, and an IPv6 address gets its URL brackets."""
    if host in ("0.0.0.0", ""):  # noqa: S104 - comparing, not binding
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


# ---- the server process ----------------------------------------------------------------

_PR_SET_PDEATHSIG: Final = 1  # <linux/prctl.h>


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` (Linux): the child gets SIGTERM, a graceful stop, when the thread
    that started it dies, SIGKILL of this process included. Exits at once if ``parent`` is
    already gone (it died between fork and prctl)."""

    def preexec() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # not Linux: the runtime's own parent watch (AIRGAP_PARENT_PID) remains
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class LocalServer:
    """One scoring server for an unpacked DEST, as a child process.

    ``start()`` re-verifies DEST against its signed manifest, makes (or reuses) the
    virtualenv and starts the runtime; ``wait_healthy()`` returns once ``GET /`` answers
    (after init() has run); ``stop()`` ends it gracefully (SIGTERM). Also a context manager
    that starts, waits until healthy, and stops::

        with LocalServer(dest, port=5001) as server:
            requests.post(server.url + "/score", json=...)

    ``log`` is a file for the server's output (default: this process's stderr).
    """

    def __init__(
        self,
        dest: Path,
        *,
        port: int = SCORING_PORT,
        host: str = DEFAULT_HOST,
        trust: Sequence[Path] | None = None,
        policy: Path | None = None,
        log: Path | None = None,
        environ: Mapping[str, str] | None = None,
        python: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        auth_key_file: Path | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self.dest = Path(os.path.abspath(dest))
        if (tls_cert is None) != (tls_key is None):
            raise LocalRunnerError(
                "TLS needs both a certificate and its key", remedy="pass --tls-cert and --tls-key"
            )
        self.tls_cert = Path(os.path.abspath(tls_cert)) if tls_cert else None
        self.tls_key = Path(os.path.abspath(tls_key)) if tls_key else None
        # Checked before any venv work; only the path reaches the server (never the key).
        self.auth_key_file = check_key_file(auth_key_file) if auth_key_file else None
        self.metrics_port = metrics_port
        self.python = python  # None: search the host for the target's Python
        self.port = port
        self.host = host
        self.trust = list(trust) if trust else None
        self.policy = policy  # a trust policy file: replaces trust for the re-check
        self.log = log
        self._environ = dict(os.environ if environ is None else environ)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self.manifest: Manifest | None = None

    @property
    def url(self) -> str:
        """Base URL to reach the server from this machine, e.g. http://127.0.0.1:5001."""
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{client_host(self.host)}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def prepare(self) -> tuple[list[str], dict[str, str]]:
        """Verify DEST, find the Python, make the virtualenv; return (command, environment).

        Raises:
            TreeModifiedError and other BundleRejected: DEST does not match its manifest.
            BundleError: DEST is not an unpacked bundle.
            HostMismatchError: this host, or ``python``, does not fit the bundle's target.
            LocalRunnerError: no matching Python, or the virtualenv cannot be made.
        """
        manifest = check_unpacked(
            self.dest, trust=self.trust, roots=SERVE_ROOTS, policy=self.policy
        )
        self.manifest = manifest
        # Before any venv work: a bundle for another machine fails here, in one line.
        require_host(manifest, this_host(), subject="this host", doing="serve")
        if self.python is not None:
            interpreter = interpreter_at(self.python, manifest)
        else:
            interpreter = find_python(manifest.target.python, manifest.target.implementation)
        python = ensure_venv(
            self.dest / Path(STATE_VENV).parent, interpreter, with_pip=manifest.mode == "dynamic"
        )
        env = scoring_environment(self.dest, manifest, self._environ)
        if self.tls_cert is not None and self.tls_key is not None:
            for path in (self.tls_cert, self.tls_key):
                if not path.is_file():
                    raise LocalRunnerError(
                        f"no such file: {path}", remedy="check --tls-cert/--tls-key"
                    )
            env["AIRGAP_TLS_CERT"] = str(self.tls_cert)
            env["AIRGAP_TLS_KEY"] = str(self.tls_key)
        # The runtime's master watches this pid and stops when it is gone (runtime/server.py).
        env["AIRGAP_PARENT_PID"] = str(os.getpid())
        if self.auth_key_file is not None:
            env["AIRGAP_AUTH_KEY_FILE"] = str(self.auth_key_file)
        if self.metrics_port is not None:
            env["AIRGAP_METRICS_PORT"] = str(self.metrics_port)
        return server_command(python, self.host, self.port), env

    def start(self) -> None:
        """Start the server in the background (see ``prepare`` for what can fail)."""
        if self._proc is not None and self._proc.poll() is None:
            raise LocalRunnerError("this server is already running", remedy="stop() it first")
        cmd, env = self.prepare()
        out: IO[bytes] | None = None
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            out = self._log_file = self.log.open("ab")
        # Death signal from the thread that forks: only the main thread lives as long as we do.
        in_main = threading.current_thread() is threading.main_thread()
        try:
            # Own session: a terminal's Ctrl-C reaches only us, and we stop the server
            # gracefully; the process group lets stop() end stuck workers too.
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.dest / APP_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                # Both streams are the server's log; without a log file they go to our
                # stderr, so our stdout stays clean for `--json` output.
                stdout=out if out is not None else 2,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()) if in_main else None,
            )
        except OSError as e:
            self._close_log()
            raise LocalRunnerError(
                f"cannot start the scoring server: {e}", remedy=f"remove {self.dest / STATE_VENV}"
            ) from e

    def _log_tail(self, lines: int = 25) -> str:
        if self.log is None:
            return "see the server's output above"
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"see {self.log}"
        return "server log:\n" + "\n".join(text)

    def wait_healthy(self, timeout: float = 120.0) -> None:
        """Block until ``GET /`` answers ``Healthy``.

        Raises:
            LocalRunnerError: the server exited (e.g. init() failed) or did not answer in time.
        """
        proc = self._require()
        deadline = time.monotonic() + timeout
        while True:
            code = proc.poll()
            if code is not None:
                raise LocalRunnerError(
                    f"the scoring server exited with status {code} before it was healthy; "
                    + self._log_tail(),
                    remedy="fix the error shown (often init() in the entry script)",
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise LocalRunnerError(
                    f"the scoring server did not answer on {self.url}/ within {timeout:.0f}s; "
                    + self._log_tail(),
                    remedy="check that the port is free and init() finishes",
                )
            try:
                with urllib.request.urlopen(  # noqa: S310 - our own http(s):// URL
                    self.url + "/", timeout=min(left, 5.0), context=self._probe_context()
                ) as resp:
                    if resp.status == 200 and resp.read() == b"Healthy":
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)

    def _probe_context(self) -> ssl.SSLContext | None:
        """For the health probe over TLS: our own child on this host, and the probe sends
        nothing secret, so the certificate (often for another name) is not verified."""
        if self.tls_cert is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the server to exit on its own; return its exit status."""
        proc = self._require()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired as e:
            raise LocalRunnerError(f"the scoring server is still running after {timeout}s") from e

    def stop(self, timeout: float = 40.0) -> int | None:
        """Stop gracefully (SIGTERM: running requests finish), then force after ``timeout``."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # Only the group this runner created: the master and its workers.
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._close_log()
        return proc.returncode

    def kill(self, grace: float = 3.0) -> int | None:
        """Stop now: gunicorn's quick shutdown (SIGINT), then SIGKILL to the whole group
        after ``grace`` seconds. Running requests are cut off."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)  # workers left by a stuck master, too
        proc.wait()
        self._close_log()
        return proc.returncode

    def _require(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise LocalRunnerError("the server was not started", remedy="call start() first")
        return self._proc

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> LocalServer:
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _StopRequested(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived while serving in the foreground."""


# SIGHUP (a closed terminal, a dropped SSH session) stops like SIGTERM: never a reload.
_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class _SignalGuard:
    """Turns SIGINT, SIGTERM and SIGHUP into an exception while the foreground server runs.

    Set explicitly rather than relying on Python's default: a shell starts background jobs
    with SIGINT ignored, and then Ctrl-C-like stops would never reach us. Restored on exit.
    """

    previous: dict[int, object] = field(default_factory=dict)

    def _raise(self, signum: int, frame: FrameType | None) -> None:
        raise _StopRequested

    def __enter__(self) -> _SignalGuard:
        for sig in _STOP_SIGNALS:
            self.previous[sig] = signal.signal(sig, self._raise)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def serve(
    dest: Path,
    *,
    port: int = SCORING_PORT,
    host: str = DEFAULT_HOST,
    trust: Sequence[Path] | None = None,
    policy: Path | None = None,
    on_ready: Callable[[str], None] | None = None,
    ready_timeout: float = 120.0,
    python: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    auth_key_file: Path | None = None,
    metrics_port: int | None = None,
) -> None:
    """Serve DEST in the foreground until SIGINT (Ctrl-C), SIGTERM or SIGHUP, then stop
    gracefully; a second such signal during the stop forces it (KeyboardInterrupt).

    ``on_ready(url)`` is called once the server answers. ``python`` is the interpreter to
    make the venv from (checked against the target) instead of searching the host.
    ``auth_key_file`` turns on key auth, ``metrics_port`` the metrics port. ``policy`` is
    a trust policy file the stored signatures must meet again (instead of ``trust``). Used by
    `airgap serve` and `airgap run --local`; must run in the main thread (it handles SIGTERM).

    Raises:
        TreeModifiedError, BundleError: DEST is not a verified unpacked bundle.
        HostMismatchError: this host or ``python`` does not fit the bundle's target.
        LocalRunnerError: no matching Python, the environment or server failed, or the
            server exited on its own with a non-zero status.
        KeyboardInterrupt: a second stop signal forced the stop (the server is gone).
        AuthKeyFileError: the key file cannot be used (nothing was started).
    """
    server = LocalServer(
        dest,
        port=port,
        host=host,
        trust=trust,
        policy=policy,
        python=python,
        tls_cert=tls_cert,
        tls_key=tls_key,
        auth_key_file=auth_key_file,
        metrics_port=metrics_port,
    )
    with _SignalGuard():
        try:
            server.start()
            server.wait_healthy(ready_timeout)
            if on_ready is not None:
                on_ready(server.url)
            code = server.wait()
        except (KeyboardInterrupt, _StopRequested):
            _stop_or_force(server)
            return
        except BaseException:
            server.stop()
            raise
    if code != 0:
        raise LocalRunnerError(
            f"the scoring server exited with status {code}",
            remedy="see its log above",
        )


def _stop_or_force(server: LocalServer) -> None:
    """Graceful stop; a second SIGINT/SIGTERM/SIGHUP meanwhile forces it and raises
    KeyboardInterrupt (the CLI prints "interrupted" and exits 130, no traceback)."""
    try:
        server.stop()
    except (KeyboardInterrupt, _StopRequested):
        for sig in _STOP_SIGNALS:  # a third press must not interrupt the forced stop
            signal.signal(sig, signal.SIG_IGN)
        server.kill()
        raise KeyboardInterrupt from None


__all__ = [
    "DEFAULT_HOST",
    "Interpreter",
    "LocalServer",
    "ensure_venv",
    "find_python",
    "scoring_environment",
    "serve",
    "server_command",
]
