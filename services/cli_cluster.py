"""`keyspan control`, `keyspan node`, `keyspan gateway` and `keyspan admin ...`."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from keyspan.services.cli import (
    EXIT_NOT_FOUND,
    EXIT_PRECONDITION,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    build_config,
    cli,
    config_options,
    run_process,
)
from keyspan.services.cli_data import Seconds
from keyspan.services.config import ControlConfig, GatewayConfig, NodeConfig, parse_address
from keyspan.storage.errors import ConfigError
from keyspan.storage.keys import bound_text


@cli.command()
@config_options(ControlConfig)
def control(**settings: Any) -> None:
    """Run the control plane: the partition map, the node registry, keyspan.v1.Control.

    A new --data dir creates a cluster of --partitions partitions (or --split-points);
    they are assigned once --min-nodes nodes have joined.
    """
    from keyspan.services.control.process import ControlProcess

    config = build_config(ControlConfig, settings)
    run_process(lambda: ControlProcess(config), config.log_level, config.log_format)


@cli.command()
@config_options(NodeConfig)
def node(**settings: Any) -> None:
    """Run a data node: joins --control, hosts the partitions it is assigned, serves KV.

    The node id is kept in --data, so a restarted node resumes its identity and its
    partitions from its own disk. While it runs, --data is this process's alone: no
    other process can open its shard files, not even the sqlite3 shell.
    """
    from keyspan.services.node.process import NodeProcess

    config = build_config(NodeConfig, settings)
    run_process(lambda: NodeProcess(config), config.log_level, config.log_format)


@cli.command()
@config_options(GatewayConfig)
def gateway(**settings: Any) -> None:
    """Run a stateless gateway: keyspan.v1.KV routed to the nodes by control's map."""
    from keyspan.services.gateway.process import GatewayProcess

    config = build_config(GatewayConfig, settings)
    run_process(lambda: GatewayProcess(config), config.log_level, config.log_format)


def _control_address(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        parse_address(value, "control")
    except ConfigError as err:
        raise click.BadParameter(str(err).removeprefix("control: "), ctx, param) from None
    return value


@cli.group()
@click.option(
    "--control",
    default="127.0.0.1:7400",
    show_default=True,
    envvar="KEYSPAN_CONTROL",
    callback=_control_address,
    help="HOST:PORT of keyspan control.",
)
@click.option(
    "--timeout-s",
    type=Seconds(),
    default=5.0,
    show_default=True,
    help="Deadline of the admin call, in seconds.",
)
@click.pass_context
def admin(ctx: click.Context, control: str, timeout_s: float) -> None:
    """Operate a cluster through keyspan control; every command prints what it did."""
    ctx.obj = {"control": control, "timeout_s": timeout_s}


def _call(ctx: click.Context, method: str, request: Any) -> Any:
    """One Control RPC; errors print their message and exit with the CLI's codes."""
    import grpc

    from keyspan.v1 import control_pb2_grpc

    async def go() -> Any:
        async with grpc.aio.insecure_channel(ctx.obj["control"]) as channel:
            stub = control_pb2_grpc.ControlStub(channel)
            return await getattr(stub, method)(request, timeout=ctx.obj["timeout_s"])

    try:
        return asyncio.run(go())
    except grpc.aio.AioRpcError as err:
        codes = {
            grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
            grpc.StatusCode.FAILED_PRECONDITION: EXIT_PRECONDITION,
            grpc.StatusCode.INVALID_ARGUMENT: EXIT_USAGE,
        }
        if err.code() == grpc.StatusCode.UNIMPLEMENTED:  # it said "Method not found!"
            click.echo(
                f"keyspan admin: {ctx.obj['control']} is not a keyspan control (it does not serve "
                "keyspan.v1.Control: a node or a gateway?); give --control the control's address",
                err=True,
            )
            sys.exit(EXIT_USAGE)
        click.echo(f"keyspan admin: {err.code().name}: {err.details()}", err=True)
        sys.exit(codes.get(err.code(), EXIT_UNAVAILABLE))


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def _ago(ms: int) -> str:
    if not ms:
        return "never"
    return f"{max(0.0, time.time() - ms / 1000):.1f}s ago"


def _node_status(info: Any) -> str:
    from keyspan.v1 import control_pb2

    status = control_pb2.NodeStatus.Name(info.status).removeprefix("NODE_STATUS_").lower()
    flags = [
        f for f, on in (("draining", info.draining), ("cordoned", info.cordoned and not info.draining)) if on
    ]
    return ",".join([status, *flags])


@admin.command()
@click.pass_context
def nodes(ctx: click.Context) -> None:
    """List the nodes: id, address, status, partitions, entries, last heartbeat."""
    from keyspan.v1 import control_pb2

    response = _call(ctx, "ListNodes", control_pb2.ListNodesRequest())
    rows = [
        [
            n.node_id,
            n.address,
            _node_status(n),
            str(n.partitions),
            str(n.entries),
            _ago(n.last_heartbeat_ms),
            n.probe or "-",
        ]
        for n in response.nodes
    ]
    click.echo(_table(["ID", "ADDRESS", "STATUS", "PARTITIONS", "ENTRIES", "LAST HEARTBEAT", "PROBE"], rows))
    click.echo(f"{len(rows)} nodes, map version {response.map_version}")


@admin.command()
@click.pass_context
def partitions(ctx: click.Context) -> None:
    """List the partition map: id, range, owner, address, state."""
    from keyspan.v1 import control_pb2

    response = _call(ctx, "GetMap", control_pb2.GetMapRequest())
    rows = [
        [
            p.partition_id,
            bound_text(p.start),
            bound_text(p.end if p.HasField("end") else None),
            p.node_id or "-",
            p.address or "-",
            control_pb2.PartitionState.Name(p.state).removeprefix("PARTITION_STATE_").lower(),
        ]
        for p in response.partitions
    ]
    click.echo(_table(["ID", "START", "END", "NODE", "ADDRESS", "STATE"], rows))
    click.echo(f"{len(rows)} partitions, map version {response.version}")


def _node_command(method: str, verb: str) -> Callable[..., None]:
    @click.argument("node_id")
    @click.pass_context
    def command(ctx: click.Context, node_id: str) -> None:
        from keyspan.v1 import control_pb2

        info = _call(ctx, method, control_pb2.NodeRequest(node_id=node_id))
        click.echo(
            f"{verb} node {info.node_id} ({info.address}): now {_node_status(info)}, "
            f"{info.partitions} partitions"
        )

    return command


admin.command("drain", help="Stop assigning partitions to NODE_ID for good; it keeps what it owns.")(
    _node_command("DrainNode", "drained")
)
admin.command("cordon", help="Stop assigning new partitions to NODE_ID.")(
    _node_command("CordonNode", "cordoned")
)
admin.command("uncordon", help="Let NODE_ID take partitions again (lifts cordon and drain).")(
    _node_command("UncordonNode", "uncordoned")
)


@admin.command()
@click.argument("node_id")
@click.option("--force", is_flag=True, help="Remove even if it owns partitions (they become unassigned).")
@click.pass_context
def remove(ctx: click.Context, node_id: str, force: bool) -> None:
    """Forget NODE_ID; refused while it owns partitions unless --force."""
    from keyspan.v1 import control_pb2

    response = _call(ctx, "RemoveNode", control_pb2.RemoveNodeRequest(node_id=node_id, force=force))
    moved = ", ".join(response.reassigned) or "none"
    # "reassigned" said more than it knew: with no schedulable node they stay unassigned
    click.echo(
        f"removed node {node_id}; partitions it owned: {moved} (assigned to other nodes where one is "
        f"schedulable, else unassigned: see `admin partitions`); map version {response.map_version}"
    )


@admin.command()
@click.argument("partition_id")
@click.option("--to", "to_node_id", required=True, help="The node that takes the partition.")
@click.option(
    "--force",
    is_flag=True,
    help="Reassign even if the owner is up or suspect (the new owner serves its own disk).",
)
@click.pass_context
def repair(ctx: click.Context, partition_id: str, to_node_id: str, force: bool) -> None:
    """Reassign PARTITION_ID to another node (data comes back by restore or the old disk).

    For a partition whose node is lost (down). Refused while the owner is up or suspect,
    unless --force: moving data online is not built, so the new owner serves the range
    from its own disk (empty if it never held it).
    """
    from keyspan.v1 import control_pb2

    response = _call(
        ctx,
        "RepairPartition",
        control_pb2.RepairPartitionRequest(partition_id=partition_id, to_node_id=to_node_id, force=force),
    )
    click.echo(f"partition {partition_id} now assigned to {to_node_id}; map version {response.version}")
