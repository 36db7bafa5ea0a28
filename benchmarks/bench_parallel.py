#!/usr/bin/env python3
"""Parallel executes: 8 kernels, one connection each, 100 sequential ``pass`` executes on each, all at once.

Reports executes/s over all kernels and the gateway's CPU per execute.  Run it alone::

    python benchmarks/bench_parallel.py [--par-kernels 8] [--par-execs 100]
"""
from __future__ import annotations

import asyncio
import time

import _harness
from _client import run, wait_ready
from _proc import CpuWindow

ROWS = [
    ("par_v1", "8 kernels in parallel, v1", "exec/s", "speed"),
    ("cpu_par_v1", "gateway CPU per parallel execute, v1", "us", "cost"),
]


def add_args(parser):
    parser.add_argument("--par-kernels", type=int, default=8)
    parser.add_argument("--par-execs", type=int, default=100)


async def measure(target, args, put):
    kids = [target.new_kernel() for _ in range(args.par_kernels)]
    clients = []
    try:
        for kid in kids:
            clients.append(await target.connect(kid, "v1"))
        for client in clients:
            await wait_ready(client)

        async def loop(client):
            for _ in range(args.par_execs):
                await run(client, "pass")

        async with asyncio.timeout(120):
            with CpuWindow(target.pid) as cpu:
                t0 = time.perf_counter()
                await asyncio.gather(*(loop(c) for c in clients))
                elapsed = time.perf_counter() - t0
        total = len(clients) * args.par_execs
        put("par_v1", total / elapsed)
        if cpu.seconds is not None:
            put("cpu_par_v1", cpu.seconds / total * 1e6)
    finally:
        for client in clients:
            await client.close()
        for kid in kids:
            target.delete_kernel(kid)


if __name__ == "__main__":
    _harness.run_module(__name__)
