#!/usr/bin/env python3
"""Small iopub messages: one execute displays 20,000 tiny outputs; delivered msg/s and gateway CPU per message.

Run it alone::

    python benchmarks/bench_small.py [--small-count 20000] [--targets direct,kg,jkg]
"""
from __future__ import annotations

import asyncio
import time

import _harness
from _client import FORMATS, run, wait_ready
from _proc import CpuWindow

ROWS = [
    ("small_json", "iopub small msgs, legacy JSON", "msg/s", "speed"),
    ("small_v1", "iopub small msgs, v1", "msg/s", "speed"),
    ("cpu_small_json", "gateway CPU per small msg, legacy JSON", "us", "cost"),
    ("cpu_small_v1", "gateway CPU per small msg, v1", "us", "cost"),
]


def add_args(parser):
    parser.add_argument("--small-count", type=int, default=20000, help="outputs per execute (20000)")


def code(count: int) -> str:
    return ("from IPython.display import display\n"
            f"for i in range({count}):\n"
            "    display({'text/plain': str(i)}, raw=True)\n")


async def measure(target, args, put):
    kid = target.new_kernel()
    try:
        for fmt in FORMATS:
            client = await target.connect(kid, fmt)
            got = [0]

            def count(m, got=got):
                got[0] += m.msg_type == "display_data"

            try:
                await wait_ready(client)
                await run(client, code(200))
                got[0] = 0
                async with asyncio.timeout(120):
                    with CpuWindow(target.pid) as cpu:
                        t0 = time.perf_counter()
                        await run(client, code(args.small_count), count)
                        elapsed = time.perf_counter() - t0
            finally:
                await client.close()
            put(f"small_{fmt}", got[0] / elapsed, received=got[0], sent=args.small_count)
            if cpu.seconds is not None:
                put(f"cpu_small_{fmt}", cpu.seconds / got[0] * 1e6)
    finally:
        target.delete_kernel(kid)


if __name__ == "__main__":
    _harness.run_module(__name__)
