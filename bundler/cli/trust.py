"""`airgap sign`: co-sign an existing bundle, in it or in a detached file (revision 1.4)."""

from __future__ import annotations

from pathlib import Path

import click

from ..formats.signing import private_key_is_encrypted
from ._common import cli, emit_json, funnel, json_option, progress, quiet_option, read_passphrase


@cli.command("sign")
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--key",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Your Ed25519 private key (airgap.key from `airgap keygen`).",
)
@click.option("--passphrase-env", metavar="VAR", help="The key's passphrase is in this variable.")
@click.option(
    "--detached",
    is_flag=True,
    help="Write the signature to BUNDLE.sig (or --out) and leave the bundle untouched.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="With --detached: the signature file to write or add to (default: BUNDLE.sig).",
)
@quiet_option
@json_option
@funnel
def sign_cmd(
    bundle: Path,
    key: Path,
    passphrase_env: str | None,
    detached: bool,
    out: Path | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Co-sign a bundle: add your signature over its manifest, repacking nothing.

    \b
    Example:
      airgap sign iris.airgap --key reviewer/airgap.key
      airgap sign /media/ro/iris.airgap --key reviewer/airgap.key --detached --out iris.airgap.sig
      airgap verify iris.airgap --policy policy.toml      # e.g. 2 of 3 keys needed
    The payload, manifest and first signature keep their bytes; the bundle is
    rewritten in one rename with a `manifest.json.sig.<key id>` member added. Signing
    again with the same key changes nothing (exit 0, "unchanged"). The bundle is
    checked first (structure, manifest, payload hash); run `airgap verify` to decide
    whether to trust it before you sign. A delta (`airgap delta`) is co-signed the
    same way: the signature is over its manifest, so it holds for the full bundle too.
    """
    from ..pack.cosign import cosign

    if out is not None and not detached:
        from ..errors import UsageError

        raise UsageError("--out is for --detached", remedy="add --detached, or drop --out")
    passphrase = None
    if private_key_is_encrypted(key):
        passphrase = read_passphrase(passphrase_env, prompt="Key passphrase", confirm=False)
    result = cosign(
        bundle, key, passphrase, detached=detached, out=out, progress=progress(quiet or as_json)
    )
    if as_json:
        emit_json(result.to_json_dict())
        return
    where = f"{result.written} (detached)" if detached else str(result.written)
    if result.changed:
        click.echo(
            f"signed {result.manifest.name} {result.manifest.version} with key "
            f"{result.key_id[:16]}...: {where} now holds {result.cosignatures} co-signature(s); "
            "payload and manifest unchanged"
        )
    else:
        click.echo(
            f"unchanged: {where} already holds key {result.key_id[:16]}...'s signature "
            f"({result.cosignatures} co-signature(s))"
        )
