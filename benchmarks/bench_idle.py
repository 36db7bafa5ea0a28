#!/usr/bin/env python3
"""Idle WebSockets: the gateway's RSS growth for 1,000 open, idle WebSockets on one kernel.

Gateways only (``direct`` has no gateway).  Run it alone::

    python benchmarks/bench_idle.py [--idle-sockets 1000]
"""
from __future__ import annotations

import asyncio

import _harness
from _client import run, wait_ready
from _proc import rss_bytes

ROWS = [("idle_rss", "1000 idle WebSockets, gateway RSS growth", "MB", "cost")]


def add_args(parser):
    parser.add_argument("--idle-sockets", type=int, default=1000)


async def measure(target, args, put):
    if target.pid is None:
        return
    kid = target.new_kernel()
    clients = []
    try:
        first = await target.connect(kid, "v1")
        clients.append(first)
        await wait_ready(first)
        await asyncio.sleep(0.5)
        before = rss_bytes(target.pid)
        async with asyncio.timeout(120):
            for i in range(args.idle_sockets):
                clients.append(await target.connect(kid, "v1" if i % 2 else "json"))
            await asyncio.sleep(1.0)  # handshakes and nudges settle
            await run(first, "pass")  # the kernel still answers with all of them attached
        after = rss_bytes(target.pid)
        put("idle_rss", (after - before) / 1e6, before_mb=before / 1e6, after_mb=after / 1e6,
            connections=target.connections(kid))
    finally:
        await asyncio.gather(*(c.close() for c in clients))
        target.delete_kernel(kid)


if __name__ == "__main__":
    _harness.run_module(__name__)
