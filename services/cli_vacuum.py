"""`keyspan vacuum`: shrink the shard files of a stopped server's data dir."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from keyspan.services.cli import EXIT_UNAVAILABLE, cli
from keyspan.storage.dirlock import lock_directory
from keyspan.storage.errors import KeyspanError
from keyspan.storage.keys import KeyRange
from keyspan.storage.shard import Shard
from keyspan.storage.shardset import CATALOGUE, ShardSet


@cli.command()
@click.option(
    "--data",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("keyspan-data"),
    show_default=True,
    help="The data dir of a stopped `keyspan serve` or `keyspan node`.",
)
def vacuum(data: Path) -> None:
    """Rewrite each shard file of DATA without its free pages, with incremental
    auto-vacuum on, so that shards made before keyspan reclaimed space shrink, and from
    then on give back what deletes and sweeps free (a running server does that itself
    for shards made since). The server must be stopped: the data dir is locked. Each
    file needs free disk about its size while it is rewritten; one that does not fit is
    skipped and named. Exit 4 when the dir is in use or not a data dir."""
    try:
        lock = lock_directory(data) if (data / CATALOGUE).exists() else None
    except KeyspanError as err:
        raise _fail(f"{err}; stop it first") from None
    if lock is None:
        raise _fail(f"{data} is not a keyspan data dir (no {CATALOGUE})")
    try:
        for partition_id, key_range in _catalogued(data):
            _vacuum_one(data / f"{partition_id}.db", partition_id, key_range)
    finally:
        lock.close()


def _catalogued(data: Path) -> list[tuple[str, KeyRange]]:
    try:
        return ShardSet(data).read_catalogue()  # the checks a server's start makes of it
    except KeyspanError as err:
        raise _fail(str(err)) from None


def _vacuum_one(path: Path, partition_id: str, key_range: KeyRange) -> None:
    try:
        shard = Shard(path, partition_id, key_range, catalogued=True)
    except KeyspanError as err:
        raise _fail(str(err)) from None
    try:
        before = shard.size_bytes()
        free = shutil.disk_usage(path.parent).free
        if free < before * 1.1:
            click.echo(f"{partition_id}: skipped, {before:,} bytes and {free:,} free on the disk", err=True)
            return
        shard.vacuum()
        click.echo(f"{partition_id}: {before:,} -> {shard.size_bytes():,} bytes")
    finally:
        shard.close()


def _fail(message: str) -> click.exceptions.Exit:
    click.echo(f"keyspan: {message}", err=True)
    return click.exceptions.Exit(EXIT_UNAVAILABLE)
