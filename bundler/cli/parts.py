"""`airgap split`: a bundle as numbered parts for media, with a signed part index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from ..formats.parts import parse_size
from ..formats.signing import private_key_is_encrypted
from ._common import (
    cli,
    emit_json,
    funnel,
    json_option,
    progress,
    quiet_option,
    read_passphrase,
    to_stderr,
)


def size_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """Parse a part size option (4G, 700M, 4GiB, 4.7G or bytes; see `parse_size`)."""
    if value is None:
        return None
    try:
        return parse_size(value)
    except UsageError as e:
        raise click.BadParameter(e.message + (f"; {e.remedy}" if e.remedy else "")) from e


def split_and_report(
    bundle: Path,
    part_size: int,
    key: Path,
    passphrase: bytes | None,
    out_dir: Path | None,
    quiet: bool,
    as_json: bool,
) -> dict[str, Any]:
    """Split ``bundle`` (for `split` and `pack --split-size`); print the human lines unless
    ``as_json``; return the JSON fields."""
    from ..pack.split import split_file

    warnings: list[str] = []
    done = split_file(
        bundle,
        part_size,
        key,
        passphrase=passphrase,
        out_dir=out_dir,
        progress=progress(quiet or as_json),
        warn=warnings.append,
    )
    index = done.index
    if not as_json:
        for line in warnings:
            to_stderr(f"warning: {line}")
        first, last = done.part_paths[0].name, done.part_paths[-1].name
        click.echo(
            f"wrote {len(index.parts)} parts of at most {index.part_size} bytes "
            f"({first}{' ... ' + last if len(index.parts) > 1 else ''}) and the signed index "
            f"{done.index_path} (+ .sig); `sha256sum -c {done.sums_path.name}` checks the parts"
        )
    return {
        "index": str(done.index_path),
        "signature": str(done.signature_path),
        "sums": str(done.sums_path),
        "part_size": index.part_size,
        "parts": [{"file": p.file, "size": p.size, "sha256": p.sha256} for p in index.parts],
        "bundle_sha256": index.bundle.sha256,
        "bundle_size": index.bundle.size,
        "warnings": warnings,
    }


@cli.command("split")
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--size",
    "part_size",
    required=True,
    metavar="SIZE",
    callback=size_callback,
    help="Largest part: 4G (4*10^9 bytes, fits FAT32), 700M, 4.7G (a DVD), 4GiB (4*2^30), or "
    "bytes; at least 1M.",
)
@click.option(
    "--key",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Ed25519 private key that signs the part index (the packer's airgap.key).",
)
@click.option("--passphrase-env", metavar="VAR", help="The key's passphrase is in this variable.")
@click.option(
    "-o",
    "--out-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for the parts and the index (default: the bundle's folder).",
)
@quiet_option
@json_option
@funnel
def split_cmd(
    bundle: Path,
    part_size: int,
    key: Path,
    passphrase_env: str | None,
    out_dir: Path | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Split a bundle into numbered parts for media, with a signed part index (online side).

    \b
    Example:
      airgap split iris.airgap --size 4G --key keys/airgap.key
      sha256sum -c iris.airgap.sha256          # anywhere, standard tools only
      airgap verify iris.airgap.split.json --trust keys/airgap.pub --wait 600
      airgap unpack iris.airgap.split.json /srv/iris --trust keys/airgap.pub
    Writes iris.airgap.part001, part002, ... (the last shorter), iris.airgap.split.json
    and its signature (.sig), and iris.airgap.sha256. `cat` of the parts is the
    bundle, byte for byte. Same bundle and key: byte-identical output. Older files
    named like this bundle's parts in that folder are replaced or removed.
    """
    passphrase = None
    if private_key_is_encrypted(key):
        passphrase = read_passphrase(passphrase_env, prompt="Key passphrase", confirm=False)
    info = split_and_report(bundle, part_size, key, passphrase, out_dir, quiet, as_json)
    if as_json:
        emit_json({"ok": True, **info})
