"""The `keyspan` command line.

Every setting of a process is a flag, with `KEYSPAN_<NAME>` as its environment variable
(flags win). Exit codes: see the group's epilog below (`keyspan --help`).
Each group of commands lives in its own module and is added to `cli` at the bottom.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from keyspan import __version__
from keyspan.services.config import ServeConfig, config_fields
from keyspan.storage.errors import ConfigError, KeyspanError

if TYPE_CHECKING:
    from keyspan.services.common.process import GrpcProcess

C = TypeVar("C")
EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_PRECONDITION, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4


def config_options(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add one click option per config field, with its help, default and env variable."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for name, default, meta in reversed(config_fields(cls)):
            kind: Any = type(default)
            if "choices" in meta:
                kind = click.Choice(meta["choices"], case_sensitive=False)
            elif isinstance(default, Path):
                kind, default = click.Path(file_okay=False), str(default)
            fn = click.option(
                "--" + name.replace("_", "-"),
                name,
                default=default,
                show_default=True,
                type=kind,
                help=meta.get("help", "") + (f" Range: {meta['bounds'].says()}." if "bounds" in meta else ""),
                envvar=f"KEYSPAN_{name.upper()}",
                show_envvar=True,
            )(fn)
        return fn

    return decorate


def build_config(cls: type[C], settings: dict[str, Any]) -> C:
    """The config from parsed flags, validated; a bad setting is a usage error (exit 2)."""
    for name, default, meta in config_fields(cls):
        if isinstance(default, Path):
            if not str(settings[name]).strip():  # Path("") is the current directory
                raise click.UsageError(f"{name}: must name a directory, not be empty")
            settings[name] = Path(settings[name])
        elif "choices" in meta and isinstance(default, str) and default.isupper():
            settings[name] = settings[name].upper()
    try:
        return cls(**settings).validate()  # type: ignore[attr-defined, no-any-return]
    except ConfigError as err:
        raise click.UsageError(str(err)) from None


def run_process(make: Callable[[], GrpcProcess], log_level: str, log_format: str) -> None:
    """Run a server process until SIGTERM/SIGINT; exit 4 when it cannot start."""
    from keyspan.services.common.logging import setup_logging
    from keyspan.services.common.process import run_until_signal

    setup_logging(log_level, log_format)
    try:
        asyncio.run(run_until_signal(make))
    except (OSError, KeyspanError) as err:
        if isinstance(err, OSError) and err.filename:  # the data dir: a file, not writable...
            said = f"cannot use {err.filename}: {err.strerror}"
        else:
            said = str(err)
        if log_format == "json":  # asked for JSON lines: this one too, for the log pipeline
            logging.getLogger("keyspan").critical("cannot start", extra={"error": said})
        else:
            click.echo(f"keyspan: {said}", err=True)
        sys.exit(EXIT_UNAVAILABLE)


# The shell's codes for a process ended by SIGINT (128 + 2) and by SIGPIPE (128 + 13).
EXIT_INTERRUPTED, EXIT_OUTPUT_CLOSED = 130, 141
EXIT_LOCAL_IO = 6  # a local file or the output could not be read or written


class _Group(click.Group):
    """click's group, with the shell's exit codes for Ctrl-C and a closed output pipe,
    where click gives 1 (which is "not found" here) for both."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("\nAborted!", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:  # `keyspan scan | head`: the reader is gone; end quietly
            _stdout_to_devnull()
            sys.exit(EXIT_OUTPUT_CLOSED)
        except OSError as err:  # `keyspan dump > backup` on a full disk: it was a traceback, exit 1
            where = f" ({err.filename})" if err.filename else " (the output)"
            click.echo(f"keyspan: cannot read or write{where}: {err.strerror or err}", err=True)
            if not err.filename:
                _stdout_to_devnull()
            sys.exit(EXIT_LOCAL_IO)


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so the flush at exit has nowhere to fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Exit codes: 0 ok; 1 not found; 2 usage or invalid argument; 3 precondition failed "
    "(etag mismatch, not a JSON document); 4 unavailable or deadline exceeded, or a server that "
    "cannot start (port in use, data dir locked or damaged); 5 other server errors; 6 a local "
    "file or the output could not be read or written (a full disk); 130 interrupted (Ctrl-C); "
    "141 output closed (`keyspan scan | head`).",
)
@click.version_option(__version__, prog_name="keyspan")
def cli() -> None:
    """keyspan: a range-partitioned key-value and JSON-document store over gRPC.

    Start a server with `keyspan serve`, then talk to it with any gRPC client
    (grpcurl works through server reflection).
    """
    # JSON documents nest up to 1000 levels (the server's limit); Python's json decoder
    # counts each level against the recursion limit, 1000 by default.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))


@cli.command()
@config_options(ServeConfig)
def serve(**settings: Any) -> None:
    """Run the all-in-one server: KV, health and reflection over local partitions.

    Data lives in --data (created on first start, cut into partitions at
    --split-points). SIGTERM or Ctrl-C (or SIGHUP, its terminal closing, unless
    started under nohup) shuts down cleanly: in-flight writes finish and are
    committed before the process exits. SIGUSR1 logs what each
    asyncio task and stream is waiting on, and the server goes on.

    While it runs, --data is this process's alone: a second server on it is
    refused, and no other process can open its shard files, not even the sqlite3
    shell; read through the RPCs or `keyspan dump`.

    Flags win over the KEYSPAN_* environment variables, which win over the
    defaults. Exit codes: 0 after SIGTERM, Ctrl-C or SIGHUP; 2 for a bad setting (named,
    with its range); 4 when it cannot start (the address, the data dir, a
    damaged or missing shard; one line says which).
    """
    from keyspan.services.server import KeyspanServer

    config = build_config(ServeConfig, settings)
    run_process(lambda: KeyspanServer(config), config.log_level, config.log_format)


def main() -> None:
    cli()


def _register_commands() -> None:
    """The command modules add their commands to `cli` when imported."""
    from keyspan.services import cli_bench, cli_cluster, cli_data, cli_vacuum  # noqa: F401


_register_commands()
