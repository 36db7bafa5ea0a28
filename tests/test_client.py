"""``jkg.client`` against a real jkg (``twistd jkg``): the client API, reconnection, credentials, TLS, errors.

Everything listens on 127.0.0.1 and every wait is bounded (see
:mod:`client_support` for why each scenario runs in its own event loop).
Each test shuts down the kernels it starts; the ``gateway`` fixture checks
that none survives.  The notebook runners are in ``test_client_notebooks.py``,
the pure parts in ``test_client_units.py``, the runs against
jupyter-kernel-gateway and jupyter_server in ``test_client_reference.py``.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import pytest
from client_support import READY, exercise_client, free_port, remote_kernel, run_async, stdout_text
from conftest import TOKEN
from support import GatewayProcess, self_signed_certificate

from jkg.client import (
    GatewayAuthError,
    GatewayKernelClient,
    GatewayKernelManager,
    GatewayQuotaError,
    GatewaySettings,
    GatewayUnreachable,
    KernelDied,
)


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


@pytest.mark.parametrize("ws_protocol", ["auto", "legacy"])
def test_execute_interactive_and_comm_round_trip(gateway, ws_protocol):
    run_async(exercise_client, gateway.url, ws_protocol)


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


# errors
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
