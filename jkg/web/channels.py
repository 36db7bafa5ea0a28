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
- Every client has a bounded backlog (:class:`Backlog`): one that stops
  reading is disconnected with code 4008 and the reason, and the kernel keeps
  its session's output for replay (see
  :meth:`jkg.kernels.kernel.ManagedKernel.detach`).  A client that stops
  reading thus never makes memory grow without bound nor slows anyone else.
- Optional iopub rate limits follow jupyter_server (:class:`IOPubRateLimit`).
"""
from __future__ import annotations

import time
from collections import deque

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.xormasker import create_xor_masker
from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
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
SLOW_CLOSE_TIMEOUT = 30  # seconds a client dropped as too slow has to read the close frame
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
        size = sum(map(len, payload_pieces))
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



def _rest(pieces, sent: int) -> bytes:
    """What follows the first ``sent`` bytes of ``pieces``, as one ``bytes``."""
    for index, piece in enumerate(pieces):
        if sent < len(piece):
            if index == len(pieces) - 1 and type(piece) is bytes:
                return piece[sent:]
            return b"".join([memoryview(piece)[sent:], *pieces[index + 1:]])
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


def _unmask(mask: bytes, data: bytes) -> bytes:
    """A client frame's payload, unmasked (RFC 6455 5.3)."""
    size = len(data)
    if size >= 4096:  # autobahn's vectorised masker
        return create_xor_masker(mask, size).process(data)
    key = int.from_bytes((mask * ((size >> 2) + 1))[:size], "little")
    return (int.from_bytes(data, "little") ^ key).to_bytes(size, "little")


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


class Backlog:
    """The bound on what waits to be sent to one client, with ``limit`` = ``--client-buffer-limit``.

    Up to ``limit`` bytes may wait.  Beyond that a client must keep reading: it
    is too slow when its backlog has grown by another ``limit`` without its
    socket taking a single byte (it stopped reading), and in any case once
    ``HARD_FACTOR * limit`` bytes wait.  So a client that stalls is dropped
    with about twice the limit waiting, while one that reads, only slower than
    a burst of output arrives, may fall further behind and catch up -- never
    without bound.  :meth:`check` is called only when something is already
    waiting, so clients that keep up pay nothing.
    """

    HARD_FACTOR = 8

    __slots__ = ("limit", "appended", "_mark_taken", "_mark_waiting")

    def __init__(self, limit: int):
        self.limit = limit
        self.appended = 0  # bytes handed to the transport's buffer so far
        self._mark_taken: int | None = None
        self._mark_waiting = 0

    def check(self, waiting: int) -> str | None:
        """``None`` if a client with ``waiting`` bytes waiting may be sent more, else why not."""
        limit = self.limit
        if not limit or waiting <= limit:
            self._mark_taken = None
            return None
        taken = self.appended - waiting  # bytes its socket has taken from the buffer
        if self._mark_taken is None or taken > self._mark_taken:
            self._mark_taken, self._mark_waiting = taken, waiting  # (still) making progress
        elif waiting >= self._mark_waiting + limit:
            return f"client too slow: outgoing buffer over {limit} bytes and not read"
        if waiting >= self.HARD_FACTOR * limit:
            return f"client too slow: outgoing buffer over {self.HARD_FACTOR * limit} bytes"
        return None


class _Outbox:
    """Writes one client's frames through its transport's own buffer (TLS and other transports)."""

    def __init__(self, transport, limit: int):
        self.transport = transport
        self.backlog = Backlog(limit)
        self._holder = _buffer_holder(transport)

    def waiting(self) -> int:
        return _waiting(self._holder) if self._holder is not None else 0

    def refuse(self) -> str | None:
        """Why no more may be written to this client (it is too slow), or ``None``."""
        return self.backlog.check(self.waiting()) if self._holder is not None else None

    def write(self, frames) -> None:
        if len(frames) == 1:
            self.backlog.appended += frames[0].size
            self.transport.write(frames[0].joined())
        else:
            self.backlog.appended += sum(frame.size for frame in frames)
            self.transport.writeSequence([frame.joined() for frame in frames])


@implementer(IPushProducer)
class _TCPOutbox(_Outbox):
    """Writes one client's frames straight to its TCP socket, without copying them.

    When nothing is waiting, frames go to the socket at once (``send`` or,
    for a frame in pieces, ``sendmsg``) instead of on the reactor's next turn
    through Twisted's buffer: no wake-up, no ``epoll_ctl``, no copy.  What the
    socket does not take waits here as views of the shared frames; only a
    slice of it (a little over the transport's ``bufferSize``) is copied into
    Twisted's buffer at a time, so that the transport -- with this object as
    its streaming producer -- calls :meth:`resumeProducing` once that slice is
    sent, and the rest goes out the same way.  Whatever else is written to the
    connection meanwhile (autobahn's pings and close frames) queues here too,
    so the stream stays in order.
    """

    def __init__(self, transport, limit: int):
        super().__init__(transport, limit)
        self._socket = transport.socket
        self.queue: deque = deque()  # bytes-likes not yet handed to the socket or transport
        self.queued = 0
        # (start, end) of each frame that was queued, as offsets in the stream (``backlog.appended``)
        self._spans: deque = deque()
        self.lose_when_empty = False
        # twisted.web's HTTPChannel stays registered as the producer after the
        # upgrade (it would stop reading the client while its output backs up).
        if transport.producer is not None:
            transport.unregisterProducer()
        transport.registerProducer(self, True)

    def waiting(self) -> int:
        t = self.transport
        return len(t.dataBuffer) - t.offset + t._tempDataLen + self.queued

    def refuse(self) -> str | None:
        t = self.transport
        if not self.queued and not t._tempDataLen and not t.dataBuffer:
            return None
        return self.backlog.check(self.waiting())

    def write(self, frames) -> None:
        if len(frames) == 1:
            pieces, size = frames[0].pieces, frames[0].size
        else:
            pieces = [piece for frame in frames for piece in frame.pieces]
            size = sum(frame.size for frame in frames)
        start = self.backlog.appended
        self.backlog.appended += size
        if self._write(pieces, size) and len(frames) > 1:
            spans = self._spans
            spans.pop()
            for frame in frames:
                spans.append((start, start + frame.size))
                start += frame.size

    def write_data(self, data: bytes) -> None:
        """Bytes from autobahn (control frames), in order with the frames."""
        self.backlog.appended += len(data)
        self._write((data,), len(data))

    def _write(self, pieces, size: int) -> bool:
        """Send or queue; whether anything was queued."""
        t = self.transport
        queue = self.queue
        if queue or t._tempDataLen or t.dataBuffer:
            was_empty = not queue
            queue.extend(pieces)
            self.queued += size
            self._spans.append((self.backlog.appended - size, self.backlog.appended))
            if was_empty:  # make sure the transport will call back
                self._prime()
            return True
        sent = self._send(pieces)
        if sent < size:
            self._keep(pieces, sent)
            self._spans.append((self.backlog.appended - size, self.backlog.appended))
            self._prime()
            return True
        return False

    def trim(self) -> None:
        """Drop every queued frame not yet started, keeping the one under way (the stream stays valid)."""
        handed = self.backlog.appended - self.queued  # stream offset up to which bytes left the queue
        spans = self._spans
        while spans and spans[0][1] <= handed:
            spans.popleft()
        keep = spans[0][1] - handed if spans and spans[0][0] < handed else 0
        queue, kept = self.queue, deque()
        while queue and keep > 0:
            piece = queue.popleft()
            if len(piece) > keep:
                piece = memoryview(piece)[:keep]
            kept.append(piece)
            keep -= len(piece)
        dropped = self.queued - sum(map(len, kept))
        self.queue, self.queued = kept, self.queued - dropped
        self.backlog.appended -= dropped
        spans.clear()

    def _send(self, pieces) -> int:
        """Hand ``pieces`` to the socket; the number of bytes it took."""
        if len(pieces) > _MAX_PIECES:
            pieces = pieces[:_MAX_PIECES]
        try:
            if len(pieces) == 1:
                return self._socket.send(pieces[0])
            return self._socket.sendmsg(pieces)
        except OSError:  # full (EAGAIN), or broken: the transport's own write finds out
            return 0

    def _keep(self, pieces, sent: int) -> None:
        """Queue what follows the first ``sent`` bytes of ``pieces``."""
        queue = self.queue
        for piece in pieces:
            size = len(piece)
            if sent >= size:
                sent -= size
                continue
            queue.append(memoryview(piece)[sent:] if sent else piece)
            self.queued += size - sent
            sent = 0

    def _prime(self) -> None:
        """Move queued bytes into the transport until it holds more than its ``bufferSize``.

        The transport then pauses this producer and resumes it once all of
        that is sent; with less, it would not call back and the queue would
        stall.  (When the queue runs out first, nothing more is needed.)
        """
        t = self.transport
        queue = self.queue
        need = t.bufferSize + 1 - (len(t.dataBuffer) - t.offset + t._tempDataLen)
        chunk = []
        while queue and need > 0:
            piece = queue[0]
            size = len(piece)
            if size <= need:
                queue.popleft()
                chunk.append(piece)
                need -= size
                self.queued -= size
            else:
                chunk.append(memoryview(piece)[:need])
                queue[0] = memoryview(piece)[need:]
                self.queued -= need
                need = 0
        if chunk:
            t.write(b"".join(chunk))
        spans = self._spans
        if not queue:
            spans.clear()
            if self.lose_when_empty:
                t.loseConnection()
        else:
            handed = self.backlog.appended - self.queued
            while spans and spans[0][1] <= handed:
                spans.popleft()

    # -- IPushProducer: the transport's buffer went over bufferSize / was all sent
    def pauseProducing(self) -> None:  # noqa: N802 - Twisted API
        pass

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted API
        queue = self.queue
        if not queue:
            return
        pieces = list(queue) if len(queue) <= _MAX_PIECES else [queue[i] for i in range(_MAX_PIECES)]
        sent = self._send(pieces)
        while sent:
            first = queue[0]
            size = len(first)
            if sent >= size:
                queue.popleft()
                self.queued -= size
                sent -= size
            else:
                queue[0] = memoryview(first)[sent:]
                self.queued -= sent
                sent = 0
        self._prime()

    def stopProducing(self) -> None:  # noqa: N802 - Twisted API
        self.queue.clear()
        self._spans.clear()
        self.queued = 0


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
    _outbox: _Outbox | None = None  # set when the WebSocket opens
    _corked: list | None = None  # frames held back until the read batch ends
    _rate_limit: IOPubRateLimit | None = None

    def onConnect(self, request):  # noqa: N802 - autobahn API
        self.wire_format = V1 if wire.V1_PROTOCOL in request.protocols else LEGACY
        self._encode = _ENCODERS[self.wire_format]
        return wire.V1_PROTOCOL if self.wire_format == V1 else None

    def onOpen(self):  # noqa: N802 - autobahn API
        transport = self.transport
        limit = self.factory.client_buffer_limit
        if (isinstance(transport, tcp.Connection) and not transport.TLS
                and hasattr(transport, "_tempDataLen") and hasattr(transport, "socket")):
            self._outbox = _TCPOutbox(transport, limit)
        else:
            self._outbox = _Outbox(transport, limit)
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

    def dataReceived(self, data):  # noqa: N802 - Twisted API
        """Whole, unfragmented data frames go straight to :meth:`onMessage`; the rest to autobahn.

        autobahn's general frame machine costs about 13 us per message (and its
        own ``dataReceived`` formats a debug line with click colours on every
        read, whether or not debug logging is on).  A client message is almost
        always one masked, final text or binary frame that arrived whole; such
        frames -- checked as strictly as autobahn checks them -- are unmasked
        and handed on here.  Anything else (control frames, fragments, partial
        frames, sizes over the limits, protocol errors) goes to autobahn, which
        also keeps handling the connection's life (pings, closing handshake).
        """
        if self.state != _OPEN or self.data or self.current_frame is not None or self.inside_message:
            self._dataReceived(data)
            return
        size = len(data)
        pos = 0
        while pos < size and self.state == _OPEN:
            if size - pos < 6:
                break
            first, second = data[pos], data[pos + 1]
            opcode = first & 0x0F
            if first & 0xF0 != 0x80 or opcode not in (1, 2) or not second & 0x80:
                break  # not final, reserved bits, control or continuation frame, or unmasked
            length = second & 0x7F
            start = pos + 6
            if length == 126:
                start += 2
                if size < start:
                    break
                length = int.from_bytes(data[pos + 2:pos + 4], "big")
                if length < 126:
                    break
            elif length == 127:
                start += 8
                if size < start:
                    break
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
                if length < 65536:
                    break
            end = start + length
            if end > size or 0 < self.maxFramePayloadSize < length or 0 < self.maxMessagePayloadSize < length:
                break
            payload = _unmask(data[start - 4:start], data[start:end])
            pos = end
            if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
                self._cancelAutoPingTimeoutCall()
            self.onMessage(payload, opcode == 2)
        if pos < size and self.state in (_OPEN, WebSocketServerProtocol.STATE_CLOSING):
            self._dataReceived(data[pos:] if pos else data)

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
        call = getattr(self, "_abort_call", None)
        if call is not None and call.active():
            call.cancel()
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
                self._write(self._encode(_warning_message(warning, message.parts[1], self.session_id)),
                            message.batch)
            if not send:
                return
        frame = message.encoded.get(self.wire_format)
        if frame is None:
            frame = message.encoded[self.wire_format] = self._encode(message)
        self._write(frame, message.batch)

    def _write(self, frame: Frame, batch=None) -> None:
        """Send ``frame`` now, or at the end of the read ``batch`` it came in with."""
        if batch is not None and batch.open:
            corked = self._corked
            if corked is not None:
                corked.append(frame)
            elif self._has_room():
                self._corked = [frame]
                batch.defer(self._flush)
        elif self._has_room():
            self._send((frame,))

    def _flush(self) -> None:
        frames, self._corked = self._corked, None
        if frames and self.state == _OPEN:
            self._outbox.write(frames)

    def _has_room(self) -> bool:
        """Whether more may be written; if not, the client is disconnected as too slow."""
        outbox = self._outbox
        refused = outbox.refuse()
        if refused is None:
            return True
        self._too_slow(outbox.backlog.limit, refused)
        return False

    def _send(self, frames) -> None:
        self._outbox.write(frames)

    def outgoing(self) -> tuple[int, int]:
        """``(bytes waiting to be sent, bytes the socket has taken so far)``, for flow control."""
        outbox = self._outbox
        if outbox is None:
            return 0, 0
        waiting = outbox.waiting()
        return waiting, outbox.backlog.appended - waiting

    def sendData(self, data, sync=False, chopsize=None):  # noqa: N802 - autobahn API
        """autobahn's own writes (handshake, pings, close): behind any frames still queued."""
        outbox = self._outbox
        if isinstance(outbox, _TCPOutbox) and outbox.queue:
            outbox.write_data(data)
        else:
            super().sendData(data, sync, chopsize)

    def _closeConnection(self, abort=False):  # noqa: N802 - autobahn API
        outbox = self._outbox
        if not abort and isinstance(outbox, _TCPOutbox) and outbox.queue:
            outbox.lose_when_empty = True  # after the close frame, still queued
            # ... unless the peer stops reading now
            self._abort_call = self.factory.reactor.callLater(SLOW_CLOSE_TIMEOUT, self._abort)
        else:
            super()._closeConnection(abort)

    def _abort(self) -> None:
        self._abort_call = None
        if self.transport is not None:
            self.transport.abortConnection()

    def unregisterProducer(self):  # noqa: N802 - autobahn calls it when it drops the connection
        """Leave the outbox registered: it must still flush the close frame (and it is
        told when the connection is gone); a producer someone else registered goes."""
        transport = self.transport
        producer = getattr(transport, "producer", None)
        if producer is not None and producer is not self._outbox:
            transport.unregisterProducer()

    def _too_slow(self, limit: int, reason: str) -> None:
        """Disconnect a client whose backlog went over its bounds (see :class:`Backlog`).

        What is waiting for it is dropped (but for the rest of the frame under
        way), and the close frame follows: a client that resumes reading within
        :data:`SLOW_CLOSE_TIMEOUT` seconds gets the reason, then the connection
        is dropped.  The kernel keeps this session's output from here on, for
        when it reconnects.
        """
        _log.warn("closing session {session} of kernel {kernel}: {reason}", session=self.session_id,
                  kernel=self.kernel_id, reason=reason)
        self.dropped_as_slow = limit
        if self.attached:
            self.attached = False
            self.factory.registry.detach(self.kernel_id, self)
        outbox = self._outbox
        if isinstance(outbox, _TCPOutbox):
            outbox.trim()  # free the backlog now; the close frame follows the frame under way
            # little is left waiting: give the client time to read the reason before the drop
            self.closeHandshakeTimeout = SLOW_CLOSE_TIMEOUT
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
