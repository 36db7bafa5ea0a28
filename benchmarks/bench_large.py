#!/usr/bin/env python3
"""Large outputs: 50 displays of 2 MB each, three times on one connection; the median MB/s.

MB/s counts 10^6 bytes of output text per second, not wire bytes.  Run it alone::

    python benchmarks/bench_large.py [--large-count 50] [--large-size 2000000]
"""
from __future__ import annotations

import asyncio
import statistics
import time

import _harness
from _client import FORMATS, run, wait_ready
from _proc import CpuWindow

ROWS = [
    ("large_json", "iopub 2 MB outputs, legacy JSON", "MB/s", "speed"),
    ("large_v1", "iopub 2 MB outputs, v1", "MB/s", "speed"),
    ("cpu_large_json", "gateway CPU per MB, legacy JSON", "ms", "cost"),
    ("cpu_large_v1", "gateway CPU per MB, v1", "ms", "cost"),
]


def add_args(parser):
    parser.add_argument("--large-count", type=int, default=50)
    parser.add_argument("--large-size", type=int, default=2_000_000)
    parser.add_argument("--large-reps", type=int, default=3)


def code(count: int, size: int) -> str:
    return ("from IPython.display import display\n"
            f"_s = 'x' * {size}\n"
            f"for i in range({count}):\n"
            "    display({'text/plain': _s}, raw=True)\n")


async def measure(target, args, put):
    kid = target.new_kernel()
    try:
        for fmt in FORMATS:
            client = await target.connect(kid, fmt)
            got = [0]

            def count(m, got=got):
                got[0] += m.msg_type == "display_data"

            rates = []
            try:
                await wait_ready(client)
                await run(client, code(2, args.large_size))
                got[0] = 0
                async with asyncio.timeout(120):
                    with CpuWindow(target.pid) as cpu:
                        for _ in range(args.large_reps):
                            before = got[0]
                            t0 = time.perf_counter()
                            await run(client, code(args.large_count, args.large_size), count)
                            rates.append((got[0] - before) * args.large_size / 1e6 / (time.perf_counter() - t0))
            finally:
                await client.close()
            put(f"large_{fmt}", statistics.median(rates), all=rates)
            if cpu.seconds is not None and got[0]:
                put(f"cpu_large_{fmt}", cpu.seconds / (got[0] * args.large_size / 1e6) * 1e3)
    finally:
        target.delete_kernel(kid)


if __name__ == "__main__":
    _harness.run_module(__name__)
