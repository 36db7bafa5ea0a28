#!/usr/bin/env python3
"""Execute round trip: sequential ``pass`` executes on one connection, and the gateway's CPU per execute.

Each execute is timed from the send until both its ``execute_reply`` and its
iopub ``status: idle`` are in.  Run it alone::

    python benchmarks/bench_roundtrip.py [--n 300] [--targets direct,kg,jkg]
"""
from __future__ import annotations

import asyncio
import time

import _harness
from _client import FORMATS, run, wait_ready
from _proc import CpuWindow

ROWS = [
    ("rt_json_p50", "execute round trip p50, legacy JSON", "ms", "time"),
    ("rt_v1_p50", "execute round trip p50, v1", "ms", "time"),
    ("rt_v1_p90", "execute round trip p90, v1", "ms", "time"),
    ("cpu_exec_json", "gateway CPU per execute, legacy JSON", "us", "cost"),
    ("cpu_exec_v1", "gateway CPU per execute, v1", "us", "cost"),
]


def add_args(parser):
    parser.add_argument("--n", type=int, default=300, help="timed executes per format (300)")
    parser.add_argument("--warmup", type=int, default=30, help="executes before timing (30)")


def pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def measure(target, args, put):
    kid = target.new_kernel()
    try:
        for fmt in FORMATS:
            client = await target.connect(kid, fmt)
            try:
                await wait_ready(client)
                for _ in range(args.warmup):
                    await run(client, "pass")
                latencies = []
                async with asyncio.timeout(120):
                    with CpuWindow(target.pid) as cpu:
                        for _ in range(args.n):
                            t0 = time.perf_counter()
                            await run(client, "pass")
                            latencies.append(time.perf_counter() - t0)
            finally:
                await client.close()
            put(f"rt_{fmt}_p50", pct(latencies, 50) * 1e3)
            put(f"rt_{fmt}_p90", pct(latencies, 90) * 1e3)
            if cpu.seconds is not None:
                put(f"cpu_exec_{fmt}", cpu.seconds / args.n * 1e6)
    finally:
        target.delete_kernel(kid)


if __name__ == "__main__":
    _harness.run_module(__name__)
