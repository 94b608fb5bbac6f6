"""The online side's commands: keygen, lock, pack (and its --base delta), inspect."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import click

from ..errors import UsageError
from ..formats.limits import DEFAULT_LIMITS
from ..formats.signing import (
    PRIVATE_KEY_NAME,
    PUBLIC_KEY_NAME,
    generate_keypair,
    private_key_is_encrypted,
)
from ..inspecting import read_unverified
from ._common import (
    cli,
    emit_json,
    funnel,
    human,
    json_option,
    print_summary,
    progress,
    quiet_option,
    read_passphrase,
    summary,
    trust_options,
)
from .delta import delta_lines, delta_summary, make_delta_file
from .parts import size_callback, split_and_report


@cli.command("lock")
@click.argument("requirements_in", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Where to write the lock (default: requirements.lock beside REQUIREMENTS_IN).",
)
@click.option("--upgrade", is_flag=True, help="Re-resolve to the newest allowed versions.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for automation.")
@funnel
def lock_cmd(requirements_in: Path, output: Path | None, upgrade: bool, as_json: bool) -> None:
    """Resolve REQUIREMENTS_IN into a hashed lock with pip-tools (pip-compile).

    Every package is pinned with == and carries the sha256 hash of each of its files,
    which is what `airgap pack` requires. Resolution is for this interpreter's Python
    version; the index comes from pip's configuration.

    \b
    Example:
        airgap lock requirements.in -o requirements.lock
    """
    from ..pack.lock import compile_lock

    out = output if output is not None else requirements_in.with_name("requirements.lock")
    reqs = compile_lock(requirements_in, out, upgrade=upgrade)
    if as_json:
        emit_json(
            {
                "ok": True,
                "output": str(out),
                "packages": [
                    {"name": r.name, "version": r.version, "hashes": len(r.hashes)} for r in reqs
                ],
            }
        )
        return
    click.echo(f"wrote {out}: {len(reqs)} packages, each pinned and hashed")


# ---- local runner: serve (bundler/local.py) -----------------------------------------------


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
@json_option
@funnel
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
        else read_passphrase(passphrase_env, prompt="Passphrase (empty for none)", confirm=True)
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
    help="Wheel cache, with built trees in its trees/ (default: $AIRGAP_CACHE_DIR/wheels or "
    "~/.cache/airgap-bundler/wheels).",
)
@click.option(
    "--no-tree-cache",
    is_flag=True,
    help="Build site-packages and runtime/lib afresh; neither read nor fill the tree cache.",
)
@click.option(
    "--tree-cache-max",
    metavar="SIZE",
    help="Bound of the tree cache, e.g. 2G (default: $AIRGAP_TREE_CACHE_MAX or 4G); least "
    "recently used trees are removed after the pack.",
)
@click.option(
    "--find-links",
    "find_links",
    multiple=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Also take locked wheels from this folder (e.g. wheels you built for pins that "
    "publish only a source distribution); hash-checked against the lock. Repeatable.",
)
@click.option(
    "--bytecode",
    type=click.Choice(["auto", "require", "none"]),
    default="auto",
    show_default=True,
    help="Ship .pyc files: auto = when a Python of the target's version is on this machine "
    "(else a warning), require = fail without one, none = never. For byte-identical bundles "
    "across machines, use require or none.",
)
@click.option(
    "--split-size",
    metavar="SIZE",
    callback=size_callback,
    help="Then split the bundle for media as `airgap split --size SIZE` does (same key).",
)
@click.option(
    "--base",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Also write a signed delta from this earlier full bundle to the new one "
    "(see `airgap delta`).",
)
@click.option(
    "--delta-output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where --base writes the delta (default: OUTPUT with .delta.airgap).",
)
@quiet_option
@json_option
@funnel
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
    find_links: tuple[Path, ...],
    bytecode: str,
    split_size: int | None,
    no_tree_cache: bool,
    tree_cache_max: str | None,
    base: Path | None,
    delta_output: Path | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Build a signed bundle from a project folder holding bundle.toml (online side).

    \b
    Example:
      airgap pack examples/iris-sklearn -o iris.airgap --key keys/airgap.key
      SOURCE_DATE_EPOCH=1700000000 airgap pack proj -o proj.airgap --key k.key
    Downloads the locked wheels for the target (hash-checked, cached), builds the
    site-packages tree (or takes it from the tree cache when the lock, target and bytecode
    are unchanged; see `airgap cache info`), and writes one signed, zstd-compressed file.
    With the same inputs and SOURCE_DATE_EPOCH the bundle is byte-identical. --split-size
    4G then writes it as parts with a signed index too (see `airgap split --help`). With
    --base OLD it then writes the delta from OLD as `airgap delta OLD OUTPUT` does:
      airgap pack proj -o iris-1.1.airgap --key k.key --base iris-1.0.airgap
    """
    from ..pack.pipeline import BytecodeChoice
    from ..pack.pipeline import pack as do_pack
    from ..pack.treecache import TreeReport, cache_for, parse_size

    passphrase = None
    if private_key_is_encrypted(key):
        passphrase = read_passphrase(passphrase_env, prompt="Key passphrase", confirm=False)
    warnings: list[str] = []
    trees: list[TreeReport] = []
    bound = None if tree_cache_max is None else parse_size(tree_cache_max)
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
        progress=progress(quiet),
        find_links=find_links,
        warn=warnings.append,
        bytecode=cast("BytecodeChoice", bytecode),
        tree_cache=None if no_tree_cache else cache_for(cache_dir, bound),
        on_tree=trees.append,
    )
    delta: dict[str, object] | None = None
    if base is not None:
        delta_out = delta_output or out.with_name(
            out.name.removesuffix(".airgap") + ".delta.airgap"
        )
        d, size = make_delta_file(
            base, out, delta_out, key, passphrase_env, level=level, threads=threads, quiet=quiet
        )
        delta = {"delta": str(delta_out), **delta_summary(d, size)}
    if as_json:
        info = {
            "ok": True,
            "bundle": str(out),
            "warnings": warnings,
            "trees": [
                {
                    "tree": t.label,
                    "key": t.key,
                    "cache": t.cache,
                    "reused_bytecode": t.reused_bytecode,
                    "reused_frames": t.reused_frames,
                }
                for t in trees
            ],
            **summary(manifest, out),
            "delta": delta,
        }
        if split_size is not None:
            info["split"] = split_and_report(out, split_size, key, passphrase, None, quiet, True)
        emit_json(info)
        return
    for line in warnings:
        click.echo(f"warning: {line}", err=True)
    click.echo(
        f"wrote {out}: {manifest.name} {manifest.version}, "
        f"{manifest.payload.file_count} files, {human(out.stat().st_size)}"
    )
    click.echo(f"signed by {manifest.signer}")
    if delta is not None:
        click.echo(
            f"wrote {delta['delta']}: delta from {base}, {delta['carried_files']} files "
            f"carried, {human(int(str(delta['delta_size'])))}"
        )
    if split_size is not None:
        split_and_report(out, split_size, key, passphrase, None, quiet, False)


@cli.command()
# A folder, FIFO or device is refused by open_bundle, in one line (formats/source.py).
@click.argument("bundle", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--sbom",
    is_flag=True,
    help="Print the bundle's CycloneDX SBOM (sbom/bom.cdx.json) instead, streamed out of "
    "the payload and checked against the manifest's sha256 before it is printed.",
)
@trust_options(
    "With --sbom: verify the bundle's signature and payload with this trusted key "
    "(file or folder, repeatable) before printing."
)
@json_option
@funnel
def inspect(bundle: Path, sbom: bool, trust: tuple[Path, ...], as_json: bool) -> None:
    """Show what a bundle holds, from its manifest alone (instant on any size).

    \b
    Example:
      airgap inspect iris.airgap
      airgap inspect iris.airgap --json | jq .packages
      airgap inspect --sbom iris.airgap --trust keys/airgap.pub > bom.cdx.json
    For a delta it also shows the base it needs (name, version, manifest sha256) and what it
    carries. The signature is NOT checked here: use `airgap verify` before trusting anything.
    With --sbom the SBOM is printed exactly as signed; without --trust only its hash is
    checked against the (unverified) manifest, and stderr says so.
    """
    if trust and not sbom:
        raise UsageError(
            "--trust is only used with --sbom", remedy="use `airgap verify` to check a bundle"
        )
    if sbom:
        from ..layout import SBOM_FILE
        from ..verify.unpack import read_member

        member = read_member(bundle, SBOM_FILE, trust, max_bytes=DEFAULT_LIMITS.max_sbom_bytes)
        click.echo(member.data, nl=False)  # the exact bytes: `> bom.cdx.json` is the file
        if member.verified:
            click.echo(f"{SBOM_FILE}: verified (signed by {member.manifest.signer})", err=True)
        else:
            click.echo(
                f"{SBOM_FILE}: matches the manifest, which is NOT verified: "
                "pass --trust KEY to check the signature",
                err=True,
            )
        return
    manifest, present, descriptor = read_unverified(bundle)
    info = summary(manifest, bundle)
    info["ok"] = True
    info["verified"] = False
    info["signatures_present"] = [{"source": p.source, "key_id": p.key_id} for p in present]
    info["delta"] = None if descriptor is None else delta_summary(descriptor)
    if as_json:
        emit_json(info)
        return
    print_summary(info)
    if len(present) > 1:
        click.echo(f"signatures: {len(present)} present (not verified)")
        for p in present:
            click.echo(f"  {p.key_id[:16]}...  {p.source}")
    if descriptor is not None:
        for line in delta_lines(descriptor):
            click.echo(line)
    click.echo("(not verified: run `airgap verify BUNDLE --trust KEY`)")
