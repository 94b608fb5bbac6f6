"""The cache commands: `airgap cache info` and `airgap cache prune` (the tree cache)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ._common import cli, emit_json, funnel, human, json_option

if TYPE_CHECKING:
    from ..pack.treecache import EntryInfo

_cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="The cache `airgap pack --cache-dir` used (default: $AIRGAP_CACHE_DIR/wheels or "
    "~/.cache/airgap-bundler/wheels); its built trees are in trees/.",
)


@cli.group()
def cache() -> None:
    """Inspect and trim the cache of built site-packages trees (online side).

    \b
    Example:
      airgap cache info
      airgap cache prune --max-size 1G
    """


def _entry_json(e: EntryInfo) -> dict[str, Any]:
    return {
        "key": e.key,
        "tree": e.label,
        "size": e.size,
        "files": e.files,
        "hits": e.hits,
        "last_used": e.last_used,
        "packages": list(e.packages),
    }


@cache.command("info")
@_cache_dir_option
@json_option
@funnel
def info(cache_dir: Path | None, as_json: bool) -> None:
    """Show the tree cache: where it is, its bound, and each entry (least recently used first).

    \b
    Example:
      airgap cache info --json | jq '.entries[] | {tree, hits, size}'
    """
    from ..pack.treecache import cache_for

    tc = cache_for(cache_dir)
    entries = tc.entries()
    total = sum(e.size for e in entries)
    if as_json:
        emit_json(
            {
                "ok": True,
                "root": str(tc.root),
                "max_size": tc.max_size,
                "size": total,
                "entries": [_entry_json(e) for e in entries],
            }
        )
        return
    click.echo(f"tree cache: {tc.root}")
    click.echo(f"size:       {human(total)} of {human(tc.max_size)}, {len(entries)} entries")
    for e in entries:
        used = datetime.datetime.fromtimestamp(e.last_used, tz=datetime.UTC)
        click.echo(
            f"  {e.key[:16]}  {e.label:<14} {human(e.size):>10}  {e.files} files, "
            f"{len(e.packages)} packages, {e.hits} hits, last used {used:%Y-%m-%d %H:%M}Z"
        )


@cache.command("prune")
@_cache_dir_option
@click.option("--all", "prune_all", is_flag=True, help="Remove every entry not in use.")
@click.option(
    "--max-size",
    metavar="SIZE",
    help="Remove least recently used entries until the rest fit, e.g. 500M "
    "(default: the bound, $AIRGAP_TREE_CACHE_MAX or 4G).",
)
@json_option
@funnel
def prune(cache_dir: Path | None, prune_all: bool, max_size: str | None, as_json: bool) -> None:
    """Remove tree cache entries: all of them, or least recently used ones above a size.

    \b
    Example:
      airgap cache prune --max-size 1G
      airgap cache prune --all --json
    Entries a running pack is reading are kept. Removing entries is always safe: the next
    pack builds those trees again from the (cached) wheels.
    """
    from ..errors import UsageError
    from ..pack.treecache import cache_for, parse_size

    if prune_all and max_size is not None:
        raise UsageError("--all and --max-size exclude each other", remedy="pass one of them")
    tc = cache_for(cache_dir)
    limit = 0 if prune_all else (parse_size(max_size) if max_size is not None else None)
    removed = tc.evict(limit)
    left = tc.entries()
    freed = sum(e.size for e in removed)
    if as_json:
        emit_json(
            {
                "ok": True,
                "root": str(tc.root),
                "removed": [_entry_json(e) for e in removed],
                "freed": freed,
                "size": sum(e.size for e in left),
                "entries": len(left),
            }
        )
        return
    click.echo(
        f"removed {len(removed)} entries ({human(freed)}); {len(left)} left, "
        f"{human(sum(e.size for e in left))}"
    )
