"""ZeroMQ connections to one kernel: the only module that touches ZeroMQ sockets.

One SUB socket receives the kernel's iopub stream (fanned out by the kernel
to every client), and one DEALER per request channel (shell, control, stdin)
carries every client's requests.  The DEALERs share one identity so that the
kernel's stdin ``input_request`` -- addressed to whoever sent the shell
request -- arrives on our stdin socket.  Replies are routed to clients by the
parent ``msg_id``, which is why one set of sockets serves all clients.

Messages are checked and signed here with the kernel's key (HMAC over the
four JSON parts, as bytes: nothing is decoded or re-encoded); the key never
leaves this module and the launcher.

Each socket is driven by the reactor through a small
:class:`~twisted.internet.interfaces.IReadDescriptor` of our own
(:class:`ZmqSocket`) rather than txzmq: it reads whole multipart messages in
one loop, hands them on without a logging context per message, keeps large
parts as zero-copy views of ZeroMQ's buffers, and only schedules an extra read
after a send when ZeroMQ says a message is actually waiting.  Nothing here
imports the global reactor: the reactor comes from :func:`make_factory`.
"""
from __future__ import annotations

import hmac
import struct
import uuid
from typing import Callable, Sequence

import zmq
from twisted.logger import Logger
from zope.interface import implementer
from twisted.internet.interfaces import IReadDescriptor

from .messages import DELIMITER, KernelMessage, MalformedMessage, parse_kernel_frames

log = Logger()

REQUEST_CHANNELS = ("shell", "control", "stdin")

#: Parts at least this large are kept as views of ZeroMQ's buffer (received)
#: or handed to ZeroMQ without a copy (sent); smaller ones are copied, which is
#: cheaper for them.
ZERO_COPY_THRESHOLD = 64 * 1024

#: Messages read from one socket before other sockets get a turn.
READ_BATCH = 256

_POLLIN = zmq.POLLIN
_EVENTS = zmq.EVENTS
_RCVMORE = zmq.RCVMORE
_NOBLOCK = zmq.NOBLOCK
_SNDMORE = zmq.SNDMORE
_CONNECTED_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED


class ZmqContext:
    """The gateway's one ZeroMQ context, and the reactor that drives its sockets."""

    linger = 100  # ms a closed socket may keep trying to deliver what it has queued

    def __init__(self, reactor, io_threads: int = 1):
        self.reactor = reactor
        self.context: zmq.Context | None = zmq.Context(io_threads)
        self.sockets: set[ZmqSocket] = set()

    def shutdown(self) -> None:
        """Close every socket still open and terminate the context."""
        for socket in list(self.sockets):
            socket.close()
        if self.context is not None:
            self.context.term()
            self.context = None


def make_factory(reactor) -> ZmqContext:
    """One ZeroMQ context per gateway, driven by ``reactor``."""
    return ZmqContext(reactor)


@implementer(IReadDescriptor)
class ZmqSocket:
    """One ZeroMQ socket read by the reactor; complete messages go to ``on_frames(frames)``.

    ZeroMQ's file descriptor is edge-triggered: it signals that the socket's
    state *may* have changed, and only ``EVENTS`` tells whether a message is
    waiting.  :meth:`doRead` therefore reads until ``EVENTS`` says nothing is
    left (at most :data:`READ_BATCH` messages at a time, then it yields to the
    reactor and continues on the next turn), and :meth:`send` -- which can
    consume the descriptor's signal -- checks ``EVENTS`` once and schedules a
    read only when a message is in fact waiting.

    From the part after the four header parts on (content, buffers), large
    parts are kept as ``memoryview``\\ s of ZeroMQ's own buffers, not copied.

    Reconnects start fast (10 ms) so a freshly started kernel is reached as
    soon as it binds, and back off to 1 s for a kernel that is gone.
    """

    def __init__(self, zmq_context: ZmqContext, kind: int, address: str,
                 on_frames: Callable[[list], None], identity: bytes | None = None):
        self._owner = zmq_context
        self._reactor = zmq_context.reactor
        socket = zmq_context.context.socket(kind)
        socket.setsockopt(zmq.LINGER, zmq_context.linger)
        socket.setsockopt(zmq.RECONNECT_IVL, 10)
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        # No high-water marks: the gateway reads as fast as the kernel writes,
        # and a message dropped here would be lost for every client.
        socket.setsockopt(zmq.SNDHWM, 0)
        socket.setsockopt(zmq.RCVHWM, 0)
        if identity is not None:
            socket.setsockopt(zmq.IDENTITY, identity)
        if kind == zmq.SUB:
            socket.setsockopt(zmq.SUBSCRIBE, b"")
        socket.connect(address)
        self.socket: zmq.Socket | None = socket
        self.on_frames = on_frames
        self._fd = socket.getsockopt(zmq.FD)
        self._read_call = None
        zmq_context.sockets.add(self)
        self._reactor.addReader(self)
        self.doRead()

    # -- IReadDescriptor -------------------------------------------------------
    def fileno(self) -> int:
        return self._fd if self.socket is not None else -1

    def logPrefix(self) -> str:  # noqa: N802 - Twisted API
        return "zmq"

    def connectionLost(self, reason) -> None:  # noqa: N802 - Twisted API
        self.close()

    def doRead(self) -> None:  # noqa: N802 - Twisted API
        call, self._read_call = self._read_call, None
        if call is not None and call.active():
            call.cancel()
        socket = self.socket
        if socket is None:
            return
        getsockopt = socket.getsockopt
        recv = socket.recv
        on_frames = self.on_frames
        for _ in range(READ_BATCH):
            if not getsockopt(_EVENTS) & _POLLIN:
                return
            frames = []
            append = frames.append
            after = -1  # frames seen after the delimiter
            while True:
                if after >= 4:  # content and buffers
                    frame = recv(_NOBLOCK, copy=False)
                    append(frame.bytes if len(frame) < ZERO_COPY_THRESHOLD else frame.buffer)
                else:
                    part = recv(_NOBLOCK)
                    append(part)
                    if after >= 0:
                        after += 1
                    elif part == DELIMITER:
                        after = 0
                if not getsockopt(_RCVMORE):
                    break
            try:
                on_frames(frames)
            except Exception:  # noqa: BLE001 - one bad message must not stop the socket
                log.failure("handling a message from a kernel")
            if self.socket is None:  # closed by the handler
                return
        self._schedule_read()

    def _schedule_read(self) -> None:
        if self._read_call is None and self.socket is not None:
            self._read_call = self._reactor.callLater(0, self.doRead)

    # -- sending -----------------------------------------------------------------
    def send(self, frames: Sequence) -> None:
        """Queue a multipart message; never blocks (no high-water mark is set)."""
        socket = self.socket
        if socket is None:
            return
        send = socket.send
        last = len(frames) - 1
        for index, frame in enumerate(frames):
            send(frame, _NOBLOCK | _SNDMORE if index < last else _NOBLOCK,
                 copy=len(frame) < ZERO_COPY_THRESHOLD)
        # Sending processes ZeroMQ's pending commands, which can swallow the
        # descriptor's signal for a message that arrived meanwhile.
        if self._read_call is None and socket.getsockopt(_EVENTS) & _POLLIN:
            self._schedule_read()

    def close(self) -> None:
        socket, self.socket = self.socket, None
        if socket is None:
            return
        call, self._read_call = self._read_call, None
        if call is not None and call.active():
            call.cancel()
        self._reactor.removeReader(self)
        self._owner.sockets.discard(self)
        socket.close()


def _address(info: dict, channel: str) -> str:
    port = info[f"{channel}_port"]
    if info.get("transport", "tcp") == "ipc":
        return f"ipc://{info['ip']}-{port}"
    return f"tcp://{info['ip']}:{port}"


class Signer:
    """HMAC of a message's four JSON parts with the kernel's key (Jupyter's signature).

    :param scheme: ``hmac-<hash>``, as in the connection file.
    """

    def __init__(self, key: bytes, scheme: str = "hmac-sha256"):
        kind, _, digest = scheme.partition("-")
        if kind != "hmac" or not digest:
            raise ValueError(f"unsupported signature scheme {scheme!r}")
        # A digest *name* selects OpenSSL's HMAC, much faster than the pure-Python one.
        self._auth = hmac.new(key, digestmod=digest) if key else None

    def sign(self, parts: Sequence) -> bytes:
        auth = self._auth
        if auth is None:
            return b""
        h = auth.copy()
        update = h.update
        update(parts[0])
        update(parts[1])
        update(parts[2])
        update(parts[3])
        return h.hexdigest().encode("ascii")

    def verify(self, parts: Sequence, signature: bytes) -> bool:
        return hmac.compare_digest(self.sign(parts), signature)


class KernelChannels:
    """The gateway's sockets to one kernel, with message signing and checking.

    :param zmq_context: the gateway's :class:`ZmqContext` (see :func:`make_factory`).
    :param on_message: called as ``on_message(KernelMessage)`` for
        every correctly signed message from the kernel.
    """

    def __init__(self, zmq_context: ZmqContext, connection_info: dict,
                 on_message: Callable[[KernelMessage], None]):
        key = connection_info.get("key", b"")
        if isinstance(key, str):
            key = key.encode("ascii")
        self._signer = Signer(key, connection_info.get("signature_scheme", "hmac-sha256"))
        self._on_message = on_message
        self.identity = uuid.uuid4().hex.encode("ascii")
        self._zmq = zmq_context
        self._sockets: dict[str, ZmqSocket] = {}
        self._monitors: dict[str, ZmqSocket] = {}
        self.on_connected: Callable[[], None] | None = None
        self.closed = False
        self._sockets["iopub"] = ZmqSocket(
            zmq_context, zmq.SUB, _address(connection_info, "iopub"),
            lambda frames: self._frames_received("iopub", frames))
        for channel in REQUEST_CHANNELS:
            self._sockets[channel] = ZmqSocket(
                zmq_context, zmq.DEALER, _address(connection_info, channel),
                lambda frames, channel=channel: self._frames_received(channel, frames),
                identity=self.identity)
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

    def _monitor(self, channel: str, socket: ZmqSocket) -> None:
        address = f"inproc://jkg-monitor-{uuid.uuid4().hex}"
        socket.socket.monitor(address, _CONNECTED_EVENTS)

        def on_event(frames: list, channel=channel) -> None:
            if frames and len(frames[0]) >= 2 and struct.unpack_from("<H", frames[0])[0] & _CONNECTED_EVENTS:
                self._connected(channel)

        self._monitors[channel] = ZmqSocket(self._zmq, zmq.PAIR, address, on_event)

    def _connected(self, channel: str) -> None:
        monitor = self._monitors.pop(channel, None)
        if monitor is None:
            return
        self._zmq.reactor.callLater(0, self._stop_monitor, channel, monitor)
        if not self._monitors and self.on_connected is not None:
            self.on_connected()

    def _stop_monitor(self, channel: str, monitor: ZmqSocket) -> None:
        socket = self._sockets.get(channel)
        try:
            if socket is not None and socket.socket is not None:
                socket.socket.disable_monitor()
        except zmq.ZMQError:
            pass
        monitor.close()

    def sign(self, parts: Sequence) -> bytes:
        return self._signer.sign(parts)

    def send(self, channel: str, parts: Sequence) -> None:
        """Sign ``[header, parent, metadata, content, *buffers]`` and send it.

        Only the four JSON parts' bytes are signed; nothing is re-encoded.
        """
        if self.closed:
            return
        self._sockets[channel].send([DELIMITER, self._signer.sign(parts), *parts])

    def _frames_received(self, channel: str, frames: list) -> None:
        try:
            message = parse_kernel_frames(channel, frames)
        except MalformedMessage as error:
            log.warn("dropped malformed {channel} message from kernel: {error}", channel=channel, error=error)
            return
        if not self._signer.verify(message.parts, message.signature):
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
                monitor.close()
            except Exception:  # noqa: BLE001
                pass
        for socket in self._sockets.values():
            try:
                socket.close()
            except Exception:  # noqa: BLE001 - closing must not fail the caller
                log.failure("closing kernel socket")
        self._sockets.clear()
