"""``jkg.client`` against real gateways: jkg (``twistd jkg``) and, when installed, jupyter-kernel-gateway 3.0.1.

Everything listens on 127.0.0.1 and every wait is bounded.  The async API runs
in a helper thread with its own event loop (:func:`run_async`), because under
pytest-twisted the main thread's asyncio loop is the reactor's and is running.
Each test shuts down the kernels it starts; the ``gateway`` fixture checks that
none survives.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from conftest import TOKEN  # noqa: E402
from support import GatewayProcess, self_signed_certificate  # noqa: E402

from jkg.client import (  # noqa: E402
    GatewayAuthError,
    GatewayClientError,
    GatewayKernelClient,
    GatewayKernelManager,
    GatewayQuotaError,
    GatewaySettings,
    GatewayUnreachable,
    KernelDied,
)
from jkg.client.codec import decode_frame, encode_message  # noqa: E402
from jkg.client.errors import GatewayHTTPError, error_from_response  # noqa: E402
from jkg import wire  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
KG_BIN = REPO / "benchmarks" / ".venv-kg" / "bin" / "jupyter-kernelgateway"
READY = 60.0
BLOB = b"\x00\x01\x02\xff"


# ------------------------------------------------------------------------------------------ helpers
def run_async(coro_fn, *args, timeout: float = 120.0):
    """Run ``coro_fn(*args)`` to completion on a fresh loop in a thread; re-raise its exception."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = asyncio.run(asyncio.wait_for(coro_fn(*args), timeout))
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout + 30)
    if thread.is_alive():
        raise TimeoutError(f"{coro_fn.__name__} still running after {timeout} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def remote_kernel(url: str, token: str = TOKEN, **options):
    """A started kernel and a ready client; both torn down afterwards."""
    km = GatewayKernelManager(url=url, token=token, **options)
    await km.start_kernel()
    kc = km.client()
    try:
        await kc.wait_for_ready(timeout=READY)
        yield km, kc
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


def stdout_text(messages) -> str:
    return "".join(m["content"]["text"] for m in messages
                   if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")


class DroppingProxy:
    """A TCP relay in front of a gateway that can cut every connection at once, like a network failure.

    :meth:`drop` closes all relayed connections and refuses new ones for a while, so
    the client's first reconnection attempts fail and the gateway buffers output meanwhile.
    """

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.refuse_until = 0.0
        self.drops = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if time.monotonic() < self.refuse_until:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def drop(self, refuse_for: float = 0.0):
        self.refuse_until = time.monotonic() + refuse_for
        self.drops += 1
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self):
        self.server.close()
        self.drop()


# ------------------------------------------------------------------------------------------ notebook
COMM_CELL = """\
from comm import create_comm
widget = create_comm(target_name="jupyter.widget", metadata={"version": "2.1.0"}, data={
    "state": {"_model_name": "JkgTestModel", "_model_module": "jkg-test",
              "_model_module_version": "1.0.0", "value": 1},
    "buffer_paths": []})
widget.send({"method": "update", "state": {"value": 2, "blob": None}, "buffer_paths": [["blob"]]},
            buffers=[b"\\x00\\x01\\x02\\xff"])
print(widget.comm_id)
"""


def build_notebook():
    """Streams, rich display, an expected error, a widget comm with a binary buffer, and state across cells."""
    v4 = nbformat.v4
    nb = v4.new_notebook()
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        v4.new_code_cell("import sys\nprint('hello stdout')\nprint('hello stderr', file=sys.stderr)\nanswer = 42"),
        v4.new_code_cell("from IPython.display import HTML, display\ndisplay(HTML('<b>rich</b>'))\n"
                         "{'answer': answer}"),
        v4.new_code_cell("raise ValueError('expected failure')", metadata={"tags": ["raises-exception"]}),
        v4.new_code_cell(COMM_CELL),
        v4.new_code_cell("print(answer + 1)"),
    ]
    return nb


def check_executed(nb):
    streams, rich, error, comm, last = (cell.outputs for cell in nb.cells)
    assert [(o.output_type, o.name, o.text) for o in streams] == [
        ("stream", "stdout", "hello stdout\n"), ("stream", "stderr", "hello stderr\n")]
    assert rich[0].output_type == "display_data" and rich[0].data["text/html"] == "<b>rich</b>"
    assert rich[1].output_type == "execute_result" and rich[1].data["text/plain"] == "{'answer': 42}"
    assert error[0].output_type == "error" and error[0].ename == "ValueError"
    assert error[0].evalue == "expected failure"
    comm_id = comm[0].text.strip()
    widgets = nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    assert widgets[comm_id]["state"]["value"] == 2  # comm_open then comm_msg reached nbclient
    assert widgets[comm_id]["buffers"] == [
        {"data": base64.b64encode(BLOB).decode(), "encoding": "base64", "path": ["blob"]}]
    assert last[0].text == "43\n"
    assert all(cell.execution_count for cell in nb.cells)


async def execute_notebook(nb):
    client = nbclient.NotebookClient(nb, kernel_manager_class=GatewayKernelManager, timeout=60,
                                     startup_timeout=READY)
    await client.async_execute()
    return nb


@pytest.fixture
def gateway_env(gateway, monkeypatch):
    monkeypatch.setenv("JKG_GATEWAY_URL", gateway.url)
    monkeypatch.setenv("JKG_GATEWAY_TOKEN", TOKEN)
    return gateway


# ------------------------------------------------------------------------------------------ nbclient
def test_nbclient_runs_notebook_through_jkg(gateway_env):
    nb = run_async(execute_notebook, build_notebook())
    check_executed(nb)


def test_cli_execute_writes_output_notebook(gateway, tmp_path):
    source, output = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(build_notebook(), source)
    env = {**os.environ, "JKG_GATEWAY_URL": gateway.url, "JKG_GATEWAY_TOKEN": TOKEN,
           "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "jkg.client", "execute", str(source), "--output", str(output)],
                            cwd=REPO, env=env, capture_output=True, timeout=180)
    assert result.returncode == 0, result.stderr.decode()
    check_executed(nbformat.read(output, as_version=4))
    assert not source.with_name("in.nbconvert.ipynb").exists()

    env["JKG_GATEWAY_TOKEN"] = "wrong-token"
    result = subprocess.run([sys.executable, "-m", "jkg.client", "execute", str(source)],
                            cwd=REPO, env=env, capture_output=True, timeout=60)
    assert result.returncode == 2
    assert b"GatewayAuthError" in result.stderr and b"invalid or missing credentials" in result.stderr


# ------------------------------------------------------------------------------------------ client API
ECHO_TARGET = """\
from comm import get_comm_manager
def _echo(comm, open_msg):
    @comm.on_msg
    def _reply(msg):
        comm.send({"echo": msg["content"]["data"]}, buffers=[bytes(b)[::-1] for b in msg["buffers"]])
    comm.send({"opened": open_msg["content"]["data"]}, buffers=open_msg["buffers"])
get_comm_manager().register_target("jkg_echo", _echo)
"""


async def exercise_client(url: str, ws_protocol: str, token: str = TOKEN):
    """Interactive execution with rich output, a request/reply, and a comm round trip with buffers."""
    async with remote_kernel(url, token=token, ws_protocol=ws_protocol) as (km, kc):
        assert kc.protocol == ("v1" if ws_protocol == "auto" else "legacy")
        assert km.kernel_spec is not None and km.kernel_spec.language == "python"
        seen = []
        reply = await kc.execute_interactive(
            "print('out')\nfrom IPython.display import display, Markdown\ndisplay(Markdown('*md*'))\n6 * 7",
            output_hook=seen.append, timeout=30)
        assert reply["content"]["status"] == "ok" and reply["msg_type"] == "execute_reply"
        types = [m["msg_type"] for m in seen]
        assert types[0] == "status" and types[-1] == "status"
        assert {"execute_input", "stream", "display_data", "execute_result"} <= set(types)
        assert stdout_text(seen) == "out\n"
        assert next(m for m in seen if m["msg_type"] == "execute_result")["content"]["data"]["text/plain"] == "42"

        # kernel_info as a request/reply, through jupyter_client's reqrep wrapper
        info = await kc.kernel_info(reply=True, timeout=30)
        assert info["content"]["language_info"]["name"] == "python"

        # comm round trip with binary buffers, both directions
        assert (await kc.execute_interactive(ECHO_TARGET, output_hook=lambda m: None,
                                             timeout=30))["content"]["status"] == "ok"
        comm_id = kc.comm_open("jkg_echo", data={"x": 1}, buffers=[BLOB])
        opened = await wait_for_comm_msg(kc, comm_id)
        assert opened["content"]["data"] == {"opened": {"x": 1}}
        assert [bytes(b) for b in opened["buffers"]] == [BLOB]
        kc.comm_msg(comm_id, {"n": 2}, buffers=[b"abc", BLOB])
        echoed = await wait_for_comm_msg(kc, comm_id)
        assert echoed["content"]["data"] == {"echo": {"n": 2}}
        assert [bytes(b) for b in echoed["buffers"]] == [b"cba", BLOB[::-1]]
        kc.comm_close(comm_id)


@pytest.mark.parametrize("ws_protocol", ["auto", "legacy"])
def test_execute_interactive_and_comm_round_trip(gateway, ws_protocol):
    run_async(exercise_client, gateway.url, ws_protocol)


async def wait_for_comm_msg(kc, comm_id, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        msg = await kc.get_iopub_msg(timeout=max(0.0, deadline - time.monotonic()))
        if msg["msg_type"] == "comm_msg" and msg["content"]["comm_id"] == comm_id:
            return msg


def test_stdin_through_execute_interactive(gateway):
    async def scenario():
        async with remote_kernel(gateway.url) as (km, kc):
            prompts, seen = [], []

            async def answer(request):  # an async hook, as jupyter_client allows
                prompts.append(request["content"])
                kc.input("s3cret" if request["content"]["password"] else "jkg")

            reply = await kc.execute_interactive(
                "name = input('name? ')\nimport getpass\npw = getpass.getpass('pw? ')\nprint('hello', name, len(pw))",
                allow_stdin=True, stdin_hook=answer, output_hook=seen.append, timeout=30)
            assert reply["content"]["status"] == "ok"
            assert [(p["prompt"], p["password"]) for p in prompts] == [("name? ", False), ("pw? ", True)]
            assert stdout_text(seen) == "hello jkg 6\n"

    run_async(scenario)


def test_reconnects_with_same_session_after_drop(gateway):
    proxy = DroppingProxy(gateway.port)

    async def scenario():
        settings = GatewaySettings(url=f"http://127.0.0.1:{proxy.port}", token=TOKEN, retry_interval=0.2,
                                   retry_max=8)
        km = GatewayKernelManager(settings=settings)
        await km.start_kernel()
        kc = km.client()
        try:
            await kc.wait_for_ready(timeout=READY)
            session = kc.session_id
            seen = []

            def hook(msg):
                seen.append(msg)
                if msg["msg_type"] == "stream" and "before" in msg["content"]["text"]:
                    proxy.drop(refuse_for=1.5)  # the first reconnection attempts are refused

            # Printed while disconnected: the gateway buffers it for this session and replays it.
            reply = await kc.execute_interactive(
                "import time\nprint('before', flush=True)\ntime.sleep(0.5)\nprint('while away')\nvalue = 41",
                output_hook=hook, timeout=60)
            assert proxy.drops == 1 and kc.reconnects == 1 and kc.session_id == session
            assert reply["content"]["status"] == "ok"
            assert stdout_text(seen) == "before\nwhile away\n"
            seen.clear()
            assert (await kc.execute_interactive("print(value + 1)", output_hook=seen.append,
                                                 timeout=30))["content"]["status"] == "ok"
            assert stdout_text(seen) == "42\n"

            # A REST restart: the client keeps working with the fresh kernel.
            await km.restart_kernel()
            seen.clear()
            reply = await kc.execute_interactive("'value' in globals()", output_hook=seen.append, timeout=60)
            result = next(m for m in seen if m["msg_type"] == "execute_result")
            assert result["content"]["data"]["text/plain"] == "False"
        finally:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)

    try:
        run_async(scenario)
    finally:
        proxy.close()


def test_standalone_client_attaches_to_existing_kernel(gateway, monkeypatch):
    monkeypatch.setenv("JKG_GATEWAY_URL", gateway.url)
    monkeypatch.setenv("JKG_GATEWAY_TOKEN", TOKEN)
    kernel_id = gateway.start_kernel()["id"]

    async def scenario():
        kc = GatewayKernelClient(kernel_id=kernel_id)  # settings from the env
        try:
            await kc.wait_for_ready(timeout=READY)
            seen = []
            await kc.execute_interactive("print('standalone')", output_hook=seen.append, timeout=30)
            assert stdout_text(seen) == "standalone\n" and await kc.is_alive()
        finally:
            kc.stop_channels()

        wrong = GatewayKernelClient(kernel_id=kernel_id, settings=GatewaySettings(url=gateway.url, token="nope"))
        with pytest.raises(GatewayAuthError) as info:
            await wrong.wait_for_ready(timeout=READY)
        assert info.value.status == 401 and "invalid or missing credentials" in info.value.message
        wrong.stop_channels()

    try:
        run_async(scenario)
    finally:
        gateway.request("DELETE", f"/api/kernels/{kernel_id}")


def test_basic_credentials_and_kernel_env(gateway, monkeypatch):
    # jkg takes HTTP Basic with the token as password; KERNEL_* env reaches the kernel.
    monkeypatch.setenv("KERNEL_JKG_CLIENT_MARK", "marked")

    async def scenario():
        async with remote_kernel(gateway.url, token="", user="alice", password=TOKEN) as (km, kc):
            seen = []
            await kc.execute_interactive("import os\nprint(os.environ.get('KERNEL_USERNAME'), "
                                         "os.environ.get('KERNEL_JKG_CLIENT_MARK'))",
                                         output_hook=seen.append, timeout=30)
            assert stdout_text(seen) == "alice marked\n"

    run_async(scenario)


def test_tls_is_verified_by_default(tmp_path, monkeypatch):
    pytest.importorskip("cryptography")


    cert, key = self_signed_certificate(tmp_path)
    listen = f"--listen=ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    with GatewayProcess(listen, token=TOKEN) as tls_gateway:
        url = f"https://127.0.0.1:{tls_gateway.port}"

        async def scenario():
            with pytest.raises(GatewayUnreachable, match="certificate verification failed"):
                await GatewayKernelManager(url=url, token=TOKEN).start_kernel()
            async with remote_kernel(url, ca_certs=str(cert)) as (km, kc):
                assert kc.gateway_settings.ws_url.startswith("wss://")
                seen = []
                await kc.execute_interactive("print('over tls')", output_hook=seen.append, timeout=30)
                assert stdout_text(seen) == "over tls\n"

        run_async(scenario)


# ------------------------------------------------------------------------------------------ errors
def test_wrong_token_is_an_auth_error(gateway):
    async def scenario():
        km = GatewayKernelManager(url=gateway.url, token="wrong-token")
        with pytest.raises(GatewayAuthError) as info:
            await km.start_kernel()
        assert info.value.status == 401 and "invalid or missing credentials" in str(info.value)
        assert not km.has_kernel

    run_async(scenario)


def test_nothing_listening_is_unreachable():
    async def scenario():
        km = GatewayKernelManager(url=f"http://127.0.0.1:{free_port()}", token=TOKEN)
        with pytest.raises(GatewayUnreachable) as info:
            await km.start_kernel()
        assert "cannot reach the gateway" in str(info.value)

    run_async(scenario, timeout=30)


def test_kernel_limit_is_a_quota_error():
    with GatewayProcess("--max-kernels", "1", token=TOKEN) as limited:
        async def scenario():
            first = GatewayKernelManager(url=limited.url, token=TOKEN)
            await first.start_kernel()
            try:
                second = GatewayKernelManager(url=limited.url, token=TOKEN)
                with pytest.raises(GatewayQuotaError) as info:
                    await second.start_kernel()
                assert info.value.status == 403 and "Maximum number of kernels (1)" in info.value.message
            finally:
                await first.shutdown_kernel(now=True)

        run_async(scenario)


def test_kernel_deleted_from_outside_is_kernel_died(gateway):
    async def scenario():
        async with remote_kernel(gateway.url) as (km, kc):
            loop = asyncio.get_running_loop()
            response = await loop.run_in_executor(None, gateway.request, "DELETE", f"/api/kernels/{km.kernel_id}")
            assert response.status_code == 204
            with pytest.raises(KernelDied) as info:
                await kc.get_shell_msg(timeout=30)  # the drop is noticed, the 404 explains it
            assert km.kernel_id in str(info.value) and info.value.status == 404
            with pytest.raises(KernelDied):
                kc.execute("1 + 1")
            with pytest.raises(KernelDied):
                await km.interrupt_kernel()
            assert not await km.is_alive() and not await kc.is_alive()

    run_async(scenario)


# ------------------------------------------------------------------------------------------ units
def test_error_classification_matches_each_gateway():
    kg_quota = error_from_response(403, b'{"reason": "Forbidden", "message": "Resource Limit"}', url="u", what="x")
    jkg_quota = error_from_response(403, b'{"reason": "Resource Limit", "message": "Maximum number of kernels '
                                    b'(1) reached"}', url="u", what="x")
    forbidden = error_from_response(403, b'{"reason": "Forbidden", "message": "listing is disabled"}', url="u",
                                    what="x")
    assert isinstance(kg_quota, GatewayQuotaError) and isinstance(jkg_quota, GatewayQuotaError)
    assert isinstance(forbidden, GatewayAuthError) and not isinstance(forbidden, GatewayQuotaError)
    assert isinstance(error_from_response(404, b"", url="u", what="x", kernel_id="k"), KernelDied)
    other = error_from_response(500, b"<html>oops</html>", url="u", what="x")
    assert isinstance(other, GatewayHTTPError) and other.message.endswith("<html>oops</html>")
    for cls in (GatewayUnreachable, GatewayAuthError, GatewayQuotaError, KernelDied, GatewayHTTPError):
        assert issubclass(cls, GatewayClientError)


def test_settings_from_env_and_arguments():
    env = {"JKG_GATEWAY_URL": "https://gw.example:8443/base/", "JKG_GATEWAY_USER": "ann",
           "JKG_GATEWAY_PASSWORD": "pw", "JKG_GATEWAY_HEADERS": '{"X-Extra": "1"}'}
    settings = GatewaySettings.from_env(env)
    assert settings.url == "https://gw.example:8443/base" and settings.ws_url == "wss://gw.example:8443/base"
    assert settings.validate_cert is True  # on unless turned off
    assert settings.auth_headers() == {"X-Extra": "1", "Authorization": "Basic " + base64.b64encode(b"ann:pw").decode()}
    assert settings.channels_url("k-1", "s 1") == "wss://gw.example:8443/base/api/kernels/k-1/channels?session_id=s%201"
    token = GatewaySettings.from_env(env, token="t0k", validate_cert=False)
    assert token.auth_headers()["Authorization"] == "token t0k" and token.validate_cert is False
    assert "t0k" not in repr(token) and "pw" not in repr(token)
    assert GatewaySettings.from_env({**env, "JKG_GATEWAY_VALIDATE_CERT": "false"}).validate_cert is False
    with pytest.raises(GatewayClientError, match="JKG_GATEWAY_URL"):
        GatewaySettings.from_env({})
    with pytest.raises(GatewayClientError):
        GatewaySettings.from_env({"JKG_GATEWAY_URL": "ftp://x"})


def test_codec_speaks_the_gateways_wire_format():
    from jupyter_client.session import Session

    msg = Session(username="u").msg("comm_msg", {"comm_id": "c", "data": {"é": 1}})
    msg["buffers"] = [BLOB, b""]
    frame, binary = encode_message("shell", msg, v1=True)
    incoming = wire.decode_client_v1(frame)
    assert binary and incoming.channel == "shell" and incoming.parts[4:] == [BLOB, b""]
    frame, binary = encode_message("shell", msg, v1=False)
    assert binary and wire.decode_client_legacy_binary(frame).parts[4:] == [BLOB, b""]
    del msg["buffers"]
    text, binary = encode_message("control", msg, v1=False)
    assert not binary and isinstance(text, str)
    assert wire.decode_client_legacy_text(text).header["msg_id"] == msg["header"]["msg_id"]

    parts = [b'{"msg_id": "m", "msg_type": "status", "date": "2026-01-01T00:00:00.000000Z"}',
             b'{"msg_id": "p"}', b"{}", b'{"execution_state": "idle"}', BLOB]
    cases = ((wire.encode_v1("iopub", parts), True, [BLOB]),
             (wire.encode_legacy("iopub", parts, "m", "status")[0], False, [BLOB]),
             (wire.encode_legacy("iopub", parts[:4], "m", "status")[0].decode(), False, []))
    for frame, v1, buffers in cases:
        channel, decoded = decode_frame(frame, v1)
        assert channel == "iopub" and decoded["msg_type"] == "status"
        assert decoded["parent_header"] == {"msg_id": "p"} and decoded["header"]["date"].year == 2026
        assert [bytes(b) for b in decoded["buffers"]] == buffers


def test_dead_status_fails_the_channels_after_delivering_it():
    async def scenario():
        kc = GatewayKernelClient(kernel_id="k", settings=GatewaySettings(url="http://127.0.0.1:9"))
        kc.start_channels()
        kc._connection.stop()  # no socket needed: feed a message as the reader would
        status = {"header": {"msg_id": "s", "msg_type": "status"}, "msg_id": "s", "msg_type": "status",
                  "parent_header": {}, "metadata": {}, "content": {"execution_state": "dead"}, "buffers": []}
        kc._connection._deliver("iopub", status)
        assert (await kc.get_iopub_msg(timeout=1))["content"]["execution_state"] == "dead"
        with pytest.raises(KernelDied):
            await kc.get_iopub_msg(timeout=1)
        with pytest.raises(KernelDied):
            await kc.get_shell_msg(timeout=None)  # fails at once instead of waiting forever
        assert not await kc.is_alive()

    run_async(scenario, timeout=30)


# ------------------------------------------------------------------------------------------ reference gateway
def install_reference_gateway() -> None:
    """jupyter-kernel-gateway 3.0.1 in its own venv (the one the benchmarks use), made once."""
    venv = KG_BIN.parent.parent
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                                 "--disable-pip-version-check", "jupyter-kernel-gateway==3.0.1", "ipykernel"],
                                capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"could not create a venv for jupyter-kernel-gateway: {error!r}")
    if result.returncode != 0 or not KG_BIN.exists():
        pytest.skip(f"could not install jupyter-kernel-gateway 3.0.1 from PyPI: {result.stderr[-500:]}")


@pytest.fixture(scope="module")
def kernel_gateway():
    """jupyter-kernel-gateway 3.0.1 from the benchmark venv, on a free loopback port."""
    if not KG_BIN.exists():
        install_reference_gateway()
    port = free_port()
    env = {**os.environ, "KG_LIST_KERNELS": "True"}
    process = subprocess.Popen(
        [str(KG_BIN), "--KernelGatewayApp.ip=127.0.0.1", f"--KernelGatewayApp.port={port}",
         f"--KernelGatewayApp.auth_token={TOKEN}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        import requests

        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"jupyter-kernelgateway exited: {process.stderr.read().decode(errors='replace')}")
            try:
                if requests.get(f"{url}/api", headers={"Authorization": f"token {TOKEN}"}, timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail("jupyter-kernelgateway did not answer within 60 s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def test_nbclient_runs_notebook_through_jupyter_kernel_gateway(kernel_gateway, monkeypatch):
    monkeypatch.setenv("JKG_GATEWAY_URL", kernel_gateway)
    monkeypatch.setenv("JKG_GATEWAY_TOKEN", TOKEN)
    nb = run_async(execute_notebook, build_notebook())
    check_executed(nb)


def test_kernel_deleted_on_jupyter_kernel_gateway_is_kernel_died(kernel_gateway):
    # jupyter-kernel-gateway keeps the WebSocket open when the kernel is deleted: the
    # liveness watchdog must notice while the client waits.
    async def scenario():
        async with remote_kernel(kernel_gateway, liveness_interval=0.5) as (km, kc):
            import requests

            loop = asyncio.get_running_loop()
            response = await loop.run_in_executor(None, lambda: requests.delete(
                f"{kernel_gateway}/api/kernels/{km.kernel_id}", headers={"Authorization": f"token {TOKEN}"},
                timeout=30))
            assert response.status_code == 204
            with pytest.raises(KernelDied) as info:
                await kc.get_shell_msg(timeout=30)
            assert info.value.status == 404 and km.kernel_id in str(info.value)

    run_async(scenario)


@pytest.fixture(scope="module")
def jupyter_server_url(tmp_path_factory):
    """Plain jupyter_server (not a gateway, but the same kernels API) on a free loopback port."""
    pytest.importorskip("jupyter_server")
    import requests

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         f"--IdentityProvider.token={TOKEN}", "--ServerApp.open_browser=False", "--allow-root",
         f"--ServerApp.root_dir={tmp_path_factory.mktemp('jupyter_server')}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "jupyter_server exited"
            try:
                if requests.get(f"{url}/api", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "jupyter_server did not answer within 60 s"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.mark.parametrize("ws_protocol", ["auto", "legacy"])
def test_client_against_jupyter_server(jupyter_server_url, ws_protocol):
    run_async(exercise_client, jupyter_server_url, ws_protocol)


def test_cli_timeout_is_one_line_and_keeps_what_ran(gateway, tmp_path):
    source, output = tmp_path / "slow.ipynb", tmp_path / "slow-out.ipynb"
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# slow"),
        nbformat.v4.new_code_cell("print('first')"),
        nbformat.v4.new_code_cell("import time\ntime.sleep(60)"),
        nbformat.v4.new_code_cell("print('never')")])
    nbformat.write(notebook, source)
    env = {**os.environ, "JKG_GATEWAY_URL": gateway.url, "JKG_GATEWAY_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "jkg.client", "execute", str(source), "--output", str(output),
                             "--timeout", "3"], cwd=REPO, env=env, capture_output=True, timeout=180)
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert "Traceback" not in stderr and "\x1b[" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [
        "error: cell 3 did not finish within --timeout 3 s; the notebook is written with what ran"]
    assert "[1/3] cell 2: print('first')" in stderr and "[2/3] cell 3: import time" in stderr
    written = nbformat.read(output, as_version=4)
    assert written.cells[1].outputs[0]["text"] == "first\n"
    assert not written.cells[3].outputs


def test_cli_error_has_no_colour_codes_off_a_terminal(gateway, tmp_path):
    source = tmp_path / "raises.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1/0")]), source)
    env = {**os.environ, "JKG_GATEWAY_URL": gateway.url, "JKG_GATEWAY_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "jkg.client", "execute", str(source)],
                            cwd=REPO, env=env, capture_output=True, timeout=180)
    stderr = result.stderr.decode()
    assert result.returncode == 1 and "ZeroDivisionError" in stderr and "\x1b[" not in stderr
