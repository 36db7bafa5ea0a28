"""Tenants end to end: credentials, isolation, quotas, reload, the CLI, and jupyter_server as a tenant."""
import concurrent.futures
import http.client
import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import requests
import websocket

from support import GatewayProcess, children_of, pid_alive, stdout_of

ZERO = "00000000-0000-0000-0000-000000000000"


def tenants_cli(*args, input_text=None):
    result = subprocess.run([sys.executable, "-m", "jkg.tenants", *args], capture_output=True, text=True,
                            input=input_text, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


class As:
    """Requests to the gateway as one tenant."""

    def __init__(self, gateway, token):
        self.gateway = gateway
        self.token = token

    def request(self, method, path, **kwargs):
        headers = {"Authorization": f"token {self.token}", **kwargs.pop("headers", {})}
        return requests.request(method, self.gateway.url + path, headers=headers, timeout=60, **kwargs)

    def start(self, **body):
        response = self.request("POST", "/api/kernels", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def ws(self, kernel_id, session_id=None):
        session_id = session_id or self.token[:8]
        return websocket.create_connection(
            f"{self.gateway.ws_url}/api/kernels/{kernel_id}/channels?session_id={session_id}&token={self.token}",
            timeout=10)

    def client(self, kernel_id):
        self.gateway.token = self.token
        return self.gateway.connect(kernel_id)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tenants")
    spec = root / "jupyter" / "kernels" / "second"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Second", "language": "python"}))
    path = str(root / "tenants.toml")
    tokens = {
        "alice": tenants_cli("add", "alice", "--file", path, "--max-kernels", "2", "--max-connections", "3"),
        "bob": tenants_cli("add", "bob", "--file", path),
        "carol": tenants_cli("add", "carol", "--file", path, "--admin"),
        "dave": tenants_cli("add", "dave", "--file", path, "--max-kernels", "3"),
        "erin": tenants_cli("add", "erin", "--file", path, "--kernelspecs", "second"),
    }
    tenants_cli("password", "alice", "--file", path, input_text="correct horse battery\n")
    gateway = GatewayProcess("--tenants", path, env={"JUPYTER_PATH": str(root / "jupyter")}).start()
    yield gateway, path, tokens
    kernels = children_of(gateway.process.pid)
    gateway.stop()
    assert not [pid for pid in kernels if pid_alive(pid)]


@pytest.fixture
def tenants(setup):
    gateway, _, tokens = setup
    return {name: As(gateway, token) for name, token in tokens.items()}


def test_the_file_holds_only_hashes_and_is_private(setup):
    _, path, tokens = setup
    text = open(path).read()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert all(token not in text for token in tokens.values())
    assert text.count("sha256:") == len(tokens) and "bcrypt:" in text
    assert len(tokens["alice"]) >= 32  # >= 128 bits of randomness, url-safe


def test_cross_tenant_access_is_404_everywhere(tenants):
    alice, bob = tenants["alice"], tenants["bob"]
    kernel = alice.start()
    kid = kernel["id"]
    session = alice.request("POST", "/api/sessions", json={"path": "a.ipynb", "type": "notebook",
                                                          "kernel": {"id": kid}}).json()
    try:
        for method, path in [("GET", f"/api/kernels/{kid}"), ("DELETE", f"/api/kernels/{kid}"),
                             ("POST", f"/api/kernels/{kid}/interrupt"), ("POST", f"/api/kernels/{kid}/restart"),
                             ("GET", f"/api/sessions/{session['id']}"),
                             ("PATCH", f"/api/sessions/{session['id']}"),
                             ("DELETE", f"/api/sessions/{session['id']}")]:
            theirs = bob.request(method, path, json={})
            missing = bob.request(method, path.replace(kid, ZERO).replace(session["id"], ZERO), json={})
            assert theirs.status_code == missing.status_code == 404, (method, path)
            assert theirs.json()["reason"] == missing.json()["reason"]
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            bob.ws(kid)
        assert refused.value.status_code == 404
        attach = bob.request("POST", "/api/sessions", json={"path": "b.ipynb", "type": "notebook",
                                                            "kernel": {"id": kid}})
        assert attach.status_code == 404
        assert alice.request("GET", f"/api/kernels/{kid}").status_code == 200
        alice.ws(kid).close()
    finally:
        alice.request("DELETE", f"/api/kernels/{kid}")


def test_listings_are_isolated_and_admins_see_owners(tenants):
    alice, bob, carol = tenants["alice"], tenants["bob"], tenants["carol"]
    a, b = alice.start(), bob.start()
    alice.request("POST", "/api/sessions", json={"path": "x.ipynb", "type": "notebook", "kernel": {"id": a["id"]}})
    try:
        assert [k["id"] for k in alice.request("GET", "/api/kernels").json()] == [a["id"]]
        assert [k["id"] for k in bob.request("GET", "/api/kernels").json()] == [b["id"]]
        assert bob.request("GET", "/api/sessions").json() == []
        assert len(alice.request("GET", "/api/sessions").json()) == 1
        everything = {k["id"]: k for k in carol.request("GET", "/api/kernels").json()}
        assert everything[a["id"]]["owner"] == "alice" and everything[b["id"]]["owner"] == "bob"
        assert carol.request("POST", f"/api/kernels/{b['id']}/interrupt").status_code == 204
        assert "owner" not in alice.request("GET", f"/api/kernels/{a['id']}").json()
        sessions = carol.request("GET", "/api/sessions").json()
        assert [(s["owner"], s["kernel"]["owner"]) for s in sessions] == [("alice", "alice")]
        assert "owner" not in alice.request("GET", "/api/sessions").json()[0]
    finally:
        carol.request("DELETE", f"/api/kernels/{a['id']}")
        carol.request("DELETE", f"/api/kernels/{b['id']}")


def test_kernel_quota(tenants):
    alice = tenants["alice"]
    started = [alice.start()["id"] for _ in range(2)]
    try:
        refused = alice.request("POST", "/api/kernels", json={})
        assert refused.status_code == 403
        assert refused.json() == {"reason": "Resource Limit", "message": "tenant alice reached its limit of 2 kernels"}
        assert tenants["bob"].request("POST", "/api/kernels", json={}).status_code == 201  # others unaffected
    finally:
        for kid in started:
            alice.request("DELETE", f"/api/kernels/{kid}")
        for kernel in tenants["bob"].request("GET", "/api/kernels").json():
            tenants["bob"].request("DELETE", f"/api/kernels/{kernel['id']}")


def test_quota_admission_is_atomic(tenants):
    dave = tenants["dave"]
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: dave.request("POST", "/api/kernels", json={}), range(20)))
    try:
        assert sorted(r.status_code for r in responses).count(201) == 3
        assert all(r.status_code in (201, 403) for r in responses)
        assert len(dave.request("GET", "/api/kernels").json()) == 3
    finally:
        for kernel in dave.request("GET", "/api/kernels").json():
            dave.request("DELETE", f"/api/kernels/{kernel['id']}")


def test_connection_quota(tenants):
    alice = tenants["alice"]
    kid = alice.start()["id"]
    # one session each: a second connection of a session replaces the first, which frees its place
    sockets = [alice.ws(kid, f"s{n}") for n in range(3)]
    try:
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            alice.ws(kid, "s3")
        assert refused.value.status_code == 403
        sockets.pop().close()
        deadline = time.monotonic() + 10
        while True:  # the freed place comes back once the server saw the close
            try:
                sockets.append(alice.ws(kid, "s4"))
                break
            except websocket.WebSocketBadStatusException:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        for sock in sockets:
            sock.close()
        alice.request("DELETE", f"/api/kernels/{kid}")


def test_kernelspec_allow_list(tenants):
    erin = tenants["erin"]
    specs = erin.request("GET", "/api/kernelspecs").json()
    assert list(specs["kernelspecs"]) == ["second"] and specs["default"] == "second"
    assert erin.request("GET", "/api/kernelspecs/python3").status_code == 404
    assert erin.request("GET", "/kernelspecs/python3/logo-64x64.png").status_code == 404
    assert erin.request("POST", "/api/kernels", json={"name": "python3"}).status_code == 404
    kernel = erin.start()
    assert kernel["name"] == "second"
    erin.request("DELETE", f"/api/kernels/{kernel['id']}")
    assert "python3" in tenants["bob"].request("GET", "/api/kernelspecs").json()["kernelspecs"]


def test_kernel_username_is_the_tenant(setup, tenants):
    alice = tenants["alice"]
    kernel = alice.start(env={"KERNEL_USERNAME": "mallory"})
    with alice.client(kernel["id"]) as client:
        assert stdout_of(client.run("import os; print(os.environ['KERNEL_USERNAME'])")) == "alice\n"
    alice.request("DELETE", f"/api/kernels/{kernel['id']}")


def test_login_forms(setup, tenants):
    gateway, _, tokens = setup
    url = gateway.url + "/api/kernels"
    assert requests.get(url, headers={"Authorization": f"Bearer {tokens['bob']}"}, timeout=30).status_code == 200
    assert requests.get(url + f"?token={tokens['bob']}", timeout=30).status_code == 200
    assert requests.get(url, auth=("alice", "correct horse battery"), timeout=30).status_code == 200
    assert requests.get(url, auth=("alice", "wrong horse"), timeout=30).status_code == 401
    assert requests.get(url, auth=("bob", tokens["bob"]), timeout=30).status_code == 401  # bob has no password
    anonymous = requests.get(url, timeout=30)
    assert anonymous.status_code == 401 and anonymous.json()["reason"] == "Unauthorized"
    assert tokens["alice"] not in gateway.output.decode(errors="replace")
    assert b"kernel started: tenant=alice" in gateway.output


def get_from(address: str, port: int, token: str):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(address, 0))
    connection.request("GET", "/api/kernels", headers={"Authorization": f"token {token}"})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, response.getheader("Retry-After"), body


def test_lockout_after_repeated_failures_is_per_address(setup):
    _, path, tokens = setup
    with GatewayProcess("--tenants", path) as gateway:
        statuses = [get_from("127.0.0.3", gateway.port, "guess")[0] for _ in range(11)]
        assert statuses == [401] * 11
        status, retry_after, body = get_from("127.0.0.3", gateway.port, tokens["bob"])
        assert status == 429 and int(retry_after) > 0 and json.loads(body)["reason"] == "Too Many Requests"
        assert get_from("127.0.0.4", gateway.port, tokens["bob"])[0] == 200  # other addresses unaffected
        assert b"login failed: address=127.0.0.3" in gateway.output


def test_sighup_reload(tmp_path):
    path = str(tmp_path / "tenants.toml")
    frank = tenants_cli("add", "frank", "--file", path)
    with GatewayProcess("--tenants", path) as gateway:
        def status(token):
            return requests.get(gateway.url + "/api/kernels", headers={"Authorization": f"token {token}"},
                                timeout=30).status_code

        def reload_and_wait(expect_token, expect_status):
            gateway.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 15
            while status(expect_token) != expect_status:
                assert time.monotonic() < deadline, "reload did not take effect"
                time.sleep(0.1)

        assert status(frank) == 200
        grace = tenants_cli("add", "grace", "--file", path)
        assert status(grace) == 401
        reload_and_wait(grace, 200)

        kernel = As(gateway, frank).start()
        ws = As(gateway, frank).ws(kernel["id"])
        new_frank = tenants_cli("rotate", "frank", "--file", path)
        reload_and_wait(new_frank, 200)
        assert status(frank) == 401

        # a broken file is rejected and the tenants in force stay
        good = open(path).read()
        open(path, "w").write("[tenants.grace\nbroken = ")
        gateway.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while b"rejected, keeping the previous one" not in gateway.output:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert status(grace) == 200 and status(new_frank) == 200
        open(path, "w").write(good)

        # removal closes the tenant's connections and shuts its kernels down
        pids = children_of(gateway.process.pid)
        tenants_cli("remove", "frank", "--file", path)
        reload_and_wait(new_frank, 401)
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError, OSError)):
            for _ in range(100):
                ws.recv()
        deadline = time.monotonic() + 15
        while any(pid_alive(pid) for pid in pids):
            assert time.monotonic() < deadline, "removed tenant's kernel still running"
            time.sleep(0.1)
        assert status(grace) == 200


def test_unauthenticated_non_loopback_is_refused():
    from support import TWISTD

    result = subprocess.run([*TWISTD, "-n", "--pidfile=", "jkg", "--ip", "0.0.0.0", "--port", "0"],
                            capture_output=True, timeout=60)
    assert result.returncode == 2
    assert b"refusing to serve without credentials" in result.stderr
    assert b"--allow-unauthenticated" in result.stderr


@pytest.mark.parametrize("mode", ["token", "basic"])
def test_jupyter_server_as_a_tenant(setup, tmp_path, mode):
    from test_jupyter_server_client import JupyterServerProcess

    gateway, _, tokens = setup
    server = JupyterServerProcess(tmp_path, gateway.url, tokens["bob"] if mode == "token" else "", {})
    if mode == "basic":
        server.cmd += ["--GatewayClient.http_user=alice", "--GatewayClient.http_pwd=correct horse battery"]
    server.start()
    owner = "bob" if mode == "token" else "alice"
    try:
        response = server.request("POST", "/api/kernels", json={"name": "python3"})
        assert response.status_code == 201, server.log()
        kid = response.json()["id"]
        with server.connect(kid) as client:
            assert stdout_of(client.run("import os; print(os.environ.get('KERNEL_USERNAME'))")) == f"{owner}\n"
        owned = {k["id"] for k in As(gateway, tokens[owner]).request("GET", "/api/kernels").json()}
        assert kid in owned
        assert server.request("DELETE", f"/api/kernels/{kid}").status_code == 204
    finally:
        server.stop()
