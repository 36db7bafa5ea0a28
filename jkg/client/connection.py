"""One WebSocket to a kernel's ``/channels``, shared by the four channels, that survives drops.

A Jupyter gateway multiplexes shell, iopub, stdin and control over one socket,
so one reader task demultiplexes frames into per-channel sinks and wakes anyone
waiting.  The socket is an implementation detail the caller should not have to
babysit: when the gateway (or the network) drops it, the connection asks the
REST API whether the kernel still exists (404 or ``dead`` means it does not,
which is reported as :class:`KernelDied`) and reconnects with the *same*
``session_id``, so the gateway routes pending replies to us and replays the
output it buffered meanwhile.  Messages sent while disconnected are held and
flushed on reconnection.

Some gateways (jupyter-kernel-gateway, jupyter_server) keep the socket open when
the kernel is deleted, so while a caller waits and nothing arrives, a watchdog
asks the REST API every ``liveness_interval`` seconds whether the kernel still
exists; that turns a silent hang into :class:`KernelDied`.

The v1 binary protocol is offered and used when the server selects it; a
server that selects nothing gets the legacy JSON protocol, and one that refuses
the offer outright (400) is asked again without it.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, WebSocketError, websocket_connect

from .codec import V1_PROTOCOL, CodecError, decode_frame, encode_message
from .errors import GatewayClientError, GatewayHTTPError, GatewayUnreachable, KernelDied, error_from_response
from .rest import GatewayREST, unreachable
from .settings import GatewaySettings

__all__ = ["KernelConnection"]

_MAX_MESSAGE = 256 * 1024 * 1024  # jkg's default limit; tornado's own default (10 MiB) is too small
_MAX_DELAY = 10.0


def _current_task() -> asyncio.Task | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # called from outside the loop (e.g. stop_channels() after asyncio.run)
        return None


def _cancel(task: asyncio.Task | None) -> None:
    """Cancel a task of ours, unless it is the caller or its loop is already gone."""
    if task is not None and not task.done() and task is not _current_task():
        try:
            task.cancel()
        except RuntimeError:  # the loop is closed; the task will never run again anyway
            pass


def _settle(future: asyncio.Future | None, error: BaseException) -> None:
    """Fail a pending future (tolerating a closed loop, where nobody can wait on it anyway)."""
    if future is not None and not future.done():
        try:
            future.set_exception(error)
        except RuntimeError:
            pass


def _consume(future: asyncio.Future) -> None:
    """Mark a future's exception as seen: a lost write is handled by reconnection, not by a warning."""
    if not future.cancelled():
        future.exception()


class KernelConnection:
    """The channels WebSocket of one kernel for one client session.

    :param sinks: filled by :meth:`add_sink`; called with each decoded message.
    """

    def __init__(self, settings: GatewaySettings, rest: GatewayREST, kernel_id: str, session_id: str,
                 log: logging.Logger | None = None):
        self.settings = settings
        self.rest = rest
        self.kernel_id = kernel_id
        self.session_id = session_id
        self.log = log or logging.getLogger(__name__)
        self.failure: BaseException | None = None  # set once; every later use raises it
        self.v1 = False
        self.reconnects = 0
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._sinks: dict[str, Callable[[dict], None]] = {}
        self._ws: WebSocketClientConnection | None = None
        self._outbox: list[tuple[str, dict]] = []
        self._stopped = False
        self._task: asyncio.Task | None = None
        self._ready: asyncio.Future | None = None
        self._activity: asyncio.Event | None = None
        self._watchdog: asyncio.Task | None = None
        self._waiters = 0
        self._last_seen = time.monotonic()

    def add_sink(self, channel: str, sink: Callable[[dict], None]) -> None:
        self._sinks[channel] = sink

    @property
    def connected(self) -> bool:
        return self._ws is not None and self.failure is None

    @property
    def protocol(self) -> str:
        return "v1" if self.v1 else "legacy"

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> asyncio.Future | None:
        """Start connecting, if an event loop runs; return a future that resolves once connected.

        Without a running loop nothing happens yet: the first awaited use starts it.  The
        connection is bound to the loop that starts it.
        """
        if self._task is None and not self._stopped:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return None
            self._ready = loop.create_future()
            self._ready.add_done_callback(_consume)
            self._task = loop.create_task(self._run(), name=f"jkg.client channels {self.kernel_id}")
            if self.settings.liveness_interval > 0:
                self._watchdog = loop.create_task(self._watch(), name=f"jkg.client watchdog {self.kernel_id}")
        return self._ready

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait for the first connection; raise its failure (auth, 404, unreachable) if it failed."""
        ready = self.start()
        if ready is None:
            raise RuntimeError("the channels are stopped")
        try:
            await asyncio.wait_for(asyncio.shield(ready), timeout)
        except asyncio.TimeoutError:
            raise GatewayUnreachable(f"no WebSocket to kernel {self.kernel_id} within {timeout} s",
                                     kernel_id=self.kernel_id) from None
        if self.failure is not None:
            raise self.failure

    def stop(self) -> None:
        """Close for good (the client stops its channels); no reconnection after this."""
        self._stopped = True
        self._close_socket()
        _cancel(self._task)
        _cancel(self._watchdog)
        _settle(self._ready, RuntimeError("the channels were stopped"))
        self._wake()

    def kernel_gone(self, message: str) -> None:
        """The kernel is being shut down on purpose: fail future use clearly, do not reconnect."""
        self._fail(KernelDied(message, kernel_id=self.kernel_id))

    # -- sending -----------------------------------------------------------------------
    def send(self, channel: str, msg: dict) -> None:
        """Send now if connected, else hold the message until the (re)connection."""
        if self.failure is not None:
            raise self.failure
        if self._stopped:
            raise RuntimeError("the channels of this client are stopped")
        if self._ws is None:
            self._outbox.append((channel, msg))
            return
        self._write(channel, msg)

    def _write(self, channel: str, msg: dict) -> None:
        payload, binary = encode_message(channel, msg, self.v1)
        try:
            future = self._ws.write_message(payload, binary=binary)
        except WebSocketClosedError:
            self._outbox.append((channel, msg))
            return
        future.add_done_callback(_consume)

    # -- waiting -----------------------------------------------------------------------
    async def wait_activity(self, timeout: float | None) -> None:
        """Return when a message arrives or the state changes, or after ``timeout`` seconds."""
        self.start()
        if self._activity is None:
            self._activity = asyncio.Event()
        self._activity.clear()
        self._waiters += 1
        try:
            await asyncio.wait_for(self._activity.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self._waiters -= 1

    def _wake(self) -> None:
        if self._activity is not None:
            self._activity.set()

    # -- the reader task ---------------------------------------------------------------
    async def _run(self) -> None:
        try:
            await self._attach()
            while True:
                await self._pump()
                if self._stopped or self.failure is not None:
                    return
                await self._reconnect()
        except GatewayClientError as error:
            self._fail(error)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - surface anything else to the waiting caller
            self.log.exception("kernel %s: channels failed", self.kernel_id)
            self._fail(GatewayClientError(f"the channels of kernel {self.kernel_id} failed: {error!r}",
                                          kernel_id=self.kernel_id))

    async def _attach(self) -> None:
        ws = await self._open()
        if self._stopped:
            ws.close()
            return
        self._ws = ws
        self.v1 = ws.selected_subprotocol == V1_PROTOCOL
        self.log.debug("kernel %s: connected (%s protocol, session %s)", self.kernel_id, self.protocol,
                       self.session_id)
        outbox, self._outbox = self._outbox, []
        for channel, msg in outbox:
            self._write(channel, msg)
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        self._wake()

    async def _open(self) -> WebSocketClientConnection:
        offer = self.settings.ws_protocol == "auto"
        try:
            return await self._handshake(offer)
        except GatewayHTTPError as error:
            if offer and error.status == 400:  # a server that refuses the subprotocol offer
                self.log.info("kernel %s: handshake refused with a subprotocol offer, retrying legacy",
                              self.kernel_id)
                return await self._handshake(False)
            raise

    async def _handshake(self, offer_v1: bool) -> WebSocketClientConnection:
        url = self.settings.channels_url(self.kernel_id, self.session_id)
        request = HTTPRequest(url, headers=self.settings.auth_headers(),
                              connect_timeout=self.settings.connect_timeout,
                              request_timeout=self.settings.connect_timeout, **self.settings.tls_options())
        try:
            return await websocket_connect(
                request, subprotocols=[V1_PROTOCOL] if offer_v1 else None, max_message_size=_MAX_MESSAGE,
                ping_interval=self.settings.ping_interval or None)
        except HTTPClientError as error:
            if error.code == 599:
                raise unreachable(error, url) from error
            body = error.response.body if error.response is not None else None
            raise error_from_response(error.code, body, url=url, what="open the kernel's channels",
                                      http_reason=error.message, kernel_id=self.kernel_id) from None
        except OSError as error:
            raise unreachable(error, url) from error
        except WebSocketError as error:
            raise GatewayClientError(f"WebSocket handshake with {url} failed: {error}", url=url) from None

    async def _pump(self) -> None:
        ws = self._ws
        if ws is None:
            return
        while True:
            frame = await ws.read_message()
            if frame is None:
                break
            try:
                channel, msg = decode_frame(frame, self.v1)
            except CodecError as error:
                self.log.warning("kernel %s: ignoring a malformed frame: %s", self.kernel_id, error)
                continue
            self._deliver(channel, msg)
        self.close_code, self.close_reason = ws.close_code, ws.close_reason
        if self._ws is ws:
            self._ws = None

    def _deliver(self, channel: str, msg: dict) -> None:
        self._last_seen = time.monotonic()
        sink = self._sinks.get(channel)
        if sink is not None:
            sink(msg)
        self._wake()
        if (channel == "iopub" and msg["msg_type"] == "status"
                and msg["content"].get("execution_state") == "dead"):
            self._fail(KernelDied(f"the gateway reports kernel {self.kernel_id} dead", kernel_id=self.kernel_id))

    async def _watch(self) -> None:
        """While someone waits and nothing arrives, check that the kernel still exists."""
        interval = self.settings.liveness_interval
        while not self._stopped and self.failure is None:
            await asyncio.sleep(interval)
            if self._waiters == 0 or self._ws is None or time.monotonic() - self._last_seen < interval:
                continue  # nobody waiting, a reconnection under way, or messages flowing
            try:
                model = await self.rest.get_kernel(self.kernel_id)
            except KernelDied as error:
                self._fail(error)
                return
            except GatewayClientError:
                continue  # unreachable or refused: the socket itself will tell
            if isinstance(model, dict) and model.get("execution_state") == "dead":
                self._fail(KernelDied(f"kernel {self.kernel_id} is dead on the gateway", kernel_id=self.kernel_id))
                return

    async def _reconnect(self) -> None:
        """Reattach with the same session id, unless the kernel is gone; bounded attempts with backoff."""
        self.log.warning("kernel %s: WebSocket closed by the server (%s %s); reconnecting session %s",
                         self.kernel_id, self.close_code, self.close_reason or "", self.session_id)
        attempts = max(1, self.settings.retry_max)
        last: GatewayClientError | None = None
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(min(self.settings.retry_interval * 2 ** (attempt - 1), _MAX_DELAY))
            try:
                model = await self.rest.get_kernel(self.kernel_id)  # KernelDied on 404
                if isinstance(model, dict) and model.get("execution_state") == "dead":
                    raise KernelDied(f"kernel {self.kernel_id} is dead on the gateway", kernel_id=self.kernel_id)
                await self._attach()
            except (GatewayUnreachable, GatewayHTTPError) as error:
                last = error
                continue
            if not self._stopped:
                self.reconnects += 1
                self.log.info("kernel %s: reconnected (%s protocol)", self.kernel_id, self.protocol)
            return
        raise GatewayUnreachable(f"lost the WebSocket to kernel {self.kernel_id} and {attempts} reconnection "
                                 f"attempts failed; last error: {last}", kernel_id=self.kernel_id)

    def _fail(self, error: BaseException) -> None:
        if self.failure is None:
            self.failure = error
        _cancel(self._watchdog)
        _settle(self._ready, error)
        self._close_socket()
        self._wake()

    def _close_socket(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close()
            except RuntimeError:  # its event loop is already closed: nothing left to close
                pass
