"""`airgap delta`: a signed update carrying only what changed; and how deltas are shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..formats.delta import DeltaDescriptor
from ..formats.signing import private_key_is_encrypted
from ._common import cli, emit_json, funnel, human, json_option, progress, quiet_option
from ._common import read_passphrase as _read_passphrase

_BUNDLE = click.Path(path_type=Path, dir_okay=False, exists=True)


def delta_summary(d: DeltaDescriptor, size: int | None = None) -> dict[str, Any]:
    """What a delta needs and carries, for `inspect`, `delta` and `pack --base` (JSON)."""
    info: dict[str, Any] = {
        "format": d.format,
        "base": {
            "name": d.base.name,
            "version": d.base.version,
            "manifest_sha256": d.base.manifest_sha256,
        },
        "carried_files": d.payload.file_count,
        "carried_size": d.payload.unpacked_size,
        "payload_size": d.payload.size,
        "payload_sha256": d.payload.sha256,
    }
    if size is not None:
        info["delta_size"] = size
    return info


def delta_lines(d: DeltaDescriptor) -> list[str]:
    """The same, as `inspect` prints it."""
    return [
        f"delta:     {d.format}: updates {d.base.name} {d.base.version} to {d.version}",
        f"needs:     DEST holding {d.base.name} {d.base.version} "
        f"(manifest sha256 {d.base.manifest_sha256})",
        f"carries:   {d.payload.file_count} files, {human(d.payload.unpacked_size)} "
        f"({human(d.payload.size)} compressed)",
    ]


def make_delta_file(
    old: Path,
    new: Path,
    out: Path,
    key: Path,
    passphrase_env: str | None,
    *,
    level: int,
    threads: int,
    quiet: bool,
) -> tuple[DeltaDescriptor, int]:
    """Ask for the key's passphrase when it has one, then make the delta (one library call)."""
    from ..pack.delta import make_delta

    passphrase = None
    if private_key_is_encrypted(key):
        passphrase = _read_passphrase(passphrase_env, prompt="Key passphrase", confirm=False)
    made = make_delta(
        old,
        new,
        out,
        key,
        passphrase=passphrase,
        level=level,
        threads=threads,
        progress=progress(quiet),
    )
    return made.descriptor, made.size


@cli.command("delta")
@click.argument("old", type=_BUNDLE)
@click.argument("new", type=_BUNDLE)
@click.option(
    "-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Delta to write."
)
@click.option(
    "--key",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The Ed25519 private key that signed NEW.",
)
@click.option("--passphrase-env", metavar="VAR", help="The key's passphrase is in this variable.")
@click.option(
    "--level", default=3, show_default=True, type=click.IntRange(1, 19), help="zstd level."
)
@click.option(
    "--threads",
    default=0,
    show_default=True,
    type=click.IntRange(0, 256),
    help="Compression threads (0: one per core; output is the same for any count).",
)
@quiet_option
@json_option
@funnel
def delta_cmd(
    old: Path,
    new: Path,
    out: Path,
    key: Path,
    passphrase_env: str | None,
    level: int,
    threads: int,
    quiet: bool,
    as_json: bool,
) -> None:
    """Write a signed delta that turns an unpacked OLD into NEW (online side).

    \b
    Example:
      airgap delta iris-1.0.airgap iris-1.1.airgap -o iris-1.1.delta.airgap --key k.key
      airgap unpack iris-1.1.delta.airgap /srv/iris --trust k.pub   # isolated side
    The delta holds NEW's signed manifest unchanged, only the files OLD does not
    hold, and a descriptor signed with the same key that binds them to OLD's
    manifest. It applies only to a DEST holding exactly OLD. Same inputs give a
    byte-identical delta.
    """
    d, size = make_delta_file(
        old, new, out, key, passphrase_env, level=level, threads=threads, quiet=quiet or as_json
    )
    if as_json:
        emit_json({"ok": True, "delta": str(out), **delta_summary(d, size)})
        return
    click.echo(
        f"wrote {out}: delta {d.name} {d.base.version} -> {d.version}, "
        f"{d.payload.file_count} files carried, {human(size)}"
    )
