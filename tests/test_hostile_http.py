"""Hostile HTTP clients against a real gateway with tenants: every attack meets a bound.

One gateway for the module, with small limits so that each attack stays small
and quick.  Attacks come from other loopback addresses (127.0.0.2, .3) where
they would otherwise lock 127.0.0.1 out of the tests that follow.
"""
import base64
import concurrent.futures
import http.client
import json
import os
import re
import signal
import socket
import statistics
import time
from pathlib import Path

import pytest
import websocket

from support import GatewayProcess, children_of, pid_alive
from test_tenants import As, tenants_cli

HEADER_TIMEOUT = 2.0
PENDING_PER_ADDRESS = 20
BODY_LIMIT = 64 * 1024


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raw(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int([line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")][0])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, json.loads(body[:length])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hostile") / "tenants.toml")
    tokens = {name: tenants_cli("add", name, "--file", path) for name in ("alice", "bob")}
    tokens["carol"] = tenants_cli("add", "carol", "--file", path, "--admin")
    tenants_cli("password", "alice", "--file", path, input_text="correct horse battery\n")
    gateway = GatewayProcess("--tenants", path, "--header-timeout", str(HEADER_TIMEOUT), "--max-pending-per-address",
                             str(PENDING_PER_ADDRESS), "--max-body-size", str(BODY_LIMIT),
                             "--max-sessions-per-tenant", "3").start()
    yield gateway, path, tokens
    kernels = children_of(gateway.process.pid)
    gateway.stop()
    assert not [pid for pid in kernels if pid_alive(pid)]


def test_descriptor_limit_raised_to_the_hard_limit(setup):
    gateway, _, _ = setup
    for line in Path(f"/proc/{gateway.process.pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            assert soft == hard
            break
    else:
        raise AssertionError("no Max open files line")


def test_announced_huge_body_is_refused_before_reading_and_before_authentication(setup):
    gateway, _, _ = setup
    pid = gateway.process.pid
    before = rss_mib(pid)
    with raw(gateway.port) as sock:
        sock.sendall(b"POST /api/kernels HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1073741824\r\n"
                     b"Content-Type: application/json\r\n\r\n" + b"x" * 200_000)
        status, body = read_response(sock)
    assert status == 413, body  # not 401: nothing was authenticated, nothing stored
    assert "--max-body-size" in body["message"]
    assert rss_mib(pid) - before < 16


def test_chunked_body_over_the_limit_is_cut_off(setup):
    gateway, _, tokens = setup
    pid = gateway.process.pid
    before = rss_mib(pid)
    with raw(gateway.port) as sock:
        sock.sendall(b"POST /api/kernels HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
                     b"Authorization: token " + tokens["bob"].encode() + b"\r\n\r\n")
        chunk = b"%x\r\n" % 65536 + b"{" * 65536 + b"\r\n"
        sent = 0
        try:
            for _ in range(256):  # 16 MiB offered; the gateway stops listening after 64 KiB
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        status, body = read_response(sock)
    assert status == 413, body
    assert sent < 16 * 1024 * 1024 or True  # the kernel may take what we send, the gateway does not keep it
    assert rss_mib(pid) - before < 16
    assert As(gateway, tokens["bob"]).request("GET", "/api").status_code == 200


def test_slow_headers_are_bounded_per_address_and_in_time(setup):
    gateway, _, tokens = setup
    pid = gateway.process.pid
    fds_before = open_fds(pid)
    slow = []
    try:
        for _ in range(PENDING_PER_ADDRESS + 10):
            sock = raw(gateway.port, "127.0.0.2")
            sock.sendall(b"GET /api HTTP/1.1\r\nHost: lo")  # and never the rest
            slow.append(sock)
        # another client is served at once while the attack holds its connections
        started = time.monotonic()
        assert As(gateway, tokens["bob"]).request("GET", "/api").status_code == 200
        assert time.monotonic() - started < 2.0
        # connections over the per-address limit were refused with a clear 503
        refused = 0
        for sock in slow[PENDING_PER_ADDRESS:]:
            status, body = read_response(sock)
            assert status == 503 and "--max-pending-per-address" in body["message"]
            refused += 1
        assert refused == 10
        # the others are answered 408 and closed once the header timeout passes
        deadline = time.monotonic() + HEADER_TIMEOUT + 5
        for sock in slow[:PENDING_PER_ADDRESS]:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            status, _ = read_response(sock)
            assert status == 408
            assert sock.recv(100) == b""
    finally:
        for sock in slow:
            sock.close()
    deadline = time.monotonic() + 5
    while open_fds(pid) > fds_before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_fds(pid) <= fds_before + 2


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def request_from(source: str, gateway, method: str, path: str, headers: dict, body=None) -> tuple[int, float]:
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=60, source_address=(source, 0))
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        connection.close()


def test_concurrent_wrong_passwords_are_capped_and_do_not_slow_others(setup):
    gateway, _, tokens = setup
    bob = As(gateway, tokens["bob"])
    assert bob.request("GET", "/api/kernelspecs").status_code == 200  # warm: the first scan is slower
    attempts = 100
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(request_from, "127.0.0.3", gateway, "GET", "/api", basic("alice", f"wrong{i}"))
                   for i in range(attempts)]
        time.sleep(0.3)
        # another tenant's work that needs the reactor's thread pool is not queued behind bcrypt
        started = time.monotonic()
        assert bob.request("GET", "/api/kernelspecs").status_code == 200
        other = time.monotonic() - started
        statuses = [future.result()[0] for future in futures]
    assert set(statuses) <= {401, 429, 503}  # 503: over --max-pending-per-address, refused before reading
    # at most the per-address cap at a time, and the lockout (10 failures) counts attempts in progress
    assert statuses.count(401) <= 10 + 4, statuses
    assert statuses.count(429) + statuses.count(503) >= attempts - 14
    assert other < 3.0, f"another tenant waited {other:.2f} s"  # was 20 s with bcrypt on the shared pool
    # the right password from another address still works
    assert request_from("127.0.0.4", gateway, "GET", "/api", basic("alice", "correct horse battery"))[0] == 200


def test_overlong_password_is_401_and_counted(setup):
    gateway, _, _ = setup
    statuses = [request_from("127.0.0.5", gateway, "GET", "/api", basic("alice", "p" * 100))[0] for _ in range(12)]
    assert statuses[:10] == [401] * 10  # not 500
    assert statuses[-1] == 429  # counted by the lockout


def test_unknown_names_take_as_long_as_known_ones(setup):
    gateway, _, _ = setup

    def timing(user: str, source: str) -> float:
        return statistics.median(request_from(source, gateway, "GET", "/api", basic(user, "wrong password"))[1]
                                 for _ in range(3))

    known = timing("alice", "127.0.0.6")
    unknown = timing("nobody-here", "127.0.0.7")
    no_password = timing("bob", "127.0.0.8")  # a tenant without a password
    assert known > 0.05  # bcrypt did run
    assert unknown > known / 2 and no_password > known / 2, (known, unknown, no_password)


def test_deeply_nested_json_is_400(setup):
    gateway, _, tokens = setup
    response = As(gateway, tokens["bob"]).request("POST", "/api/kernels", data="[" * 50_000 + "]" * 50_000,
                                                  headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 413)
    nested = "[" * 20_000 + "]" * 20_000  # within the body limit
    response = As(gateway, tokens["bob"]).request("POST", "/api/sessions", data=nested)
    assert response.status_code == 400 and response.json()["reason"] == "Bad Request"


def test_nul_byte_in_kernelspec_resource_path_is_404(setup):
    gateway, _, tokens = setup
    response = As(gateway, tokens["bob"]).request("GET", "/kernelspecs/python3/logo%00.png")
    assert response.status_code == 404 and response.json()["reason"] == "Not Found"


@pytest.fixture(scope="module")
def bob_kernel(setup):
    gateway, _, tokens = setup
    return As(gateway, tokens["bob"]).start()["id"]


def test_status_shows_a_tenant_only_its_own_connections(setup, bob_kernel):
    gateway, _, tokens = setup
    bob, alice, carol = (As(gateway, tokens[name]) for name in ("bob", "alice", "carol"))
    ws = bob.ws(bob_kernel)
    try:
        assert bob.request("GET", "/api/status").json()["connections"] == 1
        alice_status = alice.request("GET", "/api/status").json()
        assert alice_status["connections"] == 0 and alice_status["kernels"] == 0
        assert alice_status["last_activity"] == alice_status["started"]
        assert carol.request("GET", "/api/status").json()["connections"] >= 1  # an admin sees everyone's
    finally:
        ws.close()


def test_sessions_per_tenant_are_bounded(setup, bob_kernel):
    gateway, _, tokens = setup
    bob = As(gateway, tokens["bob"])
    for index in range(3):
        response = bob.request("POST", "/api/sessions", json={"path": f"n{index}.ipynb", "type": "notebook",
                                                              "kernel": {"id": bob_kernel}})
        assert response.status_code == 201, response.text
    refused = bob.request("POST", "/api/sessions", json={"path": "n4.ipynb", "type": "notebook",
                                                         "kernel": {"id": bob_kernel}})
    assert refused.status_code == 403 and "--max-sessions-per-tenant" in refused.json()["message"]
    alice = As(gateway, tokens["alice"])  # other tenants are not affected
    assert alice.request("GET", "/api/sessions").json() == []


def test_reload_that_revokes_a_token_or_a_password_closes_their_websockets(setup, bob_kernel):
    gateway, path, tokens = setup
    ws = As(gateway, tokens["bob"]).ws(bob_kernel)
    alice_kernel = As(gateway, tokens["alice"]).start()["id"]
    by_password = websocket.create_connection(
        f"{gateway.ws_url}/api/kernels/{alice_kernel}/channels?session_id=basic",
        header=[f"Authorization: {basic('alice', 'correct horse battery')['Authorization']}"], timeout=10)
    carol_kernel = As(gateway, tokens["carol"]).start()["id"]
    other = As(gateway, tokens["carol"]).ws(carol_kernel)
    try:
        new_token = tenants_cli("rotate", "bob", "--file", path)
        tenants_cli("password", "alice", "--file", path, input_text="another long password\n")
        os.kill(gateway.process.pid, signal.SIGHUP)
        for revoked in (ws, by_password):
            revoked.settimeout(15)
            while True:  # anything still queued for it, then the close
                opcode, data = revoked.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    break
            assert int.from_bytes(data[:2], "big") == 4401 and b"revoked" in data[2:]
        deadline = time.monotonic() + 10
        while As(gateway, new_token).request("GET", "/api").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert As(gateway, tokens["bob"]).request("GET", "/api").status_code == 401
        other.ping(b"still there")  # carol's socket was not touched
        other.settimeout(10)
        assert other.recv_data(control_frame=True)[0] == websocket.ABNF.OPCODE_PONG
    finally:
        ws.close()
        by_password.close()
        other.close()


def test_an_upgraded_websocket_counts_until_it_closes_and_then_exactly_once():
    """--max-http-connections 1: an open WebSocket holds the one place; closing it gives it back, once.

    The upgrade takes the connection away from its HTTP channel, so it is the
    WebSocket protocol that gives the place back when the connection closes.
    """
    gateway = GatewayProcess("--max-http-connections", "1", "--state-db", "none", token="one-place").start()

    def get_api(sock: socket.socket) -> tuple[int, dict]:
        """The status, and the body of a refusal (a 200 stays unread: the connection is only held)."""
        sock.sendall(b"GET /api HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: token one-place\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            assert chunk, head
            head += chunk
        status = int(head.split(b" ", 2)[1])
        if status == 200:
            return status, {}
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        body = b""
        while len(body) < length:
            chunk = sock.recv(length - len(body))
            assert chunk, body
            body += chunk
        return status, json.loads(body)

    def admitted_again() -> socket.socket:
        """A kept-alive connection answered 200, once the gateway has seen the last one close."""
        deadline = time.monotonic() + 10
        while True:
            sock = raw(gateway.port)
            status, body = get_api(sock)
            if status == 200:
                return sock
            sock.close()
            assert status == 503 and "--max-http-connections" in body["message"], (status, body)
            assert time.monotonic() < deadline, "the connection count was not given back"
            time.sleep(0.05)

    try:
        admitted_again().close()
        kernel = None
        deadline = time.monotonic() + 10
        while kernel is None:  # the place of the connection just closed may not be back yet
            # Connection: close, or requests would keep this connection, and the one place, to itself
            response = gateway.request("POST", "/api/kernels", json={}, headers={"Connection": "close"})
            if response.status_code != 503:
                assert response.status_code == 201, response.text
                kernel = response.json()["id"]
            assert time.monotonic() < deadline, response.text
        deadline = time.monotonic() + 10
        while True:  # as above: the place of the POST's connection may not be back yet
            try:
                ws = websocket.create_connection(f"{gateway.ws_url}/api/kernels/{kernel}/channels",
                                                 header=[f"Authorization: token {gateway.token}"], timeout=10)
                break
            except websocket.WebSocketBadStatusException as refused:
                assert refused.status_code == 503 and time.monotonic() < deadline, refused
                time.sleep(0.05)
        try:
            with raw(gateway.port) as other:  # the open WebSocket holds the one place
                status, body = get_api(other)
                assert status == 503 and "--max-http-connections" in body["message"], (status, body)
        finally:
            ws.close()
        first = admitted_again()  # the WebSocket's place is back...
        with first, raw(gateway.port) as second:  # ...and only once: the count is 1 again, not 0
            status, body = get_api(second)
            assert status == 503 and "--max-http-connections" in body["message"], (status, body)
    finally:
        gateway.stop()
