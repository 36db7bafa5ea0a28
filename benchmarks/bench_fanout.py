#!/usr/bin/env python3
"""Fan-out: one ``print`` seen by 100 clients of one kernel; time until the last one has it.

The clients are 100 WebSockets with distinct sessions (for ``direct``: one
client plus 99 iopub SUB sockets), all in this one asyncio process, as a
notebook server or a load tester would hold them.  Median of 5.  Run it alone::

    python benchmarks/bench_fanout.py [--fanout-clients 100] [--fanout-reps 5]
"""
from __future__ import annotations

import asyncio
import statistics
import time
import uuid

import _harness
from _client import FORMATS, wait_ready

ROWS = [
    ("fanout_json", "1 print to 100 clients (last), JSON", "ms", "time"),
    ("fanout_v1", "1 print to 100 clients (last), v1", "ms", "time"),
    ("fanout_v1_p50", "1 print to 100 clients (median), v1", "ms", "time"),
]


def add_args(parser):
    parser.add_argument("--fanout-clients", type=int, default=100)
    parser.add_argument("--fanout-reps", type=int, default=5)


async def _until(client, token: str, t0: float) -> float:
    while True:
        m = await client.recv()
        if m.msg_type == "stream" and token in m.content.get("text", ""):
            return time.perf_counter() - t0


async def one_print(sender, everyone, timeout: float) -> list[float]:
    """Seconds until each client has the output of one print (raises TimeoutError)."""
    token = uuid.uuid4().hex
    t0 = time.perf_counter()
    waits = [asyncio.ensure_future(_until(c, token, t0)) for c in everyone]
    try:
        async with asyncio.timeout(timeout):
            msg_id = await sender.execute(f"print({token!r})")
            times = await asyncio.gather(*waits)
    finally:
        for w in waits:
            w.cancel()
    return times, msg_id


async def measure(target, args, put):
    kid = target.new_kernel()
    try:
        for fmt in FORMATS:
            sender = await target.connect(kid, fmt)
            listeners = []
            try:
                await wait_ready(sender)
                for _ in range(args.fanout_clients - 1):
                    listeners.append(await target.listener(kid, fmt))
                everyone = [sender] + listeners
                for _ in range(20):  # warm-up: until every client receives iopub (SUB joins late)
                    try:
                        await one_print(sender, everyone, 5)
                        break
                    except TimeoutError:
                        continue
                lasts, medians = [], []
                for _ in range(args.fanout_reps):
                    times, _ = await one_print(sender, everyone, 60)
                    lasts.append(max(times) * 1e3)
                    medians.append(statistics.median(times) * 1e3)
                    await asyncio.sleep(0.2)  # let the idle status and reply drain
            finally:
                for c in [sender] + listeners:
                    await c.close()
            put(f"fanout_{fmt}", statistics.median(lasts), all=lasts)
            put(f"fanout_{fmt}_p50", statistics.median(medians))
    finally:
        target.delete_kernel(kid)


if __name__ == "__main__":
    _harness.run_module(__name__)
