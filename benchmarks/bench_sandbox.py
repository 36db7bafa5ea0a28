"""What the kernel sandbox costs: cold start, warm-pool start and execute round trip, bwrap vs none.

Run by hand (never by the test suite)::

    python benchmarks/bench_sandbox.py [--n 7] [--roundtrips 300]

One run measures, on gateways running side by side as separate ``twistd jkg`` processes (this script
is only the client), each measure interleaved across the configurations so that all see the same load:

- cold start: ``POST /api/kernels`` → WebSocket → ``kernel_info_reply``, p50 of ``--n`` starts;
- warm-pool start: the same with ``--prespawn-count 1`` (the pool refilled before each start);
- execute round trip: ``execute_request`` → ``execute_reply`` and ``idle``, p50 of ``--roundtrips``;

for ``--sandbox none``, ``--sandbox bwrap`` (network ``full``, TCP), ``--sandbox bwrap
--sandbox-network loopback`` (ipc) and ``--sandbox-network none`` (ipc and the seccomp filter), and prints the ratios against ``none`` with the load average.  Targets:
sandboxed cold start ≤ 1.2× unsandboxed, warm start ≤ 30 ms, round trip ≤ 1.05×.  Standalone (only
requests and websocket-client), 127.0.0.1 only; every process started is stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests
import websocket

ROOT = Path(__file__).resolve().parent.parent
PORT_LINE = re.compile(rb"GatewaySite (?:\(TLS\) )?starting on (\d+)")
CONFIGS = {
    "none": ["--sandbox", "none"],
    "bwrap": ["--sandbox", "bwrap"],
    "bwrap-lo": ["--sandbox", "bwrap", "--sandbox-network", "loopback"],
    "bwrap-ipc": ["--sandbox", "bwrap", "--sandbox-network", "none"],
}


class Gateway:
    """``twistd -n jkg`` in its own process group on an ephemeral port."""

    def __init__(self, args: list[str]):
        self.runtime = tempfile.mkdtemp(prefix="jkg-bench-sandbox-")
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": self.runtime, "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "jkg",
                   "--ip", "127.0.0.1", "--port", "0", "--state-db", "none", *args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                        start_new_session=True)
        self.output = bytearray()
        found = threading.Event()
        self.port = 0

        def read():
            for line in iter(self.process.stdout.readline, b""):
                self.output += line
                match = PORT_LINE.search(line)
                if match and not found.is_set():
                    self.port = int(match.group(1))
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(60) or not self.port:
            self.stop()
            raise RuntimeError(f"gateway did not start:\n{self.output.decode(errors='replace')[-2000:]}")
        self.url = f"http://127.0.0.1:{self.port}"

    def pooled(self) -> int:
        return self.output.count(b"pooled kernel")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


class Channel:
    """A legacy-JSON kernel WebSocket."""

    def __init__(self, gateway: Gateway, kernel_id: str):
        self.session = uuid.uuid4().hex
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{gateway.port}/api/kernels/{kernel_id}/channels?session_id={self.session}", timeout=60)

    def send(self, msg_type: str, content: dict) -> str:
        msg_id = uuid.uuid4().hex
        header = {"msg_id": msg_id, "msg_type": msg_type, "username": "bench", "session": self.session,
                  "date": "2026-01-01T00:00:00.000000Z", "version": "5.3"}
        self.ws.send(json.dumps({"header": header, "parent_header": {}, "metadata": {}, "content": content,
                                 "channel": "shell"}))
        return msg_id

    def recv(self, timeout: float) -> dict:
        self.ws.settimeout(max(timeout, 0.01))
        return json.loads(self.ws.recv())

    def close(self) -> None:
        self.ws.close()


def start_latency(gateway: Gateway) -> tuple[float, str]:
    started = time.perf_counter()
    response = requests.post(gateway.url + "/api/kernels", json={}, timeout=120)
    response.raise_for_status()
    kernel_id = response.json()["id"]
    channel = Channel(gateway, kernel_id)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg_id = channel.send("kernel_info_request", {})
            try:
                while True:
                    msg = channel.recv(0.5)
                    if msg["msg_type"] == "kernel_info_reply" and msg["parent_header"].get("msg_id") == msg_id:
                        return time.perf_counter() - started, kernel_id
            except websocket.WebSocketTimeoutException:
                continue
        raise TimeoutError("no kernel_info_reply")
    finally:
        channel.close()


def shutdown(gateway: Gateway, kernel_id: str) -> None:
    requests.delete(f"{gateway.url}/api/kernels/{kernel_id}", timeout=120)


def one_round_trip(channel: Channel) -> float:
    started = time.perf_counter()
    msg_id = channel.send("execute_request", {"code": "1", "silent": False, "store_history": False,
                                              "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})
    replied = idle = False
    while not (replied and idle):
        msg = channel.recv(30)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        replied = replied or msg["msg_type"] == "execute_reply"
        idle = idle or (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle")
    return time.perf_counter() - started


def interleaved(gateways: dict, n: int, measure) -> dict[str, list[float]]:
    """``measure(gateway, index)`` for each configuration in turn, n rounds: every configuration sees the same load."""
    times: dict[str, list[float]] = {name: [] for name in gateways}
    for index in range(n):
        for name, gateway in gateways.items():
            times[name].append(measure(gateway, index))
    return times


def cold(gateway: Gateway, index: int) -> float:
    elapsed, kernel_id = start_latency(gateway)
    shutdown(gateway, kernel_id)
    return elapsed


def warm(gateway: Gateway, index: int) -> float:
    deadline = time.monotonic() + 90
    while gateway.pooled() < index + 1 and time.monotonic() < deadline:  # the pool has refilled
        time.sleep(0.05)
    time.sleep(0.5)
    return cold(gateway, index)


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=7, help="starts per measure")
    parser.add_argument("--roundtrips", type=int, default=300)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args(argv)
    names = args.configs.split(",")
    results: dict[str, dict[str, float]] = {name: {} for name in names}
    load = [open("/proc/loadavg").read().split()[0]]
    for measure, extra in (("cold", []), ("warm", ["--prespawn-count", "1"]), ("rtt", [])):
        gateways = {}
        try:
            for name in names:
                gateways[name] = Gateway([*CONFIGS[name], *extra])
            if measure == "rtt":
                channels = {}
                for name, gateway in gateways.items():
                    _, kernel_id = start_latency(gateway)
                    channels[name] = Channel(gateway, kernel_id)
                    for _ in range(20):
                        one_round_trip(channels[name])
                times = interleaved(channels, args.roundtrips, lambda channel, index: one_round_trip(channel))
                for channel in channels.values():
                    channel.close()
            else:
                times = interleaved(gateways, args.n, cold if measure == "cold" else warm)
            for name in names:
                results[name][measure] = p50(times[name])
                print(f"{name:10} {measure:5} p50 {results[name][measure] * 1000:8.2f} ms", flush=True)
        except Exception as error:  # noqa: BLE001 - report and go on
            print(f"ERROR {measure}: {error}", file=sys.stderr)
        finally:
            for gateway in gateways.values():
                gateway.stop()
    load.append(open("/proc/loadavg").read().split()[0])
    base = results.get("none", {})
    print(f"\nload average (1 min) at start/end: {load[0]} / {load[1]}")
    print(f"{'config':10} {'cold ms':>9} {'x none':>7} {'warm ms':>9} {'x none':>7} {'rtt ms':>8} {'x none':>7}")
    for name, row in results.items():
        cells = []
        for measure in ("cold", "warm", "rtt"):
            value = row.get(measure, float("nan"))
            ratio = value / base[measure] if base.get(measure) else float("nan")
            cells.append(f"{value * 1000:9.2f} {ratio:7.2f}" if measure != "rtt" else f"{value * 1000:8.3f} {ratio:7.3f}")
        print(f"{name:10} " + " ".join(cells))
    print("targets: sandboxed cold <= 1.2x none; warm <= 30 ms; round trip <= 1.05x none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
