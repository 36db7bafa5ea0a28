"""The kernel channels WebSocket: autobahn protocol and its upgrade resource.

The REST route has already authenticated the client and found the kernel;
:class:`ChannelsUpgrade` hands the HTTP connection to autobahn with the kernel
id and session id attached.  The protocol converts frames (through
:mod:`jkg.web.wire`) and calls the registry.

Kernel to client, the path every output takes, is kept short:

- A message's WebSocket frame is built once per format and cached on the
  message (:class:`Frame`), so fan-out to many clients costs one encoding, not
  one per client.  Small frames are one joined ``bytes``; large ones stay a
  list of pieces (the kernel's parts are never copied into a joined frame
  unless a client is behind and its bytes must wait in Twisted's buffer).
- When nothing is waiting in the connection's buffer, the frame is written to
  the socket at once (``send``/``sendmsg``) instead of taking a turn of the
  reactor through Twisted's write buffer; only what the socket does not take
  is buffered.  (TLS and other transports always go through the transport.)
- Each client may have at most ``--client-buffer-limit`` bytes waiting: a
  message for a client over that limit disconnects it with code 4008 and the
  reason, and the kernel keeps its session's output for replay (see
  :meth:`jkg.kernels.kernel.ManagedKernel.detach`).  A client that stops
  reading thus never makes memory grow without bound nor slows anyone else.
- Optional iopub rate limits follow jupyter_server (:class:`IOPubRateLimit`).
"""
from __future__ import annotations

import time
from collections import deque

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import tcp
from twisted.logger import Logger
from zope.interface import implementer

from ..errors import BadRequest, GatewayError, ResourceLimit
from ..interfaces import IKernelClient
from ..kernels.messages import KernelMessage, dumps, make_header
from . import wire

_log = Logger()  # autobahn claims ``.log`` on protocols

LEGACY = "legacy"
V1 = "v1"
CLOSE_BAD_MESSAGE = 4400
CLOSE_TOO_SLOW = 4008
_OPEN = WebSocketServerProtocol.STATE_OPEN

#: Frames smaller than this are joined into one ``bytes`` (one write per client);
#: larger ones keep the kernel's parts as separate pieces (no copy).
JOIN_BELOW = 64 * 1024
_MAX_PIECES = 512  # well under IOV_MAX


class Frame:
    """One server-to-client WebSocket frame, shared by every client of a format.

    Server frames are unmasked (RFC 6455 5.1), so the bytes are the same for
    every client.  ``pieces`` concatenated are the frame; ``size`` its length.
    """

    __slots__ = ("pieces", "size", "_joined")

    def __init__(self, payload_pieces: list, binary: bool):
        size = 0
        for piece in payload_pieces:
            size += len(piece)
        header = wire.server_frame_header(size, binary)
        size += len(header)
        if size < JOIN_BELOW or len(payload_pieces) > _MAX_PIECES:
            self._joined = b"".join([header, *payload_pieces])
            self.pieces = (self._joined,)
        else:
            self._joined = None
            self.pieces = (header, *payload_pieces)
        self.size = size

    def joined(self) -> bytes:
        """The whole frame as one ``bytes`` (what Twisted's buffer accepts); made once."""
        if self._joined is None:
            self._joined = b"".join(self.pieces)
        return self._joined

    def rest(self, sent: int) -> bytes:
        """The bytes after the first ``sent``."""
        if len(self.pieces) == 1:
            return self.pieces[0][sent:]
        for index, piece in enumerate(self.pieces):
            if sent < len(piece):
                return b"".join([memoryview(piece)[sent:], *self.pieces[index + 1:]])
            sent -= len(piece)
        return b""


def negotiate_subprotocol(offered: bytes | None) -> str | None:
    """The subprotocol to select: v1 when offered, none when nothing is offered.

    :raises BadRequest: when the client offers only subprotocols jkg does not
        speak -- answering 101 without one (as the reference does) makes
        strict clients fail the handshake with a confusing error.
    """
    if not offered:
        return None
    protocols = [p.strip() for p in offered.decode("latin-1").split(",") if p.strip()]
    if wire.V1_PROTOCOL in protocols:
        return wire.V1_PROTOCOL
    raise BadRequest(f"unsupported WebSocket subprotocol(s): {', '.join(protocols)}; "
                     f"this gateway speaks {wire.V1_PROTOCOL} or the legacy protocol (no subprotocol)")


def _encode_v1(message) -> Frame:
    return Frame(wire.encode_v1_pieces(message.channel, message.parts), True)


def _encode_legacy(message) -> Frame:
    pieces, binary = wire.encode_legacy_pieces(message.channel, message.parts, message.msg_id, message.msg_type)
    return Frame(pieces, binary)


def _buffer_holder(transport):
    """The Twisted file descriptor under ``transport`` whose write buffer can be measured.

    Twisted has no public "bytes waiting" accessor; its ``FileDescriptor`` keeps
    them in ``dataBuffer`` (from ``offset``) and ``_tempDataBuffer`` (of length
    ``_tempDataLen``), the same since Twisted 8.  TLS wraps such a descriptor.
    ``None`` when there is none to be found (the limit is then not enforced).
    """
    for _ in range(4):
        if transport is None:
            return None
        if hasattr(transport, "dataBuffer") and hasattr(transport, "_tempDataLen"):
            return transport
        transport = getattr(transport, "transport", None)
    return None


def _waiting(holder) -> int:
    """Bytes written to a connection and not yet taken by its socket."""
    return len(holder.dataBuffer) - holder.offset + holder._tempDataLen


class IOPubRateLimit:
    """jupyter_server's iopub rate limits for one client (``ZMQChannelsWebsocketConnection``).

    Over a sliding window of ``window`` seconds, every iopub message except
    ``status``, ``comm_open`` and ``execute_input`` counts as one message and,
    for ``stream`` messages only, as its size in bytes.  When the message rate
    goes over ``msg_rate`` (or the byte rate over ``data_rate``), the client
    gets one warning on stderr and then nothing until the rate falls below 80 %
    of the limit; dropped messages do not count.  A ``status: idle`` resets
    everything.  A limit of 0 is off.
    """

    EXEMPT = frozenset({"status", "comm_open", "execute_input"})

    def __init__(self, msg_rate: float, data_rate: float, window: float, clock=time.monotonic):
        self.msg_rate = msg_rate
        self.data_rate = data_rate
        self.window = window
        self._clock = clock
        self._queue: deque = deque()  # (expiry, bytes) of every counted message
        self._count = 0
        self._bytes = 0
        self.msgs_exceeded = False
        self.data_exceeded = False

    def admit(self, message) -> tuple[bool, str | None]:
        """``(send it, warning to send first or None)`` for one iopub message."""
        msg_type = message.msg_type
        if msg_type == "status":
            if message.execution_state == "idle":
                self._queue.clear()
                self._count = self._bytes = 0
                self.msgs_exceeded = self.data_exceeded = False
            return True, None
        if msg_type in self.EXEMPT:
            return True, None
        now = self._clock()
        queue = self._queue
        while queue and queue[0][0] <= now:
            self._bytes -= queue.popleft()[1]
            self._count -= 1
        size = message.size if msg_type == "stream" else 0
        self._count += 1
        self._bytes += size
        queue.append((now + self.window, size))
        msg_rate = self._count / self.window
        data_rate = self._bytes / self.window
        warning = None
        if self.msg_rate > 0 and msg_rate > self.msg_rate:
            if not self.msgs_exceeded:
                self.msgs_exceeded = True
                warning = self._text("message", "iopub_msg_rate_limit", self.msg_rate, "msgs/sec")
        elif self.msgs_exceeded and msg_rate < 0.8 * self.msg_rate:
            self.msgs_exceeded = False
        if self.data_rate > 0 and data_rate > self.data_rate:
            if not self.data_exceeded:
                self.data_exceeded = True
                warning = self._text("data", "iopub_data_rate_limit", self.data_rate, "bytes/sec")
        elif self.data_exceeded and data_rate < 0.8 * self.data_rate:
            self.data_exceeded = False
        if self.msgs_exceeded or self.data_exceeded:
            self._count -= 1  # not sent: it does not count
            self._bytes -= size
            queue.pop()
            return False, warning
        return True, warning

    def _text(self, what: str, option: str, limit: float, unit: str) -> str:
        flag = "--" + option.replace("_", "-")
        return (f"IOPub {what} rate exceeded.\n"
                "The gateway will temporarily stop sending output\n"
                "to the client in order to avoid crashing it.\n"
                f"To change this limit, set {flag} (or {option.upper()} / KG_{option.upper()}).\n\n"
                "Current values:\n"
                f"{option}={limit} ({unit})\n"
                f"rate_limit_window={self.window} (secs)\n")


def _warning_message(text: str, parent, session: str) -> KernelMessage:
    """An iopub ``stream`` message on stderr answering ``parent`` (raw parent header bytes)."""
    header = make_header("stream", session)
    parts = [dumps(header), bytes(parent), b"{}", dumps({"name": "stderr", "text": text})]
    return KernelMessage("iopub", b"", parts, header["msg_id"], "stream", None)


_ENCODERS = {V1: _encode_v1, LEGACY: _encode_legacy}
_DECODERS = {
    (V1, True): wire.decode_client_v1,
    (LEGACY, False): wire.decode_client_legacy_text,
    (LEGACY, True): wire.decode_client_legacy_binary,
}


class ConnectionCounter:
    """Open WebSockets per tenant, so ``max_connections`` is checked before the upgrade.

    A place is reserved when the upgrade is accepted and released when that
    connection is lost, whatever happened in between, so the count cannot
    drift and concurrent upgrades cannot overshoot the limit.
    """

    def __init__(self):
        self.open: dict[str, int] = {}
        self.protocols: dict[str, set] = {}

    def reserve(self, tenant: str, limit: int | None):
        if limit is not None and self.open.get(tenant, 0) >= limit:
            raise ResourceLimit(f"tenant {tenant} reached its limit of {limit} connections")
        self.open[tenant] = self.open.get(tenant, 0) + 1
        released = []

        def release() -> None:
            if not released:
                released.append(True)
                self.open[tenant] -= 1
                if not self.open[tenant]:
                    del self.open[tenant]

        return release

    def close_tenant(self, tenant: str, reason: str) -> None:
        """Close every connection of a tenant (removed from the tenants file)."""
        for protocol in list(self.protocols.get(tenant, ())):
            protocol.disconnect(1000, reason)
            protocol.dropConnection(abort=False)


@implementer(IKernelClient)
class ChannelsProtocol(WebSocketServerProtocol):
    """One client's WebSocket to one kernel."""

    kernel_id = ""
    session_id = ""
    tenant = ""
    wire_format = LEGACY
    release = staticmethod(lambda: None)
    attached = False
    #: non-zero once disconnected for being too slow: the buffer limit it went over
    dropped_as_slow = 0
    _direct = None  # the TCP transport written to directly when its buffer is empty
    _buffer_limit = 0
    _holder = None  # what holds this connection's write buffer, for the limit
    _rate_limit: IOPubRateLimit | None = None

    def onConnect(self, request):  # noqa: N802 - autobahn API
        self.wire_format = V1 if wire.V1_PROTOCOL in request.protocols else LEGACY
        self._encode = _ENCODERS[self.wire_format]
        return wire.V1_PROTOCOL if self.wire_format == V1 else None

    def onOpen(self):  # noqa: N802 - autobahn API
        transport = self.transport
        self._holder = _buffer_holder(transport)
        if isinstance(transport, tcp.Connection) and not transport.TLS and hasattr(transport, "_tempDataLen"):
            self._direct = transport
        self._buffer_limit = self.factory.client_buffer_limit
        limits = self.factory.rate_limits
        if limits is not None:
            self._rate_limit = IOPubRateLimit(*limits)
        self.factory.connections.protocols.setdefault(self.tenant, set()).add(self)
        try:
            self.factory.registry.attach(self.kernel_id, self)
        except GatewayError as error:  # deleted between the route's lookup and now
            self.sendClose(1000, error.message[:120])
            return
        self.attached = True

    def onMessage(self, payload, isBinary):  # noqa: N802,N803 - autobahn API
        decode = _DECODERS.get((self.wire_format, isBinary))
        try:
            if decode is None:
                raise wire.WireError("text frames are not part of the v1 protocol")
            incoming = decode(payload)
            self.factory.registry.send(self.kernel_id, self, incoming)
        except wire.WireError as error:
            _log.info("closing {session}: malformed message: {error}", session=self.session_id, error=error)
            self.sendClose(CLOSE_BAD_MESSAGE, f"malformed message: {error}"[:120])
        except GatewayError as error:
            code = CLOSE_BAD_MESSAGE if isinstance(error, BadRequest) else 1000
            self.sendClose(code, error.message[:120])

    def onClose(self, wasClean, code, reason):  # noqa: N802,N803 - autobahn API
        if getattr(self, "attached", False):
            self.attached = False
            self.factory.registry.detach(self.kernel_id, self)

    def connectionLost(self, reason):  # noqa: N802 - Twisted API
        self.factory.connections.protocols.get(self.tenant, set()).discard(self)
        self.release()
        super().connectionLost(reason)

    # -- IKernelClient ---------------------------------------------------------
    def deliver(self, message) -> None:
        """Write the message's cached WebSocket frame for this client's format.

        The frame (header and payload) is built once per message and format
        and written as is: server frames are unmasked, so every client of a
        format gets the very same bytes.  ``--max-message-size`` limits what
        clients send, not what kernels produce.
        """
        if self.state != _OPEN:
            return
        if self._rate_limit is not None and message.channel == "iopub":
            send, warning = self._rate_limit.admit(message)
            if warning is not None:
                self._write(self._encode(_warning_message(warning, message.parts[1], self.session_id)))
            if not send:
                return
        frame = message.encoded.get(self.wire_format)
        if frame is None:
            frame = message.encoded[self.wire_format] = self._encode(message)
        self._write(frame)

    def _write(self, frame: Frame) -> None:
        direct = self._direct
        if direct is not None and not direct._tempDataLen and not direct.dataBuffer:
            # Nothing waiting: hand the frame to the socket now rather than on
            # the reactor's next turn (saves a wake-up and two epoll_ctl calls).
            pieces = frame.pieces
            try:
                sent = direct.socket.send(pieces[0]) if len(pieces) == 1 else direct.socket.sendmsg(pieces)
            except OSError:  # full (EAGAIN), or broken: Twisted's own write finds out
                sent = 0
            if sent < frame.size:
                direct.write(frame.rest(sent) if sent else frame.joined())
            return
        holder = self._holder
        limit = self._buffer_limit
        if limit and holder is not None and _waiting(holder) > limit:
            self._too_slow(limit)
            return
        self.transport.write(frame.joined())

    def _too_slow(self, limit: int) -> None:
        """Disconnect a client that has more than ``limit`` bytes waiting.

        The close frame queues behind what is waiting (a client that resumes
        reading gets the reason); autobahn drops the connection if the closing
        handshake does not finish within its timeout.  The kernel keeps this
        session's output from here on, for when it reconnects.
        """
        reason = f"client too slow: outgoing buffer over {limit} bytes"
        _log.warn("closing session {session} of kernel {kernel}: {reason}", session=self.session_id,
                  kernel=self.kernel_id, reason=reason)
        self.dropped_as_slow = limit
        if self.attached:
            self.attached = False
            self.factory.registry.detach(self.kernel_id, self)
        self.sendClose(CLOSE_TOO_SLOW, reason)

    def disconnect(self, code: int, reason: str) -> None:
        """Close with ``code`` when it is an application code (3000-4999), else 1000.

        @jupyterlab/services reconnects on any code but 1000: a kernel that is
        gone closes with 1000, a gateway restart with 4503 (come back).
        """
        if getattr(self, "attached", False):
            self.attached = False
            self.sendClose(code if 3000 <= code <= 4999 else 1000, reason[:120])


def make_channels_factory(registry, config) -> WebSocketServerFactory:
    """The one WebSocket factory of a gateway, with limits set in one place."""
    factory = WebSocketServerFactory()
    factory.protocol = ChannelsProtocol
    factory.registry = registry
    factory.connections = ConnectionCounter()
    factory.client_buffer_limit = config.client_buffer_limit
    if config.iopub_msg_rate_limit or config.iopub_data_rate_limit:
        factory.rate_limits = (config.iopub_msg_rate_limit, config.iopub_data_rate_limit, config.rate_limit_window)
    else:
        factory.rate_limits = None
    options = {
        "maxMessagePayloadSize": config.max_message_size,
        "maxFramePayloadSize": config.max_message_size,
        "openHandshakeTimeout": 30,
        "tcpNoDelay": True,
        # Legacy text frames are parsed as strict UTF-8 JSON by jkg.web.wire anyway.
        "utf8validateIncoming": False,
    }
    if config.ws_ping_interval:
        options["autoPingInterval"] = config.ws_ping_interval
        if config.ws_ping_timeout:
            options["autoPingTimeout"] = config.ws_ping_timeout
    factory.setProtocolOptions(**options)
    return factory


class _ContextFactory:
    """Builds the factory's protocol and attaches one request's context to it."""

    def __init__(self, factory, context: dict):
        self._factory = factory
        self._context = context

    def buildProtocol(self, addr):  # noqa: N802 - Twisted API
        protocol = self._factory.buildProtocol(addr)
        if protocol is None:
            self._context["release"]()
            return None
        for name, value in self._context.items():
            setattr(protocol, name, value)
        return protocol


class ChannelsUpgrade(WebSocketResource):
    """Upgrade this request to a channels WebSocket for one kernel, session and tenant.

    :param release: gives back the connection place reserved for the tenant;
        called when the connection is lost.
    """

    def __init__(self, factory, kernel_id: str, session_id: str, tenant: str = "", release=lambda: None):
        super().__init__(_ContextFactory(factory, {"kernel_id": kernel_id, "session_id": session_id,
                                                   "tenant": tenant, "release": release}))
