"""Kernel start latency and concurrent starts: jkg (cold and warm pool) vs direct vs jupyter-kernel-gateway.

Run by hand (never by the test suite)::

    python benchmarks/bench_lifecycle.py [--n 7] [--concurrent 50] [--targets direct,kg,jkg,jkg-pool]

Measures, in one run:
- start → ``kernel_info_reply`` p50: direct ``jupyter_client`` cold start (the floor), jupyter-kernel-gateway
  (``POST /api/kernels``, WebSocket, ``kernel_info_request``), jkg cold, jkg from a warm pool;
- N concurrent ``POST /api/kernels`` on one gateway: how many succeed, and the wall time.
Only 127.0.0.1 is used; every process started is stopped.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _gateway


def direct_cold_start(kernel_name: str) -> float:
    from jupyter_client import KernelManager

    km = KernelManager(kernel_name=kernel_name)
    started = time.perf_counter()
    km.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = km.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        return time.perf_counter() - started
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)


def gateway_start(target: _gateway.Gateway) -> tuple[float, str]:
    """POST /api/kernels, open the WebSocket, get a kernel_info_reply: the time a client waits."""

    async def until_kernel_info(kernel_id: str) -> None:
        client = await target.connect(kernel_id, "json")
        try:
            async with asyncio.timeout(60):
                while True:  # like jupyter_server's nudge: repeat until answered
                    msg_id = await client.send("kernel_info_request", {})
                    try:
                        async with asyncio.timeout(0.5):
                            while True:
                                msg = await client.recv()
                                if msg.msg_type == "kernel_info_reply" and msg.parent_id == msg_id:
                                    return
                    except TimeoutError:
                        continue
        finally:
            await client.close()

    started = time.perf_counter()
    response = target.http.post(target.base + "/api/kernels", json={"name": target.kernel_name}, timeout=120)
    response.raise_for_status()
    kernel_id = response.json()["id"]
    asyncio.run(until_kernel_info(kernel_id))
    return time.perf_counter() - started, kernel_id


def concurrent_starts(target: _gateway.Gateway, count: int) -> dict:
    started = time.perf_counter()

    def one(_):
        try:
            r = target.http.post(target.base + "/api/kernels", json={"name": target.kernel_name}, timeout=300)
            return r.status_code, (r.json().get("id") if r.status_code == 201 else r.text[:200])
        except Exception as error:  # noqa: BLE001
            return 0, repr(error)

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        results = list(pool.map(one, range(count)))
    elapsed = time.perf_counter() - started
    ok = [kid for code, kid in results if code == 201]
    for kid in ok:
        try:
            target.http.delete(target.base + f"/api/kernels/{kid}", timeout=120)
        except Exception:  # noqa: BLE001, S110 - clean-up is best effort
            pass
    return {"succeeded": len(ok), "of": count, "seconds": elapsed,
            "errors": sorted({str(kid)[:120] for code, kid in results if code != 201})[:3]}


def make_target(name: str, logdir: Path, extra: list[str]) -> _gateway.Gateway:
    if name == "kg":
        return _gateway.kg(logdir)
    return _gateway.jkg(name, _gateway.REPO, logdir, args=extra)


def p50(values):
    return statistics.median(values) * 1000 if values else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=7, help="starts per target for the latency figures")
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--targets", default="direct,kg,jkg,jkg-pool")
    parser.add_argument("--kernel-name", default="python3")
    args = parser.parse_args(argv)
    targets = args.targets.split(",")
    logdir = Path(tempfile.mkdtemp(prefix="jkg-bench-lifecycle-"))
    results: dict[str, dict] = {}
    if "direct" in targets:
        times = [direct_cold_start(args.kernel_name) for _ in range(args.n)]
        results["direct"] = {"start_p50_ms": p50(times)}
    for name in [t for t in targets if t != "direct"]:
        extra = ["--prespawn-count", "4"] if name == "jkg-pool" else []
        try:
            target = make_target(name, logdir, extra)
            target.start()
        except _gateway.Unavailable as error:
            print(f"SKIP {name}: {error}")
            continue
        try:
            if name == "jkg-pool":
                time.sleep(8)  # let the pool fill
            times = []
            for _ in range(args.n):
                elapsed, kernel_id = gateway_start(target)
                times.append(elapsed)
                target.http.delete(target.base + f"/api/kernels/{kernel_id}", timeout=120)
                if name == "jkg-pool":
                    time.sleep(3)  # refill before the next hand-out: measure the warm path
            results[name] = {"start_p50_ms": p50(times)}
            if name != "jkg-pool":
                results[name]["concurrent"] = concurrent_starts(target, args.concurrent)
        finally:
            target.stop()
    floor = results.get("direct", {}).get("start_p50_ms")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f} (2 cores)\n")
    print(f"{'target':10} {'start→kernel_info p50':>22} {'÷ direct':>9}  concurrent starts")
    for name, row in results.items():
        ratio = row["start_p50_ms"] / floor if floor else float("nan")
        concurrent = row.get("concurrent")
        extra = (f"{concurrent['succeeded']}/{concurrent['of']} in {concurrent['seconds']:.1f} s "
                 f"{concurrent['errors'] or ''}") if concurrent else ""
        print(f"{name:10} {row['start_p50_ms']:>19.0f} ms {ratio:>8.2f}x  {extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
