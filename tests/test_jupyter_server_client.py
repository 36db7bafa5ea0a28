"""End to end: the real ``jupyter server --gateway-url=<jkg>`` drives jkg.

A test talks only to jupyter_server (its REST API and kernel WebSocket, with
jupyter_server's own token); jupyter_server then acts as a gateway client of a
real ``twistd jkg`` process.  Where a test needs ground truth it asks jkg
directly.  Two configurations run: jkg protected by a token (jupyter_server
passes ``--GatewayClient.auth_token``) and jkg without one (jupyter_server then
still sends an empty ``Authorization: token `` header).

To prove that what jupyter_server shows comes from jkg, jkg (and only jkg) sees
a ``python3`` kernelspec of our own with a distinct display name and logo.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

pytest.importorskip("jupyter_server")

from support import GatewayProcess, KernelClient, children_of, pid_alive, stdout_of  # noqa: E402

GATEWAY_TOKEN = "jkg-e2e-gateway-token-7c1d"
DISPLAY_NAME = "Python 3 (served by jkg e2e)"
SECRET = "SECRET_NOT_FOR_KERNELS"
GATEWAY_SECRET = "JKG_PROCESS_SECRET_NOT_FOR_KERNELS"
KERNEL_MARK = "KERNEL_JKG_E2E_MARK"
READY_TIMEOUT = 60.0
REQUEST_TIMEOUT = 60.0


# ------------------------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_png(rgb: tuple[int, int, int]) -> bytes:
    """A valid 1x1 PNG of one colour: a logo no other kernelspec on the machine has."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" + bytes(rgb))) + chunk(b"IEND", b""))


def clean_env(base: Path) -> dict:
    """os.environ without anything Jupyter-ish from this machine, with private Jupyter dirs."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JUPYTER", "JPY_", "KERNEL_", "KG_", "JKG_", "IPYTHON"))}
    for name in ("runtime", "data", "config"):
        (base / name).mkdir(parents=True, exist_ok=True)
    env.update(JUPYTER_RUNTIME_DIR=str(base / "runtime"), JUPYTER_DATA_DIR=str(base / "data"),
               JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTER_NO_CONFIG="1",
               JUPYTER_PLATFORM_DIRS="1", IPYTHONDIR=str(base / "ipython"))
    return env


class JupyterServerProcess:
    """``python -m jupyter_server`` as a gateway client of ``gateway_url``."""

    def __init__(self, base: Path, gateway_url: str, gateway_token: str, extra_env: dict):
        self.base = base
        self.port = free_port()
        self.token = uuid.uuid4().hex
        root = base / "root"
        root.mkdir(parents=True, exist_ok=True)
        self.log_path = base / "jupyter_server.log"
        self.cmd = [
            sys.executable, "-m", "jupyter_server",
            f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={self.token}", "--no-browser", f"--ServerApp.root_dir={root}",
            f"--gateway-url={gateway_url}",
            f"--GatewayClient.auth_token={gateway_token}",
            # let jupyter_server forward the secret, so that it is jkg that has to drop it
            f"--GatewayClient.allowed_envs={SECRET}",
            "--GatewayClient.request_timeout=60",
        ]
        if os.geteuid() == 0:
            self.cmd.append("--allow-root")
        self.env = clean_env(base / "jupyter")
        self.env.update(extra_env)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def start(self) -> "JupyterServerProcess":
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            cwd=str(self.base))
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter_server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.request("GET", "/api", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"jupyter_server not ready within {READY_TIMEOUT:.0f}s:\n{self.log()}")

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"token {self.token}", **kwargs.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers,
                                timeout=kwargs.pop("timeout", REQUEST_TIMEOUT), **kwargs)

    def connect(self, kernel_id: str) -> KernelClient:
        # KernelClient only needs ws_url and token: point it at jupyter_server, not at jkg
        return KernelClient(SimpleNamespace(ws_url=self.ws_url, token=self.token), kernel_id)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def write_kernelspec(share: Path) -> bytes:
    """A ``python3`` kernelspec only jkg sees (via JUPYTER_PATH); returns its logo bytes."""
    folder = share / "kernels" / "python3"
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": DISPLAY_NAME,
        "language": "python",
        "metadata": {"debugger": True},
    }))
    logo = tiny_png((0x12, 0x34, 0x56))
    (folder / "logo-64x64.png").write_bytes(logo)
    return logo


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=["jkg-with-token", "jkg-without-token"])
def stack(request, tmp_path_factory):
    """jkg plus a jupyter_server using it as its gateway; both stopped (server first) at the end."""
    token = GATEWAY_TOKEN if request.param == "jkg-with-token" else ""
    base = tmp_path_factory.mktemp(request.param)
    share = base / "jkg-share"
    logo = write_kernelspec(share)
    gateway_env = clean_env(base / "jkg")
    gateway_env.update(JUPYTER_PATH=str(share), **{GATEWAY_SECRET: "1"})
    gateway = GatewayProcess(env=gateway_env, token=token)
    gateway.env = gateway_env  # exactly this environment, nothing inherited on top
    gateway.start()
    server = None
    kernels: set[int] = set()
    try:
        server = JupyterServerProcess(base / "server", gateway.url, token,
                                      {SECRET: "1", KERNEL_MARK: "forwarded"}).start()
        yield SimpleNamespace(gateway=gateway, server=server, logo=logo, token=token)
    finally:
        if server is not None:
            server.stop()
        kernels = children_of(gateway.process.pid)
        gateway.stop()
        (base / "jkg.log").write_bytes(bytes(gateway.output))  # kept for post-mortems
    time.sleep(0.2)
    leftovers = [pid for pid in kernels if pid_alive(pid)]
    assert not leftovers, f"kernel processes survived the gateway: {leftovers}"


@pytest.fixture
def kernel(stack):
    """A kernel started through jupyter_server; shut down through it afterwards if still there."""
    response = stack.server.request("POST", "/api/kernels", json={"name": "python3"})
    assert response.status_code == 201, response.text
    model = response.json()
    yield model
    stack.server.request("DELETE", f"/api/kernels/{model['id']}")


def run_ok(client: KernelClient, code: str, timeout: float = 30.0) -> list[dict]:
    messages = client.run(code, timeout)
    replies = [m for m in messages if m["msg_type"] == "execute_reply"]
    assert replies and replies[0]["content"]["status"] == "ok", messages
    return messages


def wait_until(predicate, timeout: float, message: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------- tests


def test_jupyter_server_lists_kernelspecs_from_jkg(stack):
    response = stack.server.request("GET", "/api/kernelspecs")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["default"] == "python3"
    spec = body["kernelspecs"]["python3"]
    assert spec["spec"]["display_name"] == DISPLAY_NAME  # only jkg knows this spec
    assert spec["spec"]["language"] == "python"
    assert spec["resources"]["logo-64x64"].endswith("/kernelspecs/python3/logo-64x64.png")
    single = stack.server.request("GET", "/api/kernelspecs/python3")
    assert single.status_code == 200, single.text
    assert single.json()["spec"]["display_name"] == DISPLAY_NAME
    assert stack.server.request("GET", "/api/kernelspecs/no-such-kernel").status_code == 404
    if stack.token:  # the gateway really is protected: jupyter_server got through with its token
        assert stack.gateway.request("GET", "/api/kernelspecs", headers={"Authorization": ""}).status_code in (401,
                                                                                                               403)


def test_kernelspec_logo_fetched_from_jkg(stack):
    response = stack.server.request("GET", "/kernelspecs/python3/logo-64x64.png")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "image/png"
    assert response.content == stack.logo  # our own logo, which only jkg can serve


def test_kernel_start_execute_and_listing(stack, kernel):
    kernel_id = kernel["id"]
    assert kernel["name"] == "python3"
    on_gateway = stack.gateway.request("GET", "/api/kernels").json()
    assert kernel_id in [k["id"] for k in on_gateway]
    listed = stack.server.request("GET", "/api/kernels").json()
    assert kernel_id in [k["id"] for k in listed]
    model = stack.server.request("GET", f"/api/kernels/{kernel_id}").json()
    assert model["id"] == kernel_id and model["execution_state"] in ("starting", "idle", "busy")

    with stack.server.connect(kernel_id) as client:
        messages = run_ok(client, "print('hello from jkg')\n6 * 7")
    assert stdout_of(messages) == "hello from jkg\n"
    results = [m for m in messages if m["msg_type"] == "execute_result"]
    assert len(results) == 1 and results[0]["content"]["data"]["text/plain"] == "42"
    assert all(m["channel"] in ("shell", "iopub") for m in messages)


def test_kernel_environment_is_filtered(stack, kernel):
    code = ("import os, json\n"
            f"print(json.dumps({{k: os.environ.get(k) for k in "
            f"({SECRET!r}, {GATEWAY_SECRET!r}, 'KERNEL_GATEWAY', {KERNEL_MARK!r}, 'KG_AUTH_TOKEN')}}))")
    with stack.server.connect(kernel["id"]) as client:
        seen = json.loads(stdout_of(run_ok(client, code)))
    assert seen[SECRET] is None, "jupyter_server's environment leaked into the kernel"
    assert seen[GATEWAY_SECRET] is None, "jkg's own environment leaked into the kernel"
    assert seen["KG_AUTH_TOKEN"] is None
    assert seen["KERNEL_GATEWAY"] == "1"
    assert seen[KERNEL_MARK] == "forwarded"  # KERNEL_* from jupyter_server's env do get through


def test_interrupt_running_sleep(stack, kernel):
    kernel_id = kernel["id"]
    with stack.server.connect(kernel_id) as client:
        run_ok(client, "import time")
        started = time.monotonic()
        msg_id = client.execute("time.sleep(30)")
        client.wait_for(lambda m: m["parent_header"].get("msg_id") == msg_id
                        and m["msg_type"] == "execute_input", timeout=15)
        time.sleep(0.3)  # let the kernel actually enter the sleep
        response = stack.server.request("POST", f"/api/kernels/{kernel_id}/interrupt")
        assert response.status_code == 204, response.text
        messages = client.collect(msg_id, timeout=15)
        elapsed = time.monotonic() - started
        reply = next(m for m in messages if m["msg_type"] == "execute_reply")
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert elapsed < 15, f"interrupt took {elapsed:.1f}s"
        # the kernel survived the interrupt and still works
        assert stdout_of(run_ok(client, "print('alive')")) == "alive\n"


def test_restart_keeps_id_and_loses_state(stack, kernel):
    kernel_id = kernel["id"]
    with stack.server.connect(kernel_id) as client:
        before = stdout_of(run_ok(client, "import os\nmarker = 'set before restart'\nprint(os.getpid())"))
    old_pid = int(before)
    response = stack.server.request("POST", f"/api/kernels/{kernel_id}/restart")
    assert response.status_code == 200, response.text
    assert response.json()["id"] == kernel_id
    assert kernel_id in [k["id"] for k in stack.gateway.request("GET", "/api/kernels").json()]
    wait_until(lambda: not pid_alive(old_pid), 15, "the pre-restart kernel process is still alive")

    with stack.server.connect(kernel_id) as client:
        out = stdout_of(run_ok(client, "import os\nprint('marker' in globals(), os.getpid())"))
    exists, new_pid = out.split()
    assert exists == "False", "state survived the restart"
    assert int(new_pid) != old_pid


def test_restart_keeps_open_websocket_usable(stack, kernel):
    """A client that keeps its socket open across a restart can run code afterwards."""
    kernel_id = kernel["id"]
    with stack.server.connect(kernel_id) as client:
        run_ok(client, "marker = 1")
        response = stack.server.request("POST", f"/api/kernels/{kernel_id}/restart")
        assert response.status_code == 200, response.text
        # the new kernel may need a moment; retry kernel_info until it answers on this socket
        deadline = time.monotonic() + 30
        while True:
            msg_id = client.send("shell", "kernel_info_request", {})
            try:
                client.wait_for(lambda m, msg_id=msg_id: m["parent_header"].get("msg_id") == msg_id
                                and m["msg_type"] == "kernel_info_reply", timeout=2)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
        out = stdout_of(run_ok(client, "print('marker' in globals())"))
    assert out == "False\n"


def test_shutdown_removes_kernel_everywhere(stack, kernel):
    kernel_id = kernel["id"]
    with stack.server.connect(kernel_id) as client:
        pid = int(stdout_of(run_ok(client, "import os; print(os.getpid())")))
    response = stack.server.request("DELETE", f"/api/kernels/{kernel_id}")
    assert response.status_code == 204, response.text
    assert stack.server.request("GET", f"/api/kernels/{kernel_id}").status_code == 404
    assert kernel_id not in [k["id"] for k in stack.server.request("GET", "/api/kernels").json()]
    assert stack.gateway.request("GET", f"/api/kernels/{kernel_id}").status_code == 404
    assert kernel_id not in [k["id"] for k in stack.gateway.request("GET", "/api/kernels").json()]
    wait_until(lambda: not pid_alive(pid), 15, f"kernel process {pid} outlived its shutdown")


def test_kernels_left_running_are_cleaned_up_at_teardown(stack):
    """Leaves kernels running on purpose; the fixture teardown checks no kernel process survives.

    One was started through jupyter_server (which shuts it down through jkg when it stops), one
    directly on jkg, unknown to jupyter_server: only jkg's own shutdown can stop that one.
    """
    response = stack.server.request("POST", "/api/kernels", json={"name": "python3"})
    assert response.status_code == 201, response.text
    via_server = response.json()["id"]
    direct = stack.gateway.start_kernel(name="python3")["id"]
    assert direct not in [k["id"] for k in stack.server.request("GET", "/api/kernels").json()]
    pids = []
    for kernel_id, connect in ((via_server, stack.server.connect), (direct, stack.gateway.connect)):
        with connect(kernel_id) as client:
            pids.append(int(stdout_of(run_ok(client, "import os; print(os.getpid())"))))
    assert set(pids) <= children_of(stack.gateway.process.pid)
