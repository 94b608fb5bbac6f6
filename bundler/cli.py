"""The `airgap` command: parse options, call one library function, print; one error funnel."""

from __future__ import annotations

import datetime
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from .errors import EXIT_ERROR, BundleError, UsageError
from .formats.manifest import Manifest
from .formats.signing import (
    PRIVATE_KEY_NAME,
    PUBLIC_KEY_NAME,
    generate_keypair,
    private_key_is_encrypted,
)
from .inspecting import read_manifest_unverified
from .progress import NullProgress, Progress
from .verify.unpack import unpack as unpack_bundle
from .verify.unpack import verify as verify_bundle

P = ParamSpec("P")
R = TypeVar("R")


def _funnel(fn: Callable[P, R]) -> Callable[P, R]:
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="airgap-bundler", prog_name="airgap")
def cli() -> None:
    """Carry a model, its Python packages and its server into a network with no internet.

    \b
    Online side:    keygen, lock, pack, inspect
    Isolated side:  verify, unpack, serve (local), build / run / stop (Docker)

    \b
    Exit codes: 0 ok, 1 error, 2 usage, 3 bundle rejected.
    """


# ---- commands are registered below; each body is one library call wrapped in _funnel ----


# ---- core commands: keys, pack, inspect, verify, unpack --------------------------------


class _TerminalProgress:
    """A one-line progress display on stderr, only when stderr is a terminal."""

    def __init__(self) -> None:
        self._label = ""
        self._total: int | None = None
        self._done = 0
        self._last = 0.0

    def start(self, label: str, total: int | None = None) -> None:
        self._label, self._total, self._done, self._last = label, total, 0, 0.0
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
        if self._total:
            pct = 100 * self._done / self._total
            text = f"\r{self._label}: {pct:5.1f}% ({_human(self._done)} of {_human(self._total)})"
        else:
            text = f"\r{self._label}: {self._done}"
        click.echo(text.ljust(72), err=True, nl=False)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _progress(quiet: bool) -> Progress:
    if quiet or not sys.stderr.isatty():
        return NullProgress()
    return _TerminalProgress()


def _passphrase(env_var: str | None, *, prompt: str, confirm: bool) -> bytes | None:
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


_TRUST_HELP = "Trusted public key file, or a folder of *.pub / *.pem keys (repeatable)."
_trust_option = click.option(
    "--trust",
    "trust",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help=_TRUST_HELP,
    envvar="AIRGAP_TRUST",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for automation.")
_quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress display.")


@cli.command()
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for airgap.key (private, mode 0600) and airgap.pub.",
)
@click.option(
    "--passphrase-env",
    metavar="VAR",
    help="Encrypt the private key with the passphrase in this environment variable.",
)
@click.option("--no-passphrase", is_flag=True, help="Do not prompt; leave the key unencrypted.")
@click.option("--force", is_flag=True, help="Replace an existing key pair.")
@_json_option
@_funnel
def keygen(
    out_dir: Path, passphrase_env: str | None, no_passphrase: bool, force: bool, as_json: bool
) -> None:
    """Make an Ed25519 signing key pair and print its key id.

    \b
    Example:
      airgap keygen --out ~/.airgap-keys
      airgap keygen --out keys --passphrase-env AIRGAP_KEY_PASS
    The private key is PKCS#8 PEM, encrypted when a passphrase is given (env var or prompt).
    Give airgap.pub to the isolated side; it is what `--trust` takes.
    """
    passphrase = (
        None
        if no_passphrase
        else _passphrase(passphrase_env, prompt="Passphrase (empty for none)", confirm=True)
    )
    kid = generate_keypair(out_dir, passphrase, force=force)
    if as_json:
        emit_json(
            {
                "ok": True,
                "key_id": kid,
                "private_key": str(out_dir / PRIVATE_KEY_NAME),
                "public_key": str(out_dir / PUBLIC_KEY_NAME),
                "encrypted": bool(passphrase),
            }
        )
        return
    click.echo(f"key id: {kid}")
    click.echo(f"private key: {out_dir / PRIVATE_KEY_NAME} (keep it on the online side)")
    click.echo(f"public key:  {out_dir / PUBLIC_KEY_NAME} (pass it to --trust)")


@cli.command()
@click.argument("project_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Bundle file to write.",
)
@click.option(
    "--key",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Ed25519 private key (airgap.key from `airgap keygen`).",
)
@click.option("--passphrase-env", metavar="VAR", help="The key's passphrase is in this variable.")
@click.option(
    "--level",
    default=3,
    show_default=True,
    type=click.IntRange(1, 19),
    help="zstd compression level.",
)
@click.option(
    "--threads",
    default=0,
    show_default=True,
    type=click.IntRange(0, 256),
    help="Compression threads (0: one per core; output is the same for any count).",
)
@click.option(
    "--include-base-image", is_flag=True, help="Carry the base image (docker save) in the bundle."
)
@click.option(
    "--include-wheels",
    is_flag=True,
    help="Carry the wheels and requirements file (always done in dynamic mode).",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Wheel cache (default: $AIRGAP_CACHE_DIR or ~/.cache/airgap-bundler).",
)
@_quiet_option
@_json_option
@_funnel
def pack(
    project_dir: Path,
    out: Path,
    key: Path,
    passphrase_env: str | None,
    level: int,
    threads: int,
    include_base_image: bool,
    include_wheels: bool,
    cache_dir: Path | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Build a signed bundle from a project folder holding bundle.toml (online side).

    \b
    Example:
      airgap pack examples/iris-sklearn -o iris.airgap --key keys/airgap.key
      SOURCE_DATE_EPOCH=1700000000 airgap pack proj -o proj.airgap --key k.key
    Downloads the locked wheels for the target (hash-checked, cached), builds the
    site-packages tree, and writes one signed, zstd-compressed file. With the same
    inputs and SOURCE_DATE_EPOCH the bundle is byte-identical.
    """
    from .pack import pack as do_pack

    passphrase = None
    if private_key_is_encrypted(key):
        passphrase = _passphrase(passphrase_env, prompt="Key passphrase", confirm=False)
    manifest = do_pack(
        project_dir,
        out,
        key,
        passphrase=passphrase,
        level=level,
        threads=threads,
        include_base_image=include_base_image,
        include_wheels=include_wheels,
        cache_dir=cache_dir,
        progress=_progress(quiet),
    )
    if as_json:
        emit_json({"ok": True, "bundle": str(out), **_summary(manifest, out)})
        return
    click.echo(
        f"wrote {out}: {manifest.name} {manifest.version}, "
        f"{manifest.payload.file_count} files, {_human(out.stat().st_size)}"
    )
    click.echo(f"signed by {manifest.signer}")


def _summary(manifest: Manifest, bundle: Path | None = None) -> dict[str, Any]:
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
    }
    if bundle is not None:
        info["bundle_size"] = bundle.stat().st_size
    return info


def _utc(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _print_summary(info: dict[str, Any]) -> None:
    click.echo(f"name:      {info['name']}")
    click.echo(f"version:   {info['version']}")
    click.echo(f"created:   {info['created_utc']}")
    if info["expires"] is not None:
        click.echo(f"expires:   {_utc(info['expires'])}")
    click.echo(f"signer:    {info['signer']}")
    t = info["target"]
    click.echo(
        f"target:    {t['implementation']}{t['python']} {t['abi']} "
        f"{', '.join(t['platforms'][:3])}{' ...' if len(t['platforms']) > 3 else ''}"
    )
    click.echo(f"mode:      {info['mode']}  (entry script {info['entry_script']})")
    if info["base_image"]:
        b = info["base_image"]
        carried = "carried in the bundle" if b["included"] else "not carried"
        click.echo(f"base:      {b['ref']} {b['digest'] or '(not pinned)'} ({carried})")
    click.echo(
        f"files:     {info['file_count']}, {_human(info['unpacked_size'])} unpacked, "
        f"{_human(info['payload_size'])} compressed"
    )
    click.echo(f"packages:  {len(info['packages'])}")
    for p in info["packages"]:
        click.echo(f"  {p}")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@_json_option
@_funnel
def inspect(bundle: Path, as_json: bool) -> None:
    """Show what a bundle holds, from its manifest alone (instant on any size).

    \b
    Example:
      airgap inspect iris.airgap
      airgap inspect iris.airgap --json | jq .packages
    The signature is NOT checked here: use `airgap verify` before trusting anything.
    """
    manifest = read_manifest_unverified(bundle)
    info = _summary(manifest, bundle)
    info["verified"] = False
    if as_json:
        emit_json(info)
        return
    _print_summary(info)
    click.echo("(not verified: run `airgap verify BUNDLE --trust KEY`)")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@_trust_option
@_quiet_option
@_json_option
@_funnel
def verify(bundle: Path, trust: tuple[Path, ...], quiet: bool, as_json: bool) -> None:
    """Check a bundle's signature and every hash, writing nothing (isolated side).

    \b
    Example:
      airgap verify iris.airgap --trust keys/airgap.pub
      airgap verify iris.airgap --trust /etc/airgap/trusted/ --json
    Exit status 0 when every check passes, 3 when the bundle is rejected.
    """
    verified = verify_bundle(bundle, list(trust), progress=_progress(quiet or as_json))
    m = verified.manifest
    if as_json:
        emit_json(
            {
                "ok": True,
                "verified": True,
                "trusted_key": str(verified.key.source),
                **_summary(m, bundle),
            }
        )
        return
    click.echo(
        f"OK: {m.name} {m.version}, {m.payload.file_count} files, signed by "
        f"{m.signer[:16]}... ({verified.key.source})"
    )


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.argument("dest", type=click.Path(path_type=Path))
@_trust_option
@click.option(
    "--allow-downgrade",
    is_flag=True,
    help="Replace an installed newer version with this older one.",
)
@_quiet_option
@_json_option
@_funnel
def unpack(
    bundle: Path,
    dest: Path,
    trust: tuple[Path, ...],
    allow_downgrade: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Verify a bundle, then install it into DEST atomically (isolated side).

    \b
    Example:
      airgap unpack iris.airgap /srv/models/iris --trust keys/airgap.pub
    Every check runs before DEST changes; DEST is replaced in one rename, or left
    exactly as it was. An older version than the one at DEST is refused unless
    --allow-downgrade.
    """
    verified = unpack_bundle(
        bundle,
        dest,
        list(trust),
        allow_downgrade=allow_downgrade,
        progress=_progress(quiet or as_json),
    )
    m = verified.manifest
    if as_json:
        emit_json({"ok": True, "dest": str(dest), **_summary(m)})
        return
    click.echo(f"unpacked {m.name} {m.version} into {dest} ({m.payload.file_count} files)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv``; return the exit code instead of exiting (for tests)."""
    try:
        cli.main(
            args=list(argv) if argv is not None else None, prog_name="airgap", standalone_mode=True
        )
    except SystemExit as e:
        code = e.code
        if code is None:
            return 0
        return code if isinstance(code, int) else EXIT_ERROR
    return 0
