"""What metrics and tracing cost: Put and Get throughput of `keyspan serve` with them on,
as a ratio to the same load with them off.

Run: ``.venv/bin/python -m integration.perf.obs_overhead [--seconds 4] [--rounds 3]``

Each round starts one `keyspan serve` subprocess per setting (in a shuffled order, each
with a fresh data dir),
waits for health SERVING, then drives the same closed-loop load from this process: a
Put phase, then a Get phase over the keys written, `--concurrency` callers each. Traces
go to a real OTLP/gRPC receiver in this process (so the exporter really sends them), and
/metrics is scraped once per run (as Prometheus would). The report gives the median over
the rounds of each setting's ops/s and its ratio to "off", and the server's CPU time per
operation (from /proc, user + system) and its ratio to "off": on a shared 2-core machine
the CPU cost is the steadier of the two figures. The target: metrics on and tracing at
0.01 cost less than 10% (throughput ratio >= 0.90, CPU ratio <= 1.10).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from integration.otlp_receiver import TraceReceiver
from keyspan.v1 import kv_pb2, kv_pb2_grpc

KEYSPAN = Path(sys.executable).with_name("keyspan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings(receiver: TraceReceiver) -> dict[str, list[str]]:
    return {
        "off": [],
        "metrics": ["--metrics-address", "METRICS"],
        "metrics+trace@0.01": ["--metrics-address", "METRICS", "--otlp-endpoint", receiver.endpoint,
                               "--trace-sample-ratio", "0.01"],
        "metrics+trace@1.0": ["--metrics-address", "METRICS", "--otlp-endpoint", receiver.endpoint,
                              "--trace-sample-ratio", "1.0"],
    }  # fmt: skip


async def wait_serving(address: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"keyspan serve at {address} did not become SERVING")
            await asyncio.sleep(0.05)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Result = tuple[float, float, float, float]  # put/s, get/s, server CPU us per put, per get


async def drive(address: str, pid: int, seconds: float, concurrency: int, keys: int) -> Result:
    """Put and Get ops/s of a closed loop of `concurrency` callers, and server CPU per op."""
    value = os.urandom(100)
    async with grpc.aio.insecure_channel(address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)

        async def loop(op: str, stop_at: float, rng: random.Random) -> int:
            done = 0
            while time.monotonic() < stop_at:
                key = b"k%06d" % rng.randrange(keys)
                if op == "put":
                    await kv.Put(kv_pb2.PutRequest(key=key, value=value))
                else:
                    await kv.Get(kv_pb2.GetRequest(key=key))
                done += 1
            return done

        rates, cpu = [], []
        for op in ("put", "get"):
            started, cpu_before = time.monotonic(), cpu_s(pid)
            counts = await asyncio.gather(
                *(loop(op, started + seconds, random.Random(i)) for i in range(concurrency))
            )
            rates.append(sum(counts) / (time.monotonic() - started))
            cpu.append((cpu_s(pid) - cpu_before) / sum(counts) * 1e6)
        return rates[0], rates[1], cpu[0], cpu[1]


async def one_run(flags: list[str], args: argparse.Namespace) -> Result:
    port, metrics_port = free_port(), free_port()
    flags = [f.replace("METRICS", f"127.0.0.1:{metrics_port}") for f in flags]
    with tempfile.TemporaryDirectory(prefix="keyspan-obs-") as data:
        cmd = [str(KEYSPAN), "serve", "--address", f"127.0.0.1:{port}", "--data", data]
        cmd += ["--synchronous", args.synchronous, *flags]
        env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "KEYSPAN_LOG_LEVEL": "WARNING"}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await wait_serving(f"127.0.0.1:{port}")
            rates = await drive(f"127.0.0.1:{port}", proc.pid, args.seconds, args.concurrency, args.keys)
            if "--metrics-address" in flags:
                url = f"http://127.0.0.1:{metrics_port}/metrics"
                await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
            return rates
        finally:
            proc.terminate()
            proc.wait(30)


async def main(args: argparse.Namespace) -> None:
    receiver = TraceReceiver()
    runs: dict[str, list[Result]] = {}
    try:
        for r in range(args.rounds):
            # A new order each round, so a neighbour's load does not always hit one setting.
            order = list(settings(receiver).items())
            random.Random(r).shuffle(order)
            for name, flags in order:
                runs.setdefault(name, []).append(await one_run(flags, args))
                put, get, put_us, get_us = runs[name][-1]
                print(
                    f"round {r + 1} {name:<20} put {put:7.0f}/s {put_us:6.0f} us CPU"
                    f"  get {get:7.0f}/s {get_us:6.0f} us CPU",
                    flush=True,
                )
    finally:
        receiver.close()
    base = [statistics.median(run[k] for run in runs["off"]) for k in range(4)]
    print(
        f"\nmedian of {args.rounds} rounds, {args.seconds:g} s per phase, {args.concurrency} callers, "
        f"synchronous={args.synchronous}"
    )
    print("setting               put/s ratio  CPU us ratio    get/s ratio  CPU us ratio")
    for name in settings(receiver):
        results = runs[name]
        m = [statistics.median(run[k] for run in results) for k in range(4)]
        print(
            f"{name:<20} {m[0]:6.0f} {m[0] / base[0]:5.2f} {m[2]:7.0f} {m[2] / base[2]:5.2f}"
            f"   {m[1]:6.0f} {m[1] / base[1]:5.2f} {m[3]:7.0f} {m[3] / base[3]:5.2f}"
        )
    print(f"spans received: {len(receiver.spans)}")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every setting (median)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent callers")
    parser.add_argument("--keys", type=int, default=10_000, help="distinct keys")
    parser.add_argument(
        "--synchronous",
        choices=["FULL", "NORMAL"],
        default="FULL",
        help="NORMAL takes the fsync (and a busy disk's noise) out of the Put figures",
    )
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
