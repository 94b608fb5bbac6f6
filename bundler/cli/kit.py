"""`airgap kit`: the tool's own bootstrap kit for an isolated host (bundler/pack/kit.py)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError
from ..formats.signing import private_key_is_encrypted
from ..target import Target
from ._common import (
    cli,
    emit_json,
    funnel,
    human,
    json_option,
    progress,
    quiet_option,
    read_passphrase,
)


@cli.command("kit")
@click.option(
    "--python",
    "python",
    default=None,
    metavar="3.X",
    help="The isolated host's Python version (default: this interpreter's).",
)
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    metavar="TAG",
    help="Its wheel platform tag, e.g. manylinux2014_x86_64 or manylinux_2_28_aarch64 "
    "(default: this machine's newest manylinux tag). Repeatable (one architecture).",
)
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The kit file to write (a plain tar).",
)
@click.option(
    "--key",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Ed25519 private key that signs kit.json (airgap.key from `airgap keygen`).",
)
@click.option("--passphrase-env", metavar="VAR", help="The key's passphrase is in this variable.")
@click.option(
    "--source",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="The airgap-bundler checkout to build (default: the one this airgap runs from).",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Wheel cache (default: $AIRGAP_CACHE_DIR/wheels or ~/.cache/airgap-bundler/wheels).",
)
@click.option(
    "--lock",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Take the dependencies' pins and hashes from this lock (e.g. an earlier kit's "
    "requirements.lock) instead of resolving: the same wheels again, from the cache.",
)
@quiet_option
@json_option
@funnel
def kit(
    python: str | None,
    platforms: tuple[str, ...],
    out: Path,
    key: Path,
    passphrase_env: str | None,
    source: Path | None,
    cache_dir: Path | None,
    lock: Path | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Write a signed kit that installs airgap itself on an isolated host (online side).

    \b
    Example:
      airgap kit -o airgap-kit.tar --key keys/airgap.key          # for this host
      airgap kit --python 3.11 --platform manylinux2014_x86_64 -o airgap-kit.tar --key k.key
      airgap kit --python 3.12 --platform manylinux_2_28_aarch64 -o kit-arm.tar --key k.key
      airgap kit ... --lock airgap-kit/requirements.lock     # the same pins as an earlier kit
    Then, on the isolated host:
      tar -xf airgap-kit.tar && sh airgap-kit/install.sh --trust airgap.pub --bin-dir ~/.local/bin
    The kit holds airgap-bundler's wheel (built from the checkout, reproducibly) and its
    dependencies' wheels for the target, pip's wheel, install.sh, requirements.lock with
    every hash, SHA256SUMS, and kit.json signed like a bundle's manifest. With the same
    inputs and SOURCE_DATE_EPOCH the kit is byte-identical.
    """
    from ..pack.kit import build_kit
    from ..pack.pipeline import source_date_epoch

    host = Target.host()
    try:
        target = Target.create(python or host.python, platforms or host.platforms)
    except ValueError as e:
        raise UsageError(f"target: {e}") from e
    passphrase = None
    if private_key_is_encrypted(key):
        passphrase = read_passphrase(passphrase_env, prompt="Key passphrase", confirm=False)
    result = build_kit(
        target,
        out,
        key,
        passphrase=passphrase,
        created=source_date_epoch(),
        source=source,
        cache_dir=cache_dir,
        lock=lock,
        progress=progress(quiet or as_json),
    )
    if as_json:
        emit_json({"ok": True, **result.to_json()})
        return
    floor = "no C library floor (pure wheels)" if result.libc is None else f"needs {result.libc}"
    click.echo(
        f"wrote {out}: airgap-bundler {result.tool_version} for {target.describe()}, "
        f"{len(result.wheels)} wheels, {human(result.size)}; {floor}"
    )
    click.echo(f"sha256 {result.sha256}")
    click.echo(f"signed by {result.signer}")
