"""Hostile WebSocket clients against a real gateway and kernel: bounded, and nobody else waits.

One gateway (small limits so that the attacks stay small) and one real kernel
for the module; the attacker and a well-behaved client share that kernel.
"""
import os
import socket
import struct
import time

import pytest
import websocket

from jkg import wire
from support import GatewayProcess, children_of, pid_alive, stdout_of
from test_hostile_decoders import v1_frame
from test_hostile_http import rss_mib

TOKEN = "hostile-ws-token"
PARTIAL_LIMIT = 24 * 1024 * 1024


@pytest.fixture(scope="module")
def setup():
    gateway = GatewayProcess("--max-message-size", str(64 * 1024 * 1024), "--client-partial-limit",
                             str(PARTIAL_LIMIT), "--max-client-buffers", "64", token=TOKEN).start()
    kernel = gateway.start_kernel()["id"]
    yield gateway, kernel
    kernels = children_of(gateway.process.pid)
    gateway.stop()
    assert not [pid for pid in kernels if pid_alive(pid)]


def round_trip(client) -> float:
    started = time.monotonic()
    assert stdout_of(client.run("print(6 * 7)", timeout=30)) == "42\n"
    return time.monotonic() - started


def attacker(gateway, kernel, v1=True):
    return websocket.create_connection(
        f"{gateway.ws_url}/api/kernels/{kernel}/channels?session_id=attacker{time.monotonic_ns()}",
        header=[f"Authorization: token {TOKEN}"], subprotocols=[wire.V1_PROTOCOL] if v1 else None, timeout=10)


def close_code(ws) -> int:
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return struct.unpack(">H", data[:2])[0] if len(data) >= 2 else 1005


def test_a_message_of_countless_empty_buffers_is_refused_at_once(setup):
    gateway, kernel = setup
    with gateway.connect(kernel, v1=True) as good:
        baseline = round_trip(good)
        ws = attacker(gateway, kernel)
        frame = v1_frame(2_000_000)  # 16 MB of offsets announcing two million empty buffers
        started = time.monotonic()
        ws.send_binary(frame)
        assert close_code(ws) == 4400
        refused_after = time.monotonic() - started
        ws.close()
        during = round_trip(good)
    assert refused_after < 5.0
    assert during < baseline + 2.0, (baseline, during)


def test_partial_frames_are_bounded_over_all_clients(setup):
    gateway, kernel = setup
    pid = gateway.process.pid
    before = rss_mib(pid)
    holders = []
    announced = 10 * 1024 * 1024  # three of these do not fit in 24 MiB
    codes = []
    try:
        with gateway.connect(kernel, v1=True) as good:
            refused_while_sending = set()
            for index in range(3):
                ws = attacker(gateway, kernel)
                holders.append(ws)
                header = struct.pack(">BBQ", 0x82, 0x80 | 127, announced) + os.urandom(4)
                try:
                    ws.sock.sendall(header + b"\0" * (4 * 1024 * 1024))  # and the rest never comes
                except OSError:  # refused on the header: the gateway dropped the connection
                    refused_while_sending.add(index)
                time.sleep(0.2)
            time.sleep(0.5)
            for index, ws in enumerate(holders):
                if index in refused_while_sending:
                    codes.append("dropped")
                    continue
                ws.settimeout(0.5)
                try:
                    codes.append(close_code(ws))
                except (websocket.WebSocketTimeoutException, socket.timeout):
                    codes.append(None)  # still held: within the budget
                except (websocket.WebSocketConnectionClosedException, ConnectionError):
                    codes.append("dropped")
            grown = rss_mib(pid) - before
            assert round_trip(good) < 10.0  # everyone else is served meanwhile
    finally:
        for ws in holders:
            ws.close()
    assert codes.count(None) == 2, codes  # two fit, the third did not
    assert codes[2] in (1009, "dropped"), codes
    assert grown < 2 * 4 + 24, f"gateway grew {grown:.0f} MiB"
    # the budget is given back when the holders go: a new large message goes through
    with gateway.connect(kernel, v1=True) as good:
        time.sleep(0.5)
        assert len(stdout_of(good.run(f"print(len({'x' * (3 * 1024 * 1024)!r}))", timeout=60))) > 0
