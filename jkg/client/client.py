"""``GatewayKernelClient``: jupyter_client's ``AsyncKernelClient`` over a gateway WebSocket.

Subclassing ``AsyncKernelClient`` keeps every request method (``execute``,
``kernel_info``, ``complete``, ``input``, ``shutdown``...), ``get_*_msg``,
``_recv_reply`` and ``wait_for_ready`` exactly as jupyter_client defines them:
they only need channel objects, which :mod:`jkg.client.channels` provides.  What
has to change is what assumed ZeroMQ: ``execute_interactive`` polled the
sockets (here: wait on the shared connection), liveness asked a local process
or the heartbeat (here: the gateway's REST API), and the session signed
messages (here: unsigned; the gateway signs them).
"""
from __future__ import annotations

import getpass
import inspect
import time
import uuid
from typing import Any, Callable

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.session import Session
from traitlets import Unicode

from .channels import GatewayChannel, GatewayHBChannel
from .connection import KernelConnection
from .errors import KernelDied
from .rest import GatewayREST
from .settings import GatewaySettings

__all__ = ["GatewayKernelClient"]

CHANNELS = ("shell", "iopub", "stdin", "control")


class GatewayKernelClient(AsyncKernelClient):
    """A kernel client for a kernel that lives behind a Jupyter gateway.

    Usually made by :meth:`jkg.client.GatewayKernelManager.client`; standalone,
    pass ``kernel_id`` (and ``settings`` or ``JKG_GATEWAY_*`` env).  ``session_id``
    names this client's WebSocket session; it stays the same across reconnections.
    A client is bound to the asyncio loop that starts its channels.
    """

    kernel_id = Unicode("", help="The gateway's id of the kernel.")

    def __init__(self, *, kernel_id: str | None = None, settings: GatewaySettings | None = None,
                 session_id: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if kernel_id:
            self.kernel_id = kernel_id
        if not self.kernel_id:
            raise ValueError("a GatewayKernelClient needs the kernel_id of a kernel on the gateway")
        if settings is None:
            settings = getattr(self.parent, "gateway_settings", None) or GatewaySettings.from_env()
        self.gateway_settings = settings
        self.rest = GatewayREST(settings)
        username = settings.user or getpass.getuser()
        # Only used to build messages: they go out unsigned (the gateway signs them with the
        # kernel's key), so this session's own key never matters.
        self.session = Session(session=session_id or str(uuid.uuid4()), username=username)
        self._connection = KernelConnection(settings, self.rest, self.kernel_id, self.session.session, self.log)
        # Setting the protected traits makes KernelClient's channel properties return ours.
        self._shell_channel = GatewayChannel("shell", self._connection)
        self._iopub_channel = GatewayChannel("iopub", self._connection)
        self._stdin_channel = GatewayChannel("stdin", self._connection)
        self._control_channel = GatewayChannel("control", self._connection)
        self._hb_channel = GatewayHBChannel(self._connection)

    # -- state -----------------------------------------------------------------------------
    @property
    def session_id(self) -> str:
        return self.session.session

    @property
    def connected(self) -> bool:
        """Whether the WebSocket is open right now (it may be reconnecting)."""
        return self._connection.connected

    @property
    def protocol(self) -> str:
        """``"v1"`` or ``"legacy"``: the framing the server selected."""
        return self._connection.protocol

    @property
    def reconnects(self) -> int:
        """How many times the WebSocket was re-established after a drop."""
        return self._connection.reconnects

    @property
    def failure(self) -> BaseException | None:
        """Why the channels stopped working for good (``KernelDied``, ``GatewayAuthError``...)."""
        return self._connection.failure

    def kernel_gone(self, message: str) -> None:
        """Fail every later use with ``KernelDied(message)`` and stop reconnecting.

        For whoever shuts the kernel down on purpose (``GatewayKernelManager.shutdown_kernel`` calls it on
        each of its clients first), so that a waiting reader fails with that reason instead of retrying
        against a kernel that will not come back.
        """
        self._connection.kernel_gone(message)

    # -- channels --------------------------------------------------------------------------
    def start_channels(self, shell: bool = True, iopub: bool = True, stdin: bool = True, hb: bool = True,
                       control: bool = True) -> Any:
        """Start the channels; returns an awaitable that resolves once the WebSocket is open.

        Called without a running event loop, the connection opens on the first awaited use.
        """
        super().start_channels(shell=shell, iopub=iopub, stdin=stdin, hb=hb, control=control)
        return self._connection.start()

    def stop_channels(self) -> None:
        super().stop_channels()
        self._connection.stop()

    async def connect(self, timeout: float | None = None) -> None:
        """Start the channels if needed and wait until the WebSocket is open.

        :raises GatewayClientError: the subclass for why it could not open.
        """
        if not self.channels_running:
            self.start_channels()
        await self._connection.wait_connected(timeout)

    async def wait_for_ready(self, timeout: float | None = None) -> None:
        """Connect, then ``AsyncKernelClient``'s own readiness check (``kernel_info`` + iopub).

        Opening the WebSocket is part of getting ready here, so it counts against ``timeout``
        and the check gets what is left.
        """
        started = time.monotonic()
        await self.connect(timeout)
        remaining = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        await super().wait_for_ready(timeout=remaining)

    # -- liveness --------------------------------------------------------------------------
    async def _async_is_alive(self) -> bool:
        """Ask the gateway, as there is no local process or heartbeat to ask."""
        if isinstance(self._connection.failure, KernelDied):
            return False
        is_alive = getattr(self.parent, "gateway_is_alive", None)
        if is_alive is not None:
            return await is_alive(self.kernel_id)
        try:
            model = await self.rest.get_kernel(self.kernel_id)
        except KernelDied:
            return False
        return not isinstance(model, dict) or model.get("execution_state") != "dead"

    is_alive = _async_is_alive

    # -- interactive execution ---------------------------------------------------------------
    async def execute_interactive(self, code: str, silent: bool = False, store_history: bool = True,
                                  user_expressions: dict | None = None, allow_stdin: bool | None = None,
                                  stop_on_error: bool = True, timeout: float | None = None,
                                  output_hook: Callable | None = None, stdin_hook: Callable | None = None) -> dict:
        """Run ``code``, passing its iopub messages to ``output_hook`` and stdin requests to
        ``stdin_hook`` (sync or async), until the kernel is idle; return the execute reply.

        Same contract as jupyter_client's ``execute_interactive``; the default hooks print
        plain-text output and prompt on the terminal.

        :raises TimeoutError: no output and no reply within ``timeout`` seconds.
        :raises GatewayClientError: the kernel died or the gateway was lost for good.
        """
        if not self.iopub_channel.is_alive():
            raise RuntimeError("IOPub channel must be running to receive output")
        if allow_stdin is None:
            allow_stdin = self.allow_stdin
        if allow_stdin and not self.stdin_channel.is_alive():
            raise RuntimeError("stdin channel must be running to allow input")
        msg_id = self.execute(code, silent=silent, store_history=store_history, user_expressions=user_expressions,
                              allow_stdin=allow_stdin, stop_on_error=stop_on_error)
        output_hook = output_hook or self._output_hook_default
        stdin_hook = stdin_hook or self._stdin_hook_default
        deadline = None if timeout is None else time.monotonic() + timeout

        def remaining() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        while True:
            request = self.stdin_channel.take_nowait() if allow_stdin else None
            if request is not None:
                result = stdin_hook(request)
                if inspect.isawaitable(result):
                    await result
                continue
            msg = self.iopub_channel.take_nowait()
            if msg is not None:
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                output_hook(msg)
                if msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle":
                    break
                continue
            if remaining() == 0.0:
                raise TimeoutError("Timeout waiting for output")
            await self._connection.wait_activity(remaining())
        return await self._async_recv_reply(msg_id, timeout=remaining())

    # -- comms -------------------------------------------------------------------------------
    def comm_open(self, target_name: str, data: dict | None = None, metadata: dict | None = None,
                  buffers: list[bytes] | None = None, comm_id: str | None = None) -> str:
        """Open a comm to the kernel's ``target_name``; returns the comm id."""
        comm_id = comm_id or uuid.uuid4().hex
        self._send_comm("comm_open", {"comm_id": comm_id, "target_name": target_name, "data": data or {}},
                        metadata, buffers)
        return comm_id

    def comm_msg(self, comm_id: str, data: dict | None = None, metadata: dict | None = None,
                 buffers: list[bytes] | None = None) -> str:
        """Send data (and binary buffers) on an open comm; returns the message id."""
        return self._send_comm("comm_msg", {"comm_id": comm_id, "data": data or {}}, metadata, buffers)

    def comm_close(self, comm_id: str, data: dict | None = None) -> str:
        return self._send_comm("comm_close", {"comm_id": comm_id, "data": data or {}}, None, None)

    def _send_comm(self, msg_type: str, content: dict, metadata: dict | None, buffers: list | None) -> str:
        msg = self.session.msg(msg_type, content, metadata=metadata)
        if buffers:
            msg["buffers"] = [bytes(b) for b in buffers]
        self.shell_channel.send(msg)
        return msg["header"]["msg_id"]
