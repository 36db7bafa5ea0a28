"""ZeroMQ connections to one kernel: the only module that imports txzmq.

One SUB socket receives the kernel's iopub stream (fanned out by the registry
to every client), and one DEALER per request channel (shell, control, stdin)
carries every client's requests.  The DEALERs share one identity so that the
kernel's stdin ``input_request`` -- addressed to whoever sent the shell
request -- arrives on our stdin socket.  Replies are routed to clients by the
parent ``msg_id``, which is why one set of sockets serves all clients.

Messages are checked and signed here with the kernel's key through
jupyter_client's :class:`~jupyter_client.session.Session`; the key never
leaves this module and the launcher.  txzmq imports the global reactor at
import time, so this module must only be imported after the reactor is chosen.
"""
from __future__ import annotations

import hmac
import struct
import uuid
from typing import Callable, Sequence

import zmq
from jupyter_client.session import Session
from twisted.logger import Logger
from txzmq import ZmqConnection, ZmqDealerConnection, ZmqEndpoint, ZmqEndpointType, ZmqFactory, ZmqSubConnection

from .messages import DELIMITER, KernelMessage, MalformedMessage, parse_kernel_frames

log = Logger()

REQUEST_CHANNELS = ("shell", "control", "stdin")


class _Socket:
    """Mixin: hand every complete multipart message (all frames) to a callback.

    txzmq's SUB delivers only the first frame to ``gotMessage``; Jupyter
    messages have seven or more, so ``messageReceived`` is overridden.
    Reconnects start fast (10 ms) so a freshly started kernel is reached as
    soon as it binds, and back off to 1 s for a kernel that is gone.
    """

    channel = ""
    on_frames: Callable[[str, list], None]
    reconnectInterval = 10
    reconnectIntervalMax = 1000

    def messageReceived(self, message):  # noqa: N802 - txzmq hook
        self.on_frames(self.channel, message)


class _SubSocket(_Socket, ZmqSubConnection):
    pass


class _DealerSocket(_Socket, ZmqDealerConnection):
    pass


class _MonitorSocket(ZmqConnection):
    """Receives a socket's monitor events (a PAIR on an inproc address)."""

    socketType = zmq.PAIR
    on_event: Callable[[int], None]

    def messageReceived(self, message):  # noqa: N802 - txzmq hook
        if message and len(message[0]) >= 2:
            self.on_event(struct.unpack_from("<H", message[0])[0])


_CONNECTED_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED


def _address(info: dict, channel: str) -> str:
    port = info[f"{channel}_port"]
    if info.get("transport", "tcp") == "ipc":
        return f"ipc://{info['ip']}-{port}"
    return f"tcp://{info['ip']}:{port}"


class KernelChannels:
    """The gateway's sockets to one kernel, with message signing and checking.

    :param on_message: called as ``on_message(KernelMessage)`` for
        every correctly signed message from the kernel.
    """

    def __init__(self, factory: ZmqFactory, connection_info: dict,
                 on_message: Callable[[KernelMessage], None]):
        key = connection_info.get("key", b"")
        if isinstance(key, str):
            key = key.encode("ascii")
        self._session = Session(key=key, signature_scheme=connection_info.get("signature_scheme", "hmac-sha256"))
        self._on_message = on_message
        self.identity = uuid.uuid4().hex.encode("ascii")
        self._sockets: dict[str, _Socket] = {}
        self._monitors: dict[str, _MonitorSocket] = {}
        self._factory = factory
        self.on_connected: Callable[[], None] | None = None
        iopub = _SubSocket(factory, ZmqEndpoint(ZmqEndpointType.connect, _address(connection_info, "iopub")))
        iopub.channel, iopub.on_frames = "iopub", self._frames_received
        iopub.subscribe(b"")
        self._sockets["iopub"] = iopub
        for channel in REQUEST_CHANNELS:
            socket = _DealerSocket(factory, ZmqEndpoint(ZmqEndpointType.connect, _address(connection_info, channel)),
                                   identity=self.identity)
            socket.channel, socket.on_frames = channel, self._frames_received
            self._sockets[channel] = socket
        self.closed = False
        for channel, socket in self._sockets.items():
            self._monitor(channel, socket)

    @property
    def all_connected(self) -> bool:
        """Whether every socket has completed its handshake with the kernel.

        A kernel's stdin ROUTER drops an ``input_request`` addressed to a
        peer whose handshake is not done yet, so a kernel is not ready for
        clients until all four sockets are connected, not just shell.
        """
        return not self._monitors

    def _monitor(self, channel: str, socket) -> None:
        address = f"inproc://jkg-monitor-{uuid.uuid4().hex}"
        socket.socket.monitor(address, _CONNECTED_EVENTS)
        monitor = _MonitorSocket(self._factory, ZmqEndpoint(ZmqEndpointType.connect, address))
        monitor.on_event = lambda event, channel=channel: self._connected(channel)
        self._monitors[channel] = monitor

    def _connected(self, channel: str) -> None:
        monitor = self._monitors.pop(channel, None)
        if monitor is None:
            return
        self._factory.reactor.callLater(0, self._stop_monitor, channel, monitor)
        if not self._monitors and self.on_connected is not None:
            self.on_connected()

    def _stop_monitor(self, channel: str, monitor) -> None:
        socket = self._sockets.get(channel)
        try:
            if socket is not None and socket.socket is not None:
                socket.socket.disable_monitor()
            if monitor.socket is not None:
                monitor.shutdown()
        except zmq.ZMQError:
            pass

    def sign(self, parts: Sequence[bytes]) -> bytes:
        return self._session.sign(parts[:4])

    def send(self, channel: str, parts: Sequence[bytes]) -> None:
        """Sign ``[header, parent, metadata, content, *buffers]`` and send it.

        Only the four JSON parts' bytes are signed; nothing is re-encoded.
        """
        if self.closed:
            return
        socket = self._sockets[channel]
        socket.send([DELIMITER, self.sign(parts), *parts])

    def _frames_received(self, channel: str, frames: list) -> None:
        try:
            message = parse_kernel_frames(channel, frames)
        except MalformedMessage as error:
            log.warn("dropped malformed {channel} message from kernel: {error}", channel=channel, error=error)
            return
        if not hmac.compare_digest(self.sign(message.parts), message.signature):
            log.warn("dropped {channel} message with a bad signature", channel=channel)
            return
        self._on_message(message)

    def close(self) -> None:
        """Close every socket; late sends become no-ops instead of ZMQErrors."""
        if self.closed:
            return
        self.closed = True
        monitors, self._monitors = list(self._monitors.values()), {}
        for monitor in monitors:
            try:
                monitor.shutdown()
            except Exception:  # noqa: BLE001
                pass
        for socket in self._sockets.values():
            try:
                socket.shutdown()
            except Exception:  # noqa: BLE001 - closing must not fail the caller
                log.failure("closing kernel socket")
        self._sockets.clear()


def make_factory(reactor) -> ZmqFactory:
    """One ZeroMQ context per gateway, driven by ``reactor``."""
    factory = ZmqFactory()
    factory.reactor = reactor
    return factory
