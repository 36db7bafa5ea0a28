#!/usr/bin/env python3
"""The machine's wake-up floor: CPU per message of a bare event-loop forwarder, one message per wake-up.

The CPU targets of issue 9 are absolute (µs of gateway CPU per execute, per
small message), but what one wake-up costs differs between machines, and on
a shared virtual machine between hours.  A forwarder that does nothing but
wake, ``recv`` and ``send`` -- no ZMTP, no WebSocket, no Jupyter -- is the
least any gateway built on that event loop can spend per message when
messages arrive one at a time, as a kernel's small outputs do.  Measured in
the same run as the gateways, it says how far above that floor a gateway is.

Three processes, as in the gateway benchmarks: a sender that paces small
messages like a busy kernel (a busy-wait between sends, so it holds a core as
a kernel does), the forwarder, and a receiver (this process).  The
forwarder's CPU is ``utime + stime`` from ``/proc/PID/stat`` over the
window, as for the gateways.  It runs once per round, on the ``direct``
target (the floor is the machine's, not a gateway's).

    python benchmarks/bench_floor.py [--floor-count 10000] [--floor-gap-us 400]
"""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time

import _harness
from _proc import CpuWindow

ROWS = [
    ("floor_asyncio", "bare asyncio forwarder, CPU per msg", "us", "cost"),
    ("floor_uvloop", "bare uvloop forwarder, CPU per msg", "us", "cost"),
]

_END = b"END"
_MESSAGE = b"x" * 300  # about one small display_data on the wire


def add_args(parser):
    parser.add_argument("--floor-count", type=int, default=10000, help="messages forwarded per loop (10000)")
    parser.add_argument("--floor-gap-us", type=int, default=400,
                        help="sender's pause between messages in µs (400: a kernel's pace of small outputs)")


def _listen() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    return listener


def forward(loop_name: str) -> None:
    """The forwarder's process: accept a sender and a receiver, pass bytes on until ``END``."""
    if loop_name == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    inbound, outbound = _listen(), _listen()
    print(inbound.getsockname()[1], outbound.getsockname()[1], flush=True)
    sink, _ = outbound.accept()
    source, _ = inbound.accept()
    sink.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    source.setblocking(False)

    def readable():
        data = source.recv(65536)
        sink.sendall(data)
        if not data or data.endswith(_END):
            loop.stop()

    loop.add_reader(source.fileno(), readable)
    loop.run_forever()
    time.sleep(60)  # stay until the parent has read this process's CPU from /proc, then kills it


def send(port: int, count: int, gap_us: int) -> None:
    """The sender's process: ``count`` messages, ``gap_us`` apart (busy-waiting, as a busy kernel)."""
    out = socket.create_connection(("127.0.0.1", port))
    out.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    gap = gap_us / 1e6
    for _ in range(count):
        out.sendall(_MESSAGE)
        until = time.perf_counter() + gap
        while time.perf_counter() < until:
            pass
    out.sendall(_END)
    out.close()


async def _one(loop_name: str, args, put) -> None:
    forwarder = subprocess.Popen([sys.executable, __file__, "--role", "forward", loop_name],
                                 stdout=subprocess.PIPE, text=True)
    sender = None
    try:
        inbound, outbound = map(int, forwarder.stdout.readline().split())
        reader, writer = await asyncio.open_connection("127.0.0.1", outbound)
        with CpuWindow(forwarder.pid) as cpu:
            sender = subprocess.Popen([sys.executable, __file__, "--role", "send", str(inbound),
                                       str(args.floor_count), str(args.floor_gap_us)])
            tail = b""
            async with asyncio.timeout(args.floor_count * args.floor_gap_us / 1e6 * 5 + 30):
                while not tail.endswith(_END):
                    data = await reader.read(65536)
                    if not data:
                        break
                    tail = (tail + data)[-len(_END):]
        writer.close()
        if cpu.seconds is not None:
            put(f"floor_{loop_name}", cpu.seconds / args.floor_count * 1e6)
    finally:
        for process in (sender, forwarder):
            if process is not None:
                process.kill()
                process.wait()


async def measure(target, args, put):
    if target.name != "direct":
        return
    await _one("asyncio", args, put)
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return
    await _one("uvloop", args, put)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--role"]:
        role = sys.argv[2]
        if role == "forward":
            forward(sys.argv[3])
        elif role == "send":
            send(int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        sys.exit(0)
    _harness.run_module(__name__)
