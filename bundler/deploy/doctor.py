"""`airgap doctor`: check a host against an unpacked DEST or a bundle, each check ok/warn/fail.

Every probe is a small function returning one :class:`Check`; :func:`diagnose` runs them in
order and never raises for a failed check (that is a ``fail`` line). Only reading: nothing is
written, no engine state changes, the port is bound and released at once.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import BundleError
from ..formats.delta import DeltaDescriptor, is_delta
from ..formats.manifest import Manifest
from ..inspecting import read_manifest_unverified, read_unverified
from ..interpreters import find_python
from ..layout import STATE_MANIFEST
from ..preflight import Free, delta_need, free_space, human, shortfall, unpack_need
from ..verify.delta import require_base, verify_delta
from ..verify.tree import check_unpacked
from ..verify.unpack import open_verified, read_installed
from .engine import Engine
from .hostcheck import check as host_problems
from .hostcheck import mismatch
from .hostprobe import this_host

Status = Literal["ok", "warn", "fail"]
Kind = Literal["dest", "bundle", "delta"]


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, its verdict and a one-line detail."""

    name: str  # manifest, space, noexec, host, python, docker, port
    status: Status
    detail: str
    data: dict[str, Any] = field(default_factory=dict)  # machine-readable facts (--json)

    def to_json_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail, **self.data}


@dataclass(frozen=True)
class Report:
    """Every check for one DEST or bundle; ``ok`` unless some check failed."""

    subject: str
    kind: Kind
    manifest: Manifest | None
    verified: bool
    checks: tuple[Check, ...]
    delta: DeltaDescriptor | None = None  # for a delta: what it needs (NOT verified unless
    # ``verified``)

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def to_json_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "ok": self.ok,
            "subject": self.subject,
            "kind": self.kind,
            "name": m.name if m else None,
            "version": m.version if m else None,
            "verified": self.verified,
            "base": None if self.delta is None else _base_json(self.delta),
            "checks": [c.to_json_dict() for c in self.checks],
        }


def _base_json(d: DeltaDescriptor) -> dict[str, str]:
    return {
        "name": d.base.name,
        "version": d.base.version,
        "manifest_sha256": d.base.manifest_sha256,
    }


EngineFactory = Callable[[], Engine]


def _default_engine() -> Engine:
    from .engine import DockerEngine

    return DockerEngine.connect(timeout=5)


def diagnose(
    path: Path,
    *,
    trust: Sequence[Path] = (),
    port: int = 5001,
    host: str = "127.0.0.1",
    dest: Path | None = None,
    engine: EngineFactory = _default_engine,
) -> Report:
    """Check this host for ``path``: an unpacked DEST (a folder), a bundle or a delta (a file).

    For a bundle, ``dest`` is where it would be unpacked (default: a new folder in the
    current one);
    with ``trust`` the bundle is fully verified first, else its manifest is read unverified.
    For a delta, a ``base`` check says which base it needs and whether ``dest`` holds it
    (by its stored manifest; the files are re-checked when the delta is applied), and the
    space check counts what applying it writes.
    """
    path = Path(os.path.abspath(path))
    # Anything that exists and is not a folder is a BUNDLE: a FIFO or device is then refused
    # by open_bundle with its kind, rather than described as a DEST.
    kind: Kind = "bundle" if path.exists() and not path.is_dir() else "dest"
    if kind == "bundle" and _is_delta(path):
        kind = "delta"
    descriptor: DeltaDescriptor | None = None
    if kind == "delta":
        manifest_check, manifest, manifest_len, descriptor = _delta_manifest(path, trust)
    elif kind == "bundle":
        manifest_check, manifest, manifest_len = _bundle_manifest(path, trust)
    else:
        manifest_check, manifest, manifest_len = _dest_manifest(path, trust)
    checks = [manifest_check]
    base: Manifest | None = None
    if descriptor is not None:
        base_check, base = _base(descriptor, dest)
        checks.append(base_check)
    # The stage is made in DEST's parent: for a bundle that is --dest's parent, or the
    # current folder when DEST would be a new folder in it.
    if kind == "dest":
        where = path
    elif dest is not None:
        where = Path(os.path.abspath(dest)).parent
    else:
        where = Path.cwd()
    checks += _space_and_mount(where, kind, manifest, manifest_len, _Delta(descriptor, base))
    docker = _docker(engine)
    if manifest is not None:
        checks.append(_host(manifest))
        checks.append(_python(manifest, docker_ok=docker.status == "ok"))
    checks.append(docker)
    checks.append(_port(host, port))
    return Report(
        subject=str(path),
        kind=kind,
        manifest=manifest,
        verified=manifest_check.status == "ok",
        checks=tuple(checks),
        delta=descriptor,
    )


def _is_delta(path: Path) -> bool:
    try:
        return is_delta(path)
    except BundleError:
        return False  # unreadable: the manifest check names why


def _delta_manifest(
    delta: Path, trust: Sequence[Path]
) -> tuple[Check, Manifest | None, int, DeltaDescriptor | None]:
    """The delta's manifest and descriptor: verified with ``trust`` (every check that needs
    no DEST, as `airgap verify` makes), else read unverified."""
    try:
        if trust:
            v = verify_delta(delta, trust)
            d = v.descriptor
            detail = (
                f"delta {d.name} {d.base.version} -> {d.version}: signatures, descriptor and "
                f"{d.payload.file_count} carried files verify with {v.key.source}"
            )
            return (
                Check("manifest", "ok", detail, {"verified": True}),
                v.manifest,
                len(v.manifest_bytes),
                d,
            )
        m, _present, descriptor = read_unverified(delta)
    except BundleError as e:
        return Check("manifest", "fail", e.diagnostics(), {"verified": False}), None, 0, None
    assert descriptor is not None  # _is_delta said its first member is delta.json
    detail = (
        f"delta {m.name} {descriptor.base.version} -> {m.version}: not verified (pass --trust "
        "KEY to check the signatures)"
    )
    return Check("manifest", "warn", detail, {"verified": False}), m, len(m.to_bytes()), descriptor


def _base(d: DeltaDescriptor, dest: Path | None) -> tuple[Check, Manifest | None]:
    """Which base the delta needs, and whether ``dest`` holds it (its stored manifest)."""
    needs = f"needs {d.base.name} {d.base.version} (manifest sha256 {d.base.manifest_sha256})"
    data: dict[str, Any] = {"needs": _base_json(d), "dest": None if dest is None else str(dest)}
    if dest is None:
        return Check("base", "warn", f"{needs}; pass --dest DIR to check a DEST", data), None
    dest = Path(os.path.abspath(dest))
    try:
        installed = read_installed(dest) if dest.is_dir() else None
        require_base(dest, installed, d)
    except BundleError as e:
        return Check("base", "fail", e.diagnostics(), {**data, "holds": False}), None
    assert installed is not None  # require_base refused otherwise
    detail = (
        f"{dest} holds the base {d.base.name} {d.base.version} (manifest sha256 "
        f"{d.base.manifest_sha256[:16]}...; its files are re-checked when the delta is applied)"
    )
    return Check("base", "ok", detail, {**data, "holds": True}), installed


@dataclass(frozen=True)
class _Delta:
    """For the space check of a delta: its descriptor, and DEST's manifest when it is the
    base (only then is what applying writes known)."""

    descriptor: DeltaDescriptor | None = None
    base: Manifest | None = None


def _bundle_manifest(bundle: Path, trust: Sequence[Path]) -> tuple[Check, Manifest | None, int]:
    try:
        if trust:
            v = open_verified(bundle, trust)
            return (
                Check(
                    "manifest",
                    "ok",
                    f"{v.manifest.name} {v.manifest.version}: signature and payload hash verify "
                    f"with {v.key.source}",
                    {"verified": True},
                ),
                v.manifest,
                len(v.manifest_bytes),
            )
        m = read_manifest_unverified(bundle)
    except BundleError as e:
        return Check("manifest", "fail", e.diagnostics(), {"verified": False}), None, 0
    return (
        Check(
            "manifest",
            "warn",
            f"{m.name} {m.version}: not verified (pass --trust KEY to check the signature)",
            {"verified": False},
        ),
        m,
        len(m.to_bytes()),
    )


def _dest_manifest(dest: Path, trust: Sequence[Path]) -> tuple[Check, Manifest | None, int]:
    try:
        m = check_unpacked(dest, trust=list(trust) or None, roots=())
    except BundleError as e:
        return Check("manifest", "fail", e.diagnostics(), {"verified": False}), None, 0
    key = ", ".join(map(str, trust)) if trust else "the key that verified it at unpack"
    try:
        size = (dest / STATE_MANIFEST).stat().st_size
    except OSError:
        size = len(m.to_bytes())
    return (
        Check(
            "manifest",
            "ok",
            f"{m.name} {m.version}: stored manifest verifies with {key}",
            {"verified": True},
        ),
        m,
        size,
    )


def _size(n: int) -> str:
    """``77.1 GiB``: the rounded part of preflight.human, for a one-line detail."""
    return human(n).split("(", 1)[-1].rstrip(")")


def _existing(path: Path) -> Path:
    # A DEST or --dest that does not exist yet lands on its nearest existing ancestor's fs.
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _space_and_mount(
    where: Path, kind: Kind, manifest: Manifest | None, manifest_len: int, delta: _Delta
) -> list[Check]:
    probe = _existing(where)
    try:
        free = free_space(probe)
    except OSError as e:
        return [Check("space", "fail", f"cannot ask {probe} for its free space ({e.strerror})")]
    return [_space(probe, kind, manifest, manifest_len, free, delta), _noexec(probe, free)]


def _space(
    probe: Path,
    kind: Kind,
    manifest: Manifest | None,
    manifest_len: int,
    free: Free,
    delta: _Delta,
) -> Check:
    data: dict[str, Any] = {
        "path": str(probe),
        "free_bytes": free.bytes,
        "free_inodes": free.inodes,
    }
    if manifest is None:
        return Check("space", "warn", f"{_size(free.bytes)} free on {probe}", data)
    doing = "unpack"
    if delta.descriptor is not None:
        if delta.base is None:
            # What applying writes depends on the base's files: unknown without it.
            detail = (
                f"{_size(free.bytes)} free on {probe}; the need is known once DEST holds the base"
            )
            return Check("space", "warn", detail, data)
        carried = set(delta.descriptor.carried)
        need = delta_need(manifest, carried, delta.base, manifest_len, free.block_size)
        doing = "apply the delta"
    else:
        need = unpack_need(manifest, manifest_len, free.block_size)
    data |= {"needed_bytes": need.bytes, "needed_inodes": need.inodes}
    short = shortfall(need, free)
    if short is None:
        detail = f"{_size(free.bytes)} free on {probe}, {_size(need.bytes)} needed to {doing}"
        return Check("space", "ok", detail, data)
    if kind != "dest":
        return Check("space", "fail", f"{doing} would be refused on {probe}: {short}", data)
    # DEST is unpacked already: only a later update of the same size is at stake.
    return Check("space", "warn", f"an update of this size would not fit on {probe}: {short}", data)


def _noexec(probe: Path, free: Free) -> Check:
    data = {"path": str(probe), "noexec": free.noexec}
    if free.noexec:
        return Check(
            "noexec",
            "fail",
            f"{probe} is on a noexec mount: compiled extensions (.so) cannot be loaded from it "
            "and prefix/bin scripts cannot run; unpack to a filesystem mounted with exec",
            data,
        )
    return Check("noexec", "ok", f"{probe} allows executables", data)


def _host(manifest: Manifest) -> Check:
    try:
        facts = this_host()
    except BundleError as e:
        return Check("host", "fail", e.diagnostics())
    problems = host_problems(manifest.target, facts)
    data = {"host": facts.describe(), "problems": [p.text for p in problems]}
    if not problems:
        return Check("host", "ok", f"this host ({facts.describe()}) fits the bundle's target", data)
    error = mismatch(manifest, facts, problems, subject="this host", doing="serve")
    if manifest.base_image is not None:
        # The Docker path may still serve it: `build` checks the base image instead.
        return Check("host", "warn", error.message + " (the Docker path may still fit)", data)
    return Check("host", "fail", error.message, data)


def _python(manifest: Manifest, *, docker_ok: bool) -> Check:
    want = f"{manifest.target.implementation}{manifest.target.python}"
    try:
        found = find_python(manifest.target.python, manifest.target.implementation)
    except BundleError as e:
        # No Python for `airgap serve`; fatal only when the Docker path cannot help either.
        status: Status = "warn" if docker_ok and manifest.base_image is not None else "fail"
        return Check("python", status, e.message, {"wanted": want, "path": None})
    return Check(
        "python",
        "ok",
        f"{found.path} (Python {found.version}) for the local runner",
        {"wanted": want, "path": str(found.path), "version": found.version},
    )


def _docker(engine: EngineFactory) -> Check:
    try:
        eng = engine()
        version = eng.server_version()
        root = eng.data_root()
    except BundleError as e:
        return Check("docker", "warn", e.message + " (only `airgap serve` can run bundles here)")
    data: dict[str, Any] = {"version": version, "data_root": root}
    detail = f"engine {version}"
    if root is not None and Path(root).is_dir():
        try:
            free = free_space(Path(root)).bytes
            data["data_root_free_bytes"] = free
            detail += f", data root {root} ({_size(free)} free)"
        except OSError:
            detail += f", data root {root}"
    elif root is None:
        detail += " (not on this machine: its free space is not checked)"
    return Check("docker", "ok", detail, data)


def _port(host: str, port: int) -> Check:
    data = {"host": host, "port": port}
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            # The server sets SO_REUSEADDR too: a port in TIME_WAIT is free for it.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return Check("port", "fail", f"{host}:{port} is in use; pass --port another", data)
        return Check("port", "fail", f"cannot listen on {host}:{port} ({e.strerror})", data)
    return Check("port", "ok", f"{host}:{port} is free", data)
