"""notebook-http throughput and latency: jkg vs jupyter-kernel-gateway 3.0.1, in one run.

One notebook with a trivial endpoint (``# GET /hello`` printing a line) is
served by each target; then, for 1 and 32 concurrent clients (keep-alive
HTTP/1.1 connections, all in this process, never in a gateway's), requests
are sent back to back for ``--seconds`` and we report requests/s, p50 and
p99 latency, and the gateway's own CPU per request (from /proc, over exactly
the measured window).  Targets:

- ``kg``: jupyter-kernel-gateway 3.0.1 as its users run it (``prespawn_count``
  unset: one kernel); ``kgN`` (``--kg-prespawn N``): the same with N kernels.
- ``direct`` (1 client only): the same assignment and print executed
  straight over ZeroMQ on a kernel -- the floor, to tell the machine's
  jitter from the gateway's;
- ``jkg``: ``--api notebook-http`` with a pool of ``--jkg-kernels`` (it
  starts with one and grows under load; the warm-up lets it grow).

The issue's targets, printed at the end: jkg >= 5x kg's throughput at 32
clients; jkg's p99 <= 2x its p50 at 1 client.  Numbers on a shared 2-core
machine are noisy: targets run round-robin in the same run, the load average
is printed with every round, and the ratios are what to quote.

With ``--interleave SECONDS`` the 1-client level is measured with the targets
and ``direct`` taking turns of that length, so that all see the same load.

    python benchmarks/bench_notebook_http.py --seconds 12 --rounds 2 --interleave 0.25
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _client
import _gateway
import _proc

HERE = Path(__file__).resolve().parent
NOTEBOOK = {
    "cells": [
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": "import json"},
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
         "source": "# GET /hello\nprint('hello world')"},
    ],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                 "language_info": {"name": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


class Connection:
    """One keep-alive HTTP/1.1 connection sending ``GET path`` and reading whole responses."""

    def __init__(self, reader, writer, host: str, path: str):
        self.reader, self.writer = reader, writer
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench\r\n\r\n".encode()

    @classmethod
    async def open(cls, port: int, path: str) -> "Connection":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, f"127.0.0.1:{port}", path)

    async def get(self) -> int:
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


async def load(port: int, path: str, clients: int, seconds: float) -> tuple[list[float], int]:
    """``clients`` connections sending back to back for ``seconds``; latencies (s) and errors."""
    connections = [await Connection.open(port, path) for _ in range(clients)]
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def worker(connection):
        nonlocal errors
        while time.perf_counter() < stop:
            started = time.perf_counter()
            status = await connection.get()
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors += 1

    try:
        await asyncio.gather(*(worker(c) for c in connections))
    finally:
        for connection in connections:
            connection.close()
    return latencies, errors


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(latencies: list[float], elapsed: float, errors: int, cpu_seconds: float) -> dict:
    count = len(latencies)
    return {"rps": count / elapsed, "p50": percentile(latencies, 0.5) * 1000, "p99": percentile(latencies, 0.99) * 1000,
            "errors": errors, "cpu_us": cpu_seconds / max(1, count) * 1e6, "n": count, "raw": latencies}


def measure(target, clients: int, seconds: float) -> dict:
    with _proc.CpuWindow(target.pid) as cpu:
        started = time.perf_counter()
        latencies, errors = asyncio.run(load(target.port, "/hello", clients, seconds))
        elapsed = time.perf_counter() - started
    return summary(latencies, elapsed, errors, cpu.seconds or 0)


DIRECT_CODE = 'REQUEST = "{\\"body\\": \\"\\", \\"args\\": {}, \\"path\\": {}, \\"headers\\": {}}"\nprint("hello world")'


def measure_direct(direct, seconds: float) -> dict:
    """The floor at 1 client: the same execution straight over ZeroMQ to a kernel (no HTTP, no gateway)."""
    kernel = direct.new_kernel()

    async def loop():
        client = await direct.connect(kernel, "v1")
        try:
            await _client.wait_ready(client)
            for _ in range(30):
                await _client.run(client, DIRECT_CODE)
            latencies = []
            stop = time.perf_counter() + seconds
            while time.perf_counter() < stop:
                started = time.perf_counter()
                await _client.run(client, DIRECT_CODE)
                latencies.append(time.perf_counter() - started)
            return latencies
        finally:
            await client.close()

    try:
        started = time.perf_counter()
        latencies = asyncio.run(loop())
        elapsed = time.perf_counter() - started
    finally:
        direct.delete_kernel(kernel)
    return summary(latencies, elapsed, 0, 0.0)


def measure_interleaved(targets, direct, seconds: float, turn: float) -> dict:
    """1 client: every target and ``direct`` take turns of ``turn`` seconds, ``seconds`` each in all.

    Sequential windows of several seconds see different loads on a shared
    machine; turns of a fraction of a second see the same one, so the
    tails compare.
    """
    kernel = direct.new_kernel()

    async def loop():
        connections = {target.name: await Connection.open(target.port, "/hello") for target in targets}
        client = await direct.connect(kernel, "v1")

        async def direct_call() -> int:
            await _client.run(client, DIRECT_CODE)
            return 200

        calls = {name: connection.get for name, connection in connections.items()}
        calls["direct"] = direct_call
        pids = {target.name: target.pid for target in targets}
        latencies = {name: [] for name in calls}
        busy, cpu, errors = dict.fromkeys(calls, 0.0), dict.fromkeys(calls, 0.0), dict.fromkeys(calls, 0)
        try:
            await _client.wait_ready(client)
            for _ in range(30):
                await _client.run(client, DIRECT_CODE)
            for _ in range(max(1, round(seconds / turn))):
                for name, call in calls.items():
                    with _proc.CpuWindow(pids.get(name)) as window:
                        started = turn_started = time.perf_counter()
                        while started - turn_started < turn:
                            status = await call()
                            latencies[name].append(time.perf_counter() - started)
                            errors[name] += status != 200
                            started = time.perf_counter()
                        busy[name] += started - turn_started
                    cpu[name] += window.seconds or 0
        finally:
            for connection in connections.values():
                connection.close()
            await client.close()
        return {name: summary(latencies[name], busy[name], errors[name], cpu[name]) for name in calls}

    try:
        return asyncio.run(loop())
    finally:
        direct.delete_kernel(kernel)


def make_targets(args, logdir: Path, notebook: Path) -> list:
    jkg_args = ["--api", "notebook-http", "--seed-uri", str(notebook), "--notebook-max-kernels", str(args.jkg_kernels)]
    targets = [_gateway.jkg("jkg", _gateway.REPO, logdir, args=jkg_args)]
    for spec in args.jkg:  # A/B: NAME=TREE[;ENV=VALUE...], e.g. a git worktree of a variant commit
        name, _, rest = spec.partition("=")
        tree, *settings = rest.split(";")
        env = dict(setting.split("=", 1) for setting in settings if setting)
        targets.append(_gateway.jkg(name, Path(tree), logdir, env=env, args=jkg_args))
    exe = str(_gateway.kg_exe())
    for prespawn in [1] + [n for n in args.kg_prespawn if n != 1]:
        port = _gateway.free_port()
        cmd = [exe, "--KernelGatewayApp.api=kernel_gateway.notebook_http", f"--KernelGatewayApp.seed_uri={notebook}",
               "--KernelGatewayApp.ip=127.0.0.1", f"--KernelGatewayApp.port={port}",
               "--KernelGatewayApp.port_retries=0"]
        if prespawn != 1:
            cmd.append(f"--KernelGatewayApp.prespawn_count={prespawn}")
        env = dict(_gateway.os.environ, JUPYTER_RUNTIME_DIR=str(logdir / f"runtime-kg{prespawn}"))
        env.pop("PYTHONPATH", None)
        name = "kg" if prespawn == 1 else f"kg{prespawn}"
        targets.append(_gateway.Gateway(name, cmd, env, str(logdir), port, logdir))
    for target in targets:
        target.ready_path = "/hello"
    return targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per target and concurrency")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", default="1,32", help="comma-separated concurrency levels")
    parser.add_argument("--jkg-kernels", type=int, default=4, help="jkg's --notebook-max-kernels")
    parser.add_argument("--kg-prespawn", default="", help="also run kg with these prespawn counts, e.g. 4")
    parser.add_argument("--jkg", action="append", default=[], metavar="NAME=TREE[;ENV=VALUE...]",
                        help="another jkg to compare, started from source tree TREE (repeatable)")
    parser.add_argument("--interleave", type=float, default=0, metavar="SECONDS",
                        help="at 1 client, targets and direct take turns of SECONDS each (same load for all)")
    parser.add_argument("--dump", metavar="FILE", help="write every latency (ms) per target, level, round as JSON")
    args = parser.parse_args()
    args.kg_prespawn = [int(n) for n in args.kg_prespawn.split(",") if n.strip()]
    levels = [int(n) for n in args.clients.split(",")]
    logdir = Path(tempfile.mkdtemp(prefix="jkg-bench-nbhttp-"))
    notebook = logdir / "hello.ipynb"
    notebook.write_text(json.dumps(NOTEBOOK))
    _gateway.log(f"logs in {logdir}; load {_proc.loadavg()}")
    targets = make_targets(args, logdir, notebook)
    direct = _gateway.Direct(logdir)
    try:
        for target in targets:
            target.start()
        for target in targets:  # warm-up: jkg's pool grows; every kernel has run the cell once
            measure(target, max(levels), 2.0)
        results: dict = {}
        for round_number in range(1, args.rounds + 1):
            for clients in levels:
                if clients == 1 and args.interleave:
                    for name, result in measure_interleaved(targets, direct, args.seconds, args.interleave).items():
                        results.setdefault((name, 1), []).append(result)
                    continue
                for target in targets:
                    results.setdefault((target.name, clients), []).append(measure(target, clients, args.seconds))
                if clients == 1:
                    results.setdefault(("direct", 1), []).append(measure_direct(direct, args.seconds))
            _gateway.log(f"round {round_number} done; load {_proc.loadavg()}")
    finally:
        for target in targets:
            target.stop()
    print(f"\nnotebook-http GET /hello, {args.seconds:g} s per measure, median of {args.rounds} rounds; "
          f"load {_proc.loadavg()}")
    if args.dump:
        Path(args.dump).write_text(json.dumps({f"{name} {clients}": [[x * 1000 for x in run["raw"]] for run in runs]
                                               for (name, clients), runs in results.items()}))
    print(f"{'target':8} {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99/p50':>7} "
          f"{'cpu us/req':>10} {'n':>6} {'errors':>6}")
    medians = {}
    for (name, clients), runs in results.items():
        row = {key: statistics.median(run[key] for run in runs) for key in runs[0] if key != "raw"}
        medians[(name, clients)] = row
        print(f"{name:8} {clients:7d} {row['rps']:9.1f} {row['p50']:8.2f} {row['p99']:8.2f} "
              f"{row['p99'] / row['p50']:7.2f} {row['cpu_us']:10.0f} {int(row['n']):6d} {int(row['errors']):6d}")
    top = max(levels)
    ratio = medians[("jkg", top)]["rps"] / medians[("kg", top)]["rps"]
    jitter = medians[("jkg", 1)]["p99"] / medians[("jkg", 1)]["p50"]
    if ("direct", 1) in medians:
        floor = medians[("direct", 1)]["p99"] / medians[("direct", 1)]["p50"]
        print(f"direct ZeroMQ floor p99 / p50 at 1 client (same load): {floor:.2f}; "
              f"jkg p50 / direct p50: {medians[('jkg', 1)]['p50'] / medians[('direct', 1)]['p50']:.2f}")
    print(f"\njkg / kg throughput at {top} clients: {ratio:.1f}x (target >= 5x: {'met' if ratio >= 5 else 'NOT met'})")
    print(f"jkg p99 / p50 at 1 client: {jitter:.2f} (target <= 2: {'met' if jitter <= 2 else 'NOT met'})")
    for target in targets[1:]:
        if target.name.startswith("kg") or (target.name, 1) not in medians:
            continue
        row = medians[(target.name, 1)]
        print(f"{target.name} p99 / p50 at 1 client: {row['p99'] / row['p50']:.2f}"
              + (f"; {target.name} / kg throughput at {top} clients: "
                 f"{medians[(target.name, top)]['rps'] / medians[('kg', top)]['rps']:.1f}x" if top != 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
