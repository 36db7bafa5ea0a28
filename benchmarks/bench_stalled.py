#!/usr/bin/env python3
"""A stalled client: one client reads 500 MB of 2 MB outputs while another on the same kernel never reads.

Two results: the reader's speed with the stalled client present divided by
its speed alone, and the gateway's peak RSS growth meanwhile (sampled every
20 ms).  The gateway should disconnect the stalled client (4008) rather than
buffer for it.  Run it alone::

    python benchmarks/bench_stalled.py [--slow-mb 500]
"""
from __future__ import annotations

import asyncio
import time

import _harness
from _client import run, wait_ready
from _proc import rss_bytes

ROWS = [
    ("slow_speed", "stalled client: reader speed vs unloaded", "ratio", "speed"),
    ("slow_rss", "stalled client: gateway RSS growth", "MB", "cost"),
]


def add_args(parser):
    parser.add_argument("--slow-mb", type=float, default=500)
    parser.add_argument("--slow-chunk", type=int, default=2_000_000)


async def _stream(client, code: str, size: int) -> float:
    got = [0]

    def count(m):
        got[0] += m.msg_type == "display_data"

    t0 = time.perf_counter()
    await run(client, code, count)
    return got[0] * size / 1e6 / (time.perf_counter() - t0)


async def measure(target, args, put):
    size = args.slow_chunk
    count = max(1, int(args.slow_mb * 1e6 // size))
    code = ("from IPython.display import display\n"
            f"_s = 'x' * {size}\n"
            f"for i in range({count}):\n"
            "    display({'text/plain': _s}, raw=True)\n")
    kid = target.new_kernel()
    reader = stalled = None
    try:
        reader = await target.connect(kid, "v1")
        await wait_ready(reader)
        async with asyncio.timeout(300):
            await _stream(reader, code, size)  # warm-up: the first big burst stalls fresh processes
            alone = await _stream(reader, code, size)
            # never read from: websockets stops reading its socket once its small queue is full
            stalled = await target.listener(kid, "v1")
            stalled.stop_reading()
            await asyncio.sleep(0.5)
            peak = before = rss_bytes(target.pid) or 0

            async def sample():
                nonlocal peak
                while True:
                    peak = max(peak, rss_bytes(target.pid) or 0)
                    await asyncio.sleep(0.02)

            sampler = asyncio.ensure_future(sample())
            try:
                loaded = await _stream(reader, code, size)
            finally:
                sampler.cancel()
        put("slow_speed", loaded / alone, alone_mb_s=alone, loaded_mb_s=loaded)
        if target.pid is not None:
            put("slow_rss", (peak - before) / 1e6, connections_after=target.connections(kid))
    finally:
        for c in (reader, stalled):
            if c is not None:
                await c.close()
        target.delete_kernel(kid)


if __name__ == "__main__":
    _harness.run_module(__name__)
