"""Gateway options end to end: CORS, limits, listing, base URL, kernel names, env, timeouts."""
import concurrent.futures
import http.client
import json
import os
import socket
import sys
import time

import pytest
import websocket

from support import GatewayProcess, children_of, pid_alive, stdout_of

ORIGIN = "http://127.0.0.1:18809"


def make_kernelspec(root, name, argv, display_name=None):
    folder = root / "kernels" / name
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(json.dumps(
        {"argv": argv, "display_name": display_name or name, "language": "python"}))
    return folder


@pytest.fixture(scope="module")
def kernelspecs(tmp_path_factory):
    """A JUPYTER_PATH with an extra working spec and two broken ones."""
    root = tmp_path_factory.mktemp("jupyter")
    make_kernelspec(root, "second", [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    "Second Python")
    make_kernelspec(root, "sleeper", [sys.executable, "-c", "import time; time.sleep(120)", "{connection_file}"])
    make_kernelspec(root, "crasher", [sys.executable, "-c",
                                      "import sys; sys.stderr.write('no GPU found, giving up\\n'); sys.exit(3)",
                                      "{connection_file}"])
    return root


def no_leftovers(gateway):
    kernels = children_of(gateway.process.pid)
    gateway.stop()
    assert not [pid for pid in kernels if pid_alive(pid)]


@pytest.fixture(scope="module")
def cors_gateway():
    with GatewayProcess("--allow-origin", ORIGIN, token="cors-token") as gateway:
        yield gateway


def test_preflight_needs_no_token(cors_gateway):
    response = cors_gateway.request("OPTIONS", "/api/kernels", headers={
        "Authorization": "", "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    allowed_headers = response.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed_headers and "content-type" in allowed_headers
    assert "DELETE" in response.headers["Access-Control-Allow-Methods"]


def test_errors_carry_cors_headers(cors_gateway):
    missing = cors_gateway.request("GET", "/api/kernels/00000000-0000-0000-0000-000000000000",
                                   headers={"Origin": ORIGIN})
    assert missing.status_code == 404
    assert missing.headers["Access-Control-Allow-Origin"] == ORIGIN
    unauthorized = cors_gateway.request("GET", "/api/kernels", headers={"Origin": ORIGIN, "Authorization": ""})
    assert unauthorized.status_code == 401
    assert unauthorized.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_other_origins_are_refused(cors_gateway):
    response = cors_gateway.request("GET", "/api/kernels", headers={"Origin": "http://evil.example"})
    assert response.status_code == 403
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        kernel = cors_gateway.start_kernel()
        websocket.create_connection(
            f"{cors_gateway.ws_url}/api/kernels/{kernel['id']}/channels?token=cors-token",
            origin="http://evil.example", timeout=10)
    assert refused.value.status_code == 403
    ok = websocket.create_connection(
        f"{cors_gateway.ws_url}/api/kernels/{kernel['id']}/channels?token=cors-token", origin=ORIGIN, timeout=10)
    ok.close()
    cors_gateway.request("DELETE", f"/api/kernels/{kernel['id']}")


def test_same_origin_pages_need_no_allow_origin():
    with GatewayProcess() as gateway:
        same = gateway.request("GET", "/api/kernels", headers={"Origin": gateway.url})
        assert same.status_code == 200
        other = gateway.request("GET", "/api/kernels", headers={"Origin": "http://localhost:1"})
        assert other.status_code == 403


def test_no_token_configured_accepts_empty_token_header():
    with GatewayProcess() as gateway:
        assert gateway.request("GET", "/api/kernels", headers={"Authorization": "token "}).status_code == 200
        assert gateway.request("GET", "/api/kernels").status_code == 200


def test_max_kernels_counts_starts_in_flight():
    with GatewayProcess("--max-kernels", "2") as gateway:
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            responses = list(pool.map(lambda _: gateway.request("POST", "/api/kernels", json={}), range(5)))
        codes = sorted(r.status_code for r in responses)
        assert codes == [201, 201, 403, 403, 403]
        refused = next(r for r in responses if r.status_code == 403).json()
        assert refused["reason"] == "Resource Limit"
        assert len(gateway.request("GET", "/api/kernels").json()) == 2
        # sessions obey the same limit
        assert gateway.request("POST", "/api/sessions", json={"path": "x.ipynb", "type": "notebook"}).status_code == 403
        no_leftovers(gateway)


def test_kg_environment_configures_the_gateway():
    with GatewayProcess(env={"KG_MAX_KERNELS": "1", "KG_BASE_URL": "/envbase", "KG_LIST_KERNELS": "false"}) as gateway:
        assert gateway.request("GET", "/envbase/api").status_code == 200
        assert gateway.request("GET", "/envbase/api/kernels").status_code == 403
        first = gateway.request("POST", "/envbase/api/kernels", json={})
        assert first.status_code == 201
        assert gateway.request("POST", "/envbase/api/kernels", json={}).status_code == 403
        no_leftovers(gateway)


def test_base_url_prefixes_everything():
    with GatewayProcess("--base-url", "/gw/inner") as gateway:
        assert gateway.request("GET", "/api/kernels").status_code == 404
        assert gateway.request("GET", "/gw/api/kernels").status_code == 404
        response = gateway.request("POST", "/gw/inner/api/kernels", json={})
        assert response.status_code == 201
        kernel = response.json()
        assert response.headers["Location"] == f"/gw/inner/api/kernels/{kernel['id']}"
        specs = gateway.request("GET", "/gw/inner/api/kernelspecs").json()
        assert specs["kernelspecs"]["python3"]["resources"]["logo-64x64"].startswith("/gw/inner/kernelspecs/")
        ws = websocket.create_connection(f"{gateway.ws_url}/gw/inner/api/kernels/{kernel['id']}/channels", timeout=10)
        ws.close()
        no_leftovers(gateway)


def test_default_and_forced_kernel_names(kernelspecs):
    env = {"JUPYTER_PATH": str(kernelspecs)}
    with GatewayProcess("--default-kernel-name", "second", env=env) as gateway:
        assert gateway.request("GET", "/api/kernelspecs").json()["default"] == "second"
        assert gateway.start_kernel()["name"] == "second"
        assert gateway.start_kernel(name="python3")["name"] == "python3"
        no_leftovers(gateway)
    with GatewayProcess("--force-kernel-name", "second", env=env) as gateway:
        assert gateway.start_kernel(name="python3")["name"] == "second"
        assert gateway.start_kernel(name="does-not-exist")["name"] == "second"
        no_leftovers(gateway)


def test_env_process_whitelist():
    env = {"JKG_TEST_VISIBLE": "yes", "JKG_TEST_HIDDEN": "no"}
    with GatewayProcess("--env-process-whitelist", "JKG_TEST_VISIBLE", env=env) as gateway:
        kernel = gateway.start_kernel(env={})
        with gateway.connect(kernel["id"]) as client:
            out = stdout_of(client.run(
                "import os; print(os.environ.get('JKG_TEST_VISIBLE'), os.environ.get('JKG_TEST_HIDDEN'))"))
        assert out == "yes None\n"
        no_leftovers(gateway)


def test_launch_timeout_and_launch_failure(kernelspecs):
    with GatewayProcess("--kernel-launch-timeout", "3", env={"JUPYTER_PATH": str(kernelspecs)}) as gateway:
        started = time.monotonic()
        response = gateway.request("POST", "/api/kernels", json={"name": "sleeper"})
        assert response.status_code == 500
        assert "within 3 s" in response.json()["message"]
        assert time.monotonic() - started < 15
        # the client may ask for a shorter timeout
        started = time.monotonic()
        response = gateway.request("POST", "/api/kernels",
                                   json={"name": "sleeper", "env": {"KERNEL_LAUNCH_TIMEOUT": "1"}})
        assert response.status_code == 500 and time.monotonic() - started < 8
        crashed = gateway.request("POST", "/api/kernels", json={"name": "crasher"})
        assert crashed.status_code == 500 and "exited" in crashed.json()["message"]
        assert "no GPU found, giving up" in crashed.json()["message"]  # the tail of the kernel's stderr
        assert children_of(gateway.process.pid) == set()  # nothing left running
        assert gateway.request("GET", "/api/kernels").json() == []
        no_leftovers(gateway)


def test_listen_on_unix_socket(tmp_path):
    path = tmp_path / "jkg.sock"

    class UnixConnection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(str(path))

    import subprocess

    from support import TWISTD

    process = subprocess.Popen([*TWISTD, "-n", "--pidfile=", "jkg", "--listen", f"unix:{path}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)})
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.1)
        connection = UnixConnection("localhost")
        connection.request("GET", "/api/kernelspecs")
        response = connection.getresponse()
        assert response.status == 200
        assert "python3" in json.loads(response.read())["kernelspecs"]
        assert path.stat().st_mode & 0o777 == 0o600  # --unix-socket-mode: not every local user's to use
    finally:
        process.terminate()
        process.wait(30)


def test_kernel_dead_after_restart_limit():
    with GatewayProcess("--restart-limit", "0") as gateway:
        kernel = gateway.start_kernel()
        with gateway.connect(kernel["id"]) as client:
            pid = int(stdout_of(client.run("import os; print(os.getpid())")))
            import os
            import signal

            os.kill(pid, signal.SIGKILL)
            dead = client.wait_for(lambda m: m["msg_type"] == "status", timeout=20)
            assert dead["content"]["execution_state"] == "dead"
        assert gateway.request("GET", f"/api/kernels/{kernel['id']}").json()["execution_state"] == "dead"
        assert kernel["id"] in [k["id"] for k in gateway.request("GET", "/api/kernels").json()]
        assert gateway.request("POST", f"/api/kernels/{kernel['id']}/interrupt").status_code == 409
        assert gateway.request("DELETE", f"/api/kernels/{kernel['id']}").status_code == 204
        no_leftovers(gateway)


def test_max_message_size_limits_clients_and_kernels_have_their_own_limit():
    # kernel messages default to --max-message-size too; --max-kernel-message-size sets their own
    with GatewayProcess("--max-message-size", "4096", "--max-kernel-message-size", "1048576") as gateway:
        kernel = gateway.start_kernel()
        with gateway.connect(kernel["id"]) as client:
            assert len(stdout_of(client.run("print('k' * 20000)"))) == 20001
            client.execute("x = '" + "c" * 10000 + "'")
            with pytest.raises((ConnectionError, websocket.WebSocketConnectionClosedException)):
                client.recv(10)
        no_leftovers(gateway)
