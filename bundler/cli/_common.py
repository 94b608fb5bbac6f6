"""What every command shares: the error funnel, JSON output, common options, progress, the
summary of a manifest, and the `airgap` group itself."""

from __future__ import annotations

import datetime
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from ..errors import BundleError, UsageError, escape
from ..formats.manifest import Manifest
from ..progress import NullProgress, Progress
from ..verify.policy import Verified

P = ParamSpec("P")
R = TypeVar("R")


def funnel(fn: Callable[P, R]) -> Callable[P, R]:
    """The one place an expected failure becomes a message and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except BundleError as e:
            ctx = click.get_current_context(silent=True)
            as_json = bool(ctx and ctx.params.get("as_json"))
            if as_json:
                click.echo(
                    json.dumps({"ok": False, "error": e.diagnostics(), "exit_code": e.exit_code})
                )
            click.echo(e.diagnostics(), err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def emit_json(data: Any) -> None:
    """Print one JSON document for automation (`--json`)."""
    click.echo(json.dumps(data, indent=2, sort_keys=True))


# Options and arguments several commands share.
_TRUST_HELP = "Trusted public key file, or a folder of *.pub / *.pem keys (repeatable)."
RECHECK_HELP = (
    "Re-check DEST against this trusted key (repeatable; default: the key that verified it "
    "at unpack)."
)
_POLICY_HELP = (
    "Trust policy file (TOML or .json): which keys count and how many distinct ones a bundle "
    "needs, per name (docs/format.md §6.2). Replaces --trust."
)
_SIGNATURES_HELP = (
    "Detached co-signature file from `airgap sign --detached` (repeatable; default: "
    "BUNDLE.sig when it exists)."
)


def trust_options(
    trust_help: str = _TRUST_HELP + " Or --policy.",
    *,
    required: bool = False,
    policy: bool = False,
    signatures: bool = False,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """The trust options of one command, declared once for all: ``--trust`` (repeatable,
    ``AIRGAP_TRUST``; ``trust_help`` says what it does there), then ``--policy`` and
    ``--signatures`` where the command takes them (``need_trust`` checks the combination).
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        # Applied innermost first, so --help lists --trust, --policy, --signatures.
        if signatures:
            fn = click.option(
                "--signatures",
                "signatures",
                multiple=True,
                type=click.Path(path_type=Path, dir_okay=False),
                help=_SIGNATURES_HELP,
            )(fn)
        if policy:
            fn = click.option(
                "--policy",
                "policy",
                type=click.Path(path_type=Path, dir_okay=False),
                help=_POLICY_HELP,
            )(fn)
        return click.option(
            "--trust",
            "trust",
            multiple=True,
            required=required,
            type=click.Path(path_type=Path),
            envvar="AIRGAP_TRUST",
            help=trust_help,
        )(fn)

    return decorate


def need_trust(trust: tuple[Path, ...], policy: Path | None, *, required: bool = True) -> None:
    """Exactly one source of trust: ``--trust`` keys or a ``--policy`` file.

    Raises:
        UsageError: neither, or both on the command line (AIRGAP_TRUST gives way to
            --policy, so a policy always means what it says).
    """
    ctx = click.get_current_context(silent=True)
    given = ctx is not None and ctx.get_parameter_source("trust") in (
        click.core.ParameterSource.COMMANDLINE,
    )
    if policy is not None and trust and given:
        raise UsageError(
            "--trust and --policy both given", remedy="list the keys in the policy file instead"
        )
    if required and policy is None and not trust:
        raise UsageError(
            "no trusted key given",
            remedy="pass --trust with the signer's public key file (airgap.pub) or a folder, "
            "or --policy FILE",
        )


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for automation.")
python_option = click.option(
    "--python",
    "python",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Make the virtualenv from this interpreter instead of searching the host "
    "(it must be the bundle's Python version and implementation).",
)
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress display.")
_PEM_FILE = click.Path(path_type=Path, dir_okay=False, exists=True)
tls_cert_option = click.option(
    "--tls-cert",
    "tls_cert",
    type=_PEM_FILE,
    help="Serve HTTPS with this PEM certificate (chain); needs --tls-key.",
)
tls_key_option = click.option(
    "--tls-key", "tls_key", type=_PEM_FILE, help="The certificate's unencrypted PEM private key."
)
auth_key_file_option = click.option(
    "--auth-key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Require 'Authorization: Bearer <key>' with a key from this file (one per line, at "
    "most two, mode 600); GET / stays open. Only the path is passed on, never the key.",
)
metrics_port_option = click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Serve Prometheus metrics on this port (at /metrics), beside the scoring port.",
)
dest_arg = click.argument("dest", type=click.Path(path_type=Path, file_okay=False, exists=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="airgap-bundler", prog_name="airgap")
def cli() -> None:
    """Carry a model, its Python packages and its server into a network with no internet.

    \b
    Online side:    keygen, lock, pack, delta, inspect, split (parts for media), kit (the
                    tool itself, for an isolated host), cache (info, prune)
    Isolated side:  verify, unpack, serve (local), build / run / stop (Docker), audit
    Either side:    sign (co-sign a bundle; verify --policy counts N of M keys)

    \b
    Exit codes: 0 ok, 1 error, 2 usage, 3 bundle rejected, 4 smoke test failed,
    5 audit findings, 6 advisory database invalid or stale.
    """


# ---- commands are registered below; each body is one library call wrapped in funnel ----


# ---- lock (bundler/lock.py) --------------------------------------------------------------


def to_stderr(line: str) -> None:
    click.echo(line, err=True)


class _TerminalProgress:
    """A one-line progress display on stderr, only when stderr is a terminal."""

    def __init__(self) -> None:
        self._label = ""
        self._unit = "B"
        self._total: int | None = None
        self._done = 0
        self._last = 0.0

    def start(self, label: str, total: int | None = None, unit: str = "B") -> None:
        self._label, self._total, self._unit = label, total, unit
        self._done, self._last = 0, 0.0
        self._draw(force=True)

    def advance(self, amount: int = 1) -> None:
        self._done += amount
        self._draw()

    def finish(self) -> None:
        self._done = self._total if self._total is not None else self._done
        self._draw(force=True)
        click.echo("", err=True)

    def _draw(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        if self._total and self._unit == "B":
            pct = 100 * self._done / self._total
            text = f"\r{self._label}: {pct:5.1f}% ({human(self._done)} of {human(self._total)})"
        elif self._total:
            text = f"\r{self._label}: {self._done} of {self._total} {self._unit}"
        else:
            text = f"\r{self._label} ..."
        click.echo(text.ljust(72), err=True, nl=False)


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def progress(quiet: bool) -> Progress:
    if quiet or not sys.stderr.isatty():
        return NullProgress()
    return _TerminalProgress()


def read_passphrase(env_var: str | None, *, prompt: str, confirm: bool) -> bytes | None:
    if env_var:
        value = os.environ.get(env_var)
        if value is None:
            raise UsageError(f"--passphrase-env names {env_var}, which is not set")
        return value.encode("utf-8")
    if prompt and sys.stdin.isatty():
        text = click.prompt(
            prompt, hide_input=True, confirmation_prompt=confirm, default="", show_default=False
        )
        return text.encode("utf-8") or None
    return None


def trust_report(verified: Verified) -> dict[str, Any]:
    """The JSON of how trust was decided: the rule met and what every signature was."""
    policy = verified.policy
    if policy is None or verified.decision is None:
        return {}
    return {
        "trust": verified.decision.to_json_dict(policy),
        "signatures": [c.to_json_dict(policy) for c in verified.signatures],
    }


def trust_lines(verified: Verified) -> list[str]:
    """Human lines for the same, printed when a policy or any co-signature was involved."""
    policy = verified.policy
    if policy is None or verified.decision is None:
        return []
    if policy.from_trust and len(verified.signatures) <= 1:
        return []  # --trust alone on a bundle with one signature: as before revision 1.4
    lines = [f"trust: {verified.decision.summary(policy)}"]
    for c in verified.signatures:
        who = f": {policy.label(c.key_id)}" if c.key_id else ""
        lines.append(f"  {c.status:<9} {c.source}{who}")
    return lines


def summary(manifest: Manifest, bundle: Path | None = None) -> dict[str, Any]:
    base = manifest.base_image
    info: dict[str, Any] = {
        "name": manifest.name,
        "version": manifest.version,
        "created": manifest.created,
        "created_utc": _utc(manifest.created),
        "expires": manifest.expires,
        "signer": manifest.signer,
        "target": {
            "python": manifest.target.python,
            "implementation": manifest.target.implementation,
            "abi": manifest.target.abi,
            "platforms": list(manifest.target.platforms),
        },
        "mode": manifest.mode,
        "entry_script": manifest.entry_script,
        "base_image": None
        if base is None
        else {"ref": base.ref, "digest": base.digest, "included": base.included},
        "packages": [f"{p.name}=={p.version}" for p in manifest.packages],
        "file_count": manifest.payload.file_count,
        "unpacked_size": manifest.payload.unpacked_size,
        "payload_size": manifest.payload.size,
        "payload_sha256": manifest.payload.sha256,
        "smoke": None if manifest.smoke is None else manifest.smoke.to_json_dict(),
    }
    if bundle is not None:
        info["bundle_size"] = bundle.stat().st_size
    return info


def _utc(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def print_summary(info: dict[str, Any]) -> None:
    """The manifest summary as text; every string from the bundle is escaped (``escape``),
    so a crafted name, version or package cannot forge lines or terminal sequences."""
    e = _shown
    click.echo(f"name:      {e(info['name'])}")
    click.echo(f"version:   {e(info['version'])}")
    click.echo(f"created:   {info['created_utc']}")
    if info["expires"] is not None:
        click.echo(f"expires:   {_utc(info['expires'])}")
    click.echo(f"signer:    {e(info['signer'])}")
    t = info["target"]
    click.echo(
        f"target:    {e(t['implementation'])}{e(t['python'])} {e(t['abi'])} "
        f"{e(', '.join(t['platforms'][:3]))}{' ...' if len(t['platforms']) > 3 else ''}"
    )
    click.echo(f"mode:      {info['mode']}  (entry script {e(info['entry_script'])})")
    if info["base_image"]:
        b = info["base_image"]
        carried = "carried in the bundle" if b["included"] else "not carried"
        click.echo(f"base:      {e(b['ref'])} {e(b['digest'] or '(not pinned)')} ({carried})")
    click.echo(
        f"files:     {info['file_count']}, {human(info['unpacked_size'])} unpacked, "
        f"{human(info['payload_size'])} compressed"
    )
    if info.get("smoke"):
        sm = info["smoke"]
        click.echo(f"smoke:     {e(sm['method'])} {e(sm['path'])} -> expects {sm['status']}")
    click.echo(f"packages:  {len(info['packages'])}")
    for p in info["packages"]:
        click.echo(f"  {e(p)}")


def _shown(value: object) -> str:
    return escape(str(value))
