"""ZeroMQ connections to one kernel: the only module that speaks ZeroMQ.

One SUB connection receives the kernel's iopub stream (fanned out by the
kernel object to every client), and one DEALER connection per request
channel (shell, control, stdin) carries every client's requests.  The DEALERs
share one identity so that the kernel's stdin ``input_request`` -- addressed
to whoever sent the shell request -- arrives on our stdin connection.  Replies
are routed to clients by the parent ``msg_id``, which is why one set of
connections serves all clients.

The connections speak ZMTP 3.0 (https://rfc.zeromq.org/spec/23/, the wire
protocol of libzmq >= 4 and every Jupyter kernel) with the NULL mechanism
directly on non-blocking sockets read and written by the reactor
(:class:`ZmtpConnection`).  A gateway only ever connects to a kernel's bound
ports, with no encryption (CurveZMQ is not supported, as before), so this is
a small client: greeting, ``READY``, then frames.  Compared with libzmq
behind pyzmq (or txzmq) this saves, per message, a hop through ZeroMQ's I/O
thread and its wake-up of the reactor thread, a system call and a Python call
per frame, and any copy of large parts: they are received straight into their
own buffer and passed on as views.  Like libzmq, a connection reconnects by
itself (10 ms, backing off to 1 s) and queues what is sent before the kernel
is reachable.

Messages are checked and signed here with the kernel's key (HMAC over the
four JSON parts, as bytes: nothing is decoded or re-encoded); the key never
leaves this module and the launcher.  Nothing here imports the global
reactor: it comes from :func:`make_factory`.
"""
from __future__ import annotations

import errno
import hmac
import ipaddress
import socket
import sys
import uuid
from collections import deque
from typing import Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from .messages import DELIMITER, KernelMessage, MalformedMessage, ReadBatch, parse_kernel_frames

log = Logger()

REQUEST_CHANNELS = ("shell", "control", "stdin")

#: Frames at least this large are received into a buffer of their own and passed
#: on as a view (never copied); smaller ones are copied out of the read buffer.
LARGE_FRAME = 64 * 1024
#: The read buffer; one ``recv_into`` fills at most this much.
READ_BUFFER = 256 * 1024
#: Bytes read from one connection before other connections get a turn.
READ_BUDGET = 4 * 1024 * 1024
#: Largest frame accepted from a kernel (a corrupt length must not allocate terabytes).
MAX_FRAME = 1 << 34
#: Messages kept for a kernel that is not reachable (yet); older ones are dropped beyond this.
MAX_QUEUED = 10_000
RECONNECT_FIRST = 0.01
RECONNECT_MAX = 1.0
_IOV_MAX = 512

_GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
_MORE, _LONG, _COMMAND = 1, 2, 4


class ProtocolError(Exception):
    """The peer does not speak ZMTP 3 with the NULL mechanism as expected."""


def _frame_header(size: int, flags: int) -> bytes:
    if size < 256:
        return bytes((flags, size))
    return bytes((flags | _LONG,)) + size.to_bytes(8, "big")


def _command(name: bytes, body: bytes) -> bytes:
    data = bytes((len(name),)) + name + body
    return _frame_header(len(data), _COMMAND) + data


def _ready(socket_type: bytes, identity: bytes | None) -> bytes:
    props = [(b"Socket-Type", socket_type)]
    if identity is not None:
        props.append((b"Identity", identity))
    body = b"".join(bytes((len(name),)) + name + len(value).to_bytes(4, "big") + value for name, value in props)
    return _command(b"READY", body)


def _parse_properties(data: bytes) -> dict:
    props, pos = {}, 0
    while pos < len(data):
        size = data[pos]
        name = data[pos + 1:pos + 1 + size]
        pos += 1 + size
        length = int.from_bytes(data[pos:pos + 4], "big")
        props[name.decode("ascii", "replace").lower()] = data[pos + 4:pos + 4 + length]
        pos += 4 + length
        if pos > len(data):
            raise ProtocolError("truncated READY properties")
    return props


class BufferPool:
    """Buffers for large frames, reused once nothing refers to them any more.

    A large frame is received into a buffer of its own and handed on as a
    view; a fresh buffer for each would cost page faults and zero-filling on
    every large message.  A pooled buffer is taken again only when its
    reference count shows that no view of it is alive (the message and every
    frame made of it are gone).  At most ``keep`` buffers and ``max_bytes``
    are kept.
    """

    GRAIN = 64 * 1024

    def __init__(self, keep: int = 4, max_bytes: int = 16 * 1024 * 1024):
        self.keep = keep
        self.max_bytes = max_bytes
        self._buffers: list[bytearray] = []

    def get(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes that nobody else uses."""
        buffers = self._buffers
        for index in range(len(buffers)):
            # referenced by the list, the call's argument and nothing else: free
            if size <= len(buffers[index]) <= 2 * size and sys.getrefcount(buffers[index]) == 2:
                return buffers[index]
        buffer = bytearray(-(-size // self.GRAIN) * self.GRAIN)
        if len(buffers) < self.keep and sum(map(len, buffers)) + len(buffer) <= self.max_bytes:
            buffers.append(buffer)
        return buffer


class ZmqContext:
    """The gateway's ZeroMQ side: the reactor that drives every connection, and them.

    (The name and ``context``/``shutdown`` are kept from the txzmq days, for
    the service that closes it last.)
    """

    def __init__(self, reactor):
        self.reactor = reactor
        self.connections: set[ZmtpConnection] = set()
        self.batch = ReadBatch()
        self.buffers = BufferPool()
        self.context: ZmqContext | None = self

    def shutdown(self) -> None:
        """Close every connection still open."""
        for connection in list(self.connections):
            connection.close()
        self.context = None


def make_factory(reactor) -> ZmqContext:
    """The ZeroMQ side of one gateway, driven by ``reactor``."""
    return ZmqContext(reactor)


_CONNECTING, _GREETING_WAIT, _HANDSHAKE, _READY, _WAITING, _CLOSED = range(6)


@implementer(IReadWriteDescriptor)
class ZmtpConnection:
    """A ZMTP 3.0 client connection (DEALER or SUB) to one of a kernel's ports.

    Complete messages (lists of frames) go to ``on_message(frames)``; frames
    are ``bytes``, or for large ones read-only ``memoryview``\\ s of a buffer
    of their own.  When one read brings several messages, the gateway's
    :class:`~jkg.kernels.messages.ReadBatch` is open while they are handled,
    so that clients can coalesce their writes.  ``on_ready()`` is called each
    time the handshake with the kernel completes.

    :param address: ``tcp://host:port`` or ``ipc://path``.
    """

    def __init__(self, zmq_context: ZmqContext, socket_type: bytes, address: str,
                 on_message: Callable[[list], None], identity: bytes | None = None,
                 subscribe: bool = False, on_ready: Callable[[], None] | None = None):
        self._owner = zmq_context
        self._reactor = zmq_context.reactor
        self._socket_type = socket_type
        self._address = address
        self._hello = _GREETING + _ready(socket_type, identity)
        self._subscribe = subscribe
        self.on_message = on_message
        self.on_ready = on_ready
        self._sock: socket.socket | None = None
        self._fd = -1
        self._state = _WAITING
        self._delay = RECONNECT_FIRST
        self._retry = None
        self._queued: deque = deque()  # messages sent before the handshake completed
        self._out: deque = deque()  # bytes-likes not yet taken by the socket
        self._writing = False
        self._reading = False
        self._paused = False  # reading suspended (flow control)
        self._buf = bytearray(READ_BUFFER)
        self._view = memoryview(self._buf)
        self._start = self._end = 0
        self._big: memoryview | None = None  # a large frame being received into its own buffer
        self._big_filled = 0
        self._big_flags = 0
        self._frames: list = []
        zmq_context.connections.add(self)
        self._connect()

    # -- connecting ----------------------------------------------------------------
    def _connect(self) -> None:
        self._retry = None
        if self._state == _CLOSED:
            return
        kind, _, rest = self._address.partition("://")
        try:
            if kind == "ipc":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                target = rest
            elif kind == "tcp":
                host, _, port = rest.rpartition(":")
                host = host.strip("[]")
                try:
                    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
                    target = (host, int(port))
                except ValueError:  # a host name (connection files normally hold addresses)
                    family, _, _, _, target = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0]
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            else:
                raise ProtocolError(f"unsupported transport {kind!r}")
        except (OSError, ValueError) as error:
            log.warn("cannot connect to {address}: {error}", address=self._address, error=error)
            self._schedule_retry()
            return
        sock.setblocking(False)
        code = sock.connect_ex(target)
        if code not in (0, errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
            sock.close()
            self._schedule_retry()
            return
        self._sock = sock
        self._fd = sock.fileno()
        self._state = _CONNECTING
        self._start = self._end = 0
        self._big = None
        self._frames = []
        self._out.clear()
        self._out.append(self._hello)
        self._start_writing()

    def _schedule_retry(self) -> None:
        if self._state == _CLOSED or self._retry is not None:
            return
        self._state = _WAITING
        self._retry = self._reactor.callLater(self._delay, self._connect)
        self._delay = min(self._delay * 2, RECONNECT_MAX)

    def _lost(self, why) -> None:
        """The connection failed or closed: drop it and try again later."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self._stop_reading()
        self._stop_writing()
        self._fd = -1
        sock.close()
        if self._state == _READY:
            log.debug("connection to {address} lost: {why}", address=self._address, why=why)
        self._state = _WAITING
        self._schedule_retry()

    def close(self) -> None:
        """Close for good; later sends are ignored."""
        if self._state == _CLOSED:
            return
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        sock, self._sock = self._sock, None
        if sock is not None:
            self._stop_reading()
            self._stop_writing()
            sock.close()
        self._fd = -1
        self._state = _CLOSED
        self._queued.clear()
        self._out.clear()
        self._owner.connections.discard(self)

    @property
    def ready(self) -> bool:
        return self._state == _READY

    # -- the reactor's side ----------------------------------------------------------
    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:  # noqa: N802 - Twisted API
        return "zmtp"

    def connectionLost(self, reason) -> None:  # noqa: N802 - Twisted API (the reactor gave up on us)
        self._writing = self._reading = False
        self._lost(reason)

    def pause_reading(self) -> None:
        """Leave what the kernel sends in the sockets until :meth:`resume_reading`."""
        self._paused = True
        self._stop_reading()

    def resume_reading(self) -> None:
        self._paused = False
        if self._sock is not None and self._state != _CONNECTING:
            self._start_reading()

    def _start_reading(self) -> None:
        if not self._reading and not self._paused:
            self._reading = True
            self._reactor.addReader(self)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._reactor.removeReader(self)

    def _start_writing(self) -> None:
        if not self._writing:
            self._writing = True
            self._reactor.addWriter(self)

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            self._reactor.removeWriter(self)

    def doWrite(self) -> None:  # noqa: N802 - Twisted API
        sock = self._sock
        if sock is None:
            return
        if self._state == _CONNECTING:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._lost(OSError(code, errno.errorcode.get(code, "connect failed")))
                return
            self._state = _GREETING_WAIT
            self._start_reading()
        out = self._out
        while out:
            pieces = list(out) if len(out) <= _IOV_MAX else [out[i] for i in range(_IOV_MAX)]
            try:
                sent = sock.sendmsg(pieces)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self._lost(error)
                return
            while sent:
                first = out[0]
                if sent >= len(first):
                    sent -= len(first)
                    out.popleft()
                else:
                    out[0] = memoryview(first)[sent:]
                    sent = 0
            if len(pieces) < _IOV_MAX and out:
                return  # the socket is full: wait for the next writable event
        self._stop_writing()

    def doRead(self) -> None:  # noqa: N802 - Twisted API
        budget = READ_BUDGET
        while budget > 0:
            sock = self._sock
            if sock is None:
                return
            big = self._big
            try:
                if big is not None:
                    wanted = len(big) - self._big_filled
                    count = sock.recv_into(big[self._big_filled:])
                else:
                    if self._end == len(self._buf):
                        self._compact()
                    wanted = len(self._buf) - self._end
                    count = sock.recv_into(self._view[self._end:])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self._lost(error)
                return
            if not count:
                self._lost("closed by the kernel")
                return
            budget -= count
            full = count == wanted
            if big is not None:
                self._big_filled += count
                if not full:
                    return  # drained for now (epoll is level-triggered: more data wakes us again)
                self._big = None
                self._frame(self._big_flags, big.toreadonly())
                if self._sock is None:
                    return
            else:
                self._end += count
            try:
                self._parse()
            except ProtocolError as error:
                log.warn("closing connection to {address}: {error}", address=self._address, error=error)
                self._lost(error)
                return
            if not full:
                return  # the socket is drained (epoll is level-triggered: more data wakes us again)

    def _compact(self) -> None:
        start, end = self._start, self._end
        if start:
            self._buf[:end - start] = self._view[start:end]
            self._start, self._end = 0, end - start

    # -- frames ------------------------------------------------------------------------
    def _parse(self) -> None:
        """Handle every complete frame in the read buffer; dispatch complete messages."""
        buf, view = self._buf, self._view
        pos, end = self._start, self._end
        state = self._state
        if state == _GREETING_WAIT:
            if end - pos < 64:
                return
            greeting = bytes(view[pos:pos + 64])
            if greeting[0] != 0xFF or greeting[9] != 0x7F:
                raise ProtocolError("not a ZMTP peer")
            if greeting[10] < 3:
                raise ProtocolError(f"ZMTP {greeting[10]}.x peer; ZMTP 3 is needed")
            if greeting[12:32].rstrip(b"\x00") != b"NULL":
                raise ProtocolError(f"security mechanism {greeting[12:32].rstrip(bytes(1))!r}; NULL is needed")
            pos += 64
            self._state = state = _HANDSHAKE
        messages = []
        frames = self._frames
        while True:
            avail = end - pos
            if avail < 2:
                break
            flags = buf[pos]
            if flags & _LONG:
                if avail < 9:
                    break
                size = int.from_bytes(view[pos + 1:pos + 9], "big")
                start = pos + 9
            else:
                size = buf[pos + 1]
                start = pos + 2
            stop = start + size
            if stop > end:
                if flags & _COMMAND and size > 0xFFFF:
                    raise ProtocolError(f"command of {size} bytes")
                if size >= LARGE_FRAME and not flags & _COMMAND:
                    if size > MAX_FRAME:
                        raise ProtocolError(f"frame of {size} bytes")
                    big = memoryview(self._owner.buffers.get(size))[:size]
                    big[:end - start] = view[start:end]
                    self._big, self._big_filled, self._big_flags = big, end - start, flags
                    pos = end
                break
            if flags & _COMMAND:
                pos = stop
                self._command(bytes(view[start:stop]))
                state = self._state
                continue
            if state != _READY:
                raise ProtocolError("message before the handshake")
            frames.append(bytes(view[start:stop]) if size < LARGE_FRAME else memoryview(bytes(view[start:stop])))
            pos = stop
            if not flags & _MORE:
                messages.append(frames)
                frames = []
        self._frames = frames
        if pos == end:
            pos = end = 0
        self._start, self._end = pos, end
        if messages:
            self._dispatch(messages)

    def _frame(self, flags: int, body) -> None:
        """A large frame received into its own buffer."""
        self._frames.append(body)
        if not flags & _MORE:
            messages, self._frames = [self._frames], []
            self._dispatch(messages)

    def _dispatch(self, messages: list) -> None:
        on_message = self.on_message
        if len(messages) == 1:
            try:
                on_message(messages[0])
            except Exception:  # noqa: BLE001 - one bad message must not stop the connection
                log.failure("handling a message from a kernel")
            return
        batch = self._owner.batch
        opened = not batch.open
        batch.open = True
        try:
            for frames in messages:
                if self._state == _CLOSED:
                    break
                try:
                    on_message(frames)
                except Exception:  # noqa: BLE001
                    log.failure("handling a message from a kernel")
        finally:
            if opened:
                for flush in batch.close():
                    try:
                        flush()
                    except Exception:  # noqa: BLE001
                        log.failure("writing to clients")

    def _command(self, data: bytes) -> None:
        if not data:
            raise ProtocolError("empty command")
        name = data[1:1 + data[0]]
        body = data[1 + data[0]:]
        if name == b"READY":
            if self._state != _HANDSHAKE:
                raise ProtocolError("READY after the handshake")
            props = _parse_properties(body)
            peer = props.get("socket-type", b"")
            expected = {b"DEALER": (b"ROUTER", b"DEALER", b"REP"),
                        b"SUB": (b"PUB", b"XPUB")}.get(self._socket_type, ())
            if peer not in expected:
                raise ProtocolError(f"a {peer.decode('ascii', 'replace')} socket cannot talk to a "
                                    f"{self._socket_type.decode()} socket")
            self._state = _READY
            self._delay = RECONNECT_FIRST
            if self._subscribe:
                # A one-byte message subscribes to everything (ZMTP 3.0).  It may only
                # follow the kernel's READY: before that, libzmq would take it for a
                # malformed handshake command and drop the connection.
                self._write([b"\x00\x01\x01"])
            self._flush_queued()
            if self.on_ready is not None:
                self.on_ready()
        elif name == b"ERROR":
            raise ProtocolError(f"kernel refused the connection: {body[1:1 + body[:1][0]] if body else b''!r}")
        elif name == b"PING":  # ZMTP 3.1 heartbeat: answer with its context
            self._write([_command(b"PONG", body[2:])])
        # PONG and anything else: nothing to do

    # -- sending -------------------------------------------------------------------------
    def send(self, frames: Sequence) -> None:
        """Send a multipart message (bytes-likes); queued until the kernel is reachable."""
        state = self._state
        if state == _CLOSED:
            return
        if state != _READY:
            if len(self._queued) >= MAX_QUEUED:
                self._queued.popleft()
                log.warn("kernel at {address} unreachable: dropped the oldest queued message",
                         address=self._address)
            self._queued.append(list(frames))
            return
        self._write(self._encode(frames))

    @staticmethod
    def _encode(frames: Sequence) -> list:
        pieces = []
        last = len(frames) - 1
        for index, frame in enumerate(frames):
            pieces.append(_frame_header(len(frame), _MORE if index < last else 0))
            pieces.append(frame)
        return pieces

    def _flush_queued(self) -> None:
        queued, self._queued = self._queued, deque()
        pieces = []
        for frames in queued:
            pieces.extend(self._encode(frames))
        if pieces:
            self._write(pieces)

    def _write(self, pieces: list) -> None:
        sock = self._sock
        if sock is None:
            return
        out = self._out
        if not out and len(pieces) <= _IOV_MAX:
            try:
                sent = sock.sendmsg(pieces)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                self._lost(error)
                return
            for piece in pieces:
                size = len(piece)
                if sent >= size:
                    sent -= size
                    continue
                out.append(memoryview(piece)[sent:] if sent else piece)
                sent = 0
        else:
            out.extend(pieces)
        if out:
            self._start_writing()


def _address(info: dict, channel: str) -> str:
    port = info[f"{channel}_port"]
    if info.get("transport", "tcp") == "ipc":
        return f"ipc://{info['ip']}-{port}"
    ip = info["ip"]
    return f"tcp://[{ip}]:{port}" if ":" in ip else f"tcp://{ip}:{port}"


class Signer:
    """HMAC of a message's four JSON parts with the kernel's key (Jupyter's signature).

    :param scheme: ``hmac-<hash>``, as in the connection file.
    """

    def __init__(self, key: bytes, scheme: str = "hmac-sha256"):
        kind, _, digest = scheme.partition("-")
        if kind != "hmac" or not digest:
            raise ValueError(f"unsupported signature scheme {scheme!r}")
        # A digest *name* selects OpenSSL's HMAC, much faster than the pure-Python one;
        # its C object (``_hmac``) spares a Python call per part.
        auth = hmac.new(key, digestmod=digest) if key else None
        self._auth = getattr(auth, "_hmac", None) or auth

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

    def verify(self, parts: Sequence, signature) -> bool:
        return hmac.compare_digest(self.sign(parts), signature)


class KernelChannels:
    """The gateway's connections to one kernel, with message signing and checking.

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
        self._info = connection_info
        self.on_connected: Callable[[], None] | None = None
        self.closed = False
        self._hb: ZmtpConnection | None = None  # opened by the first ping
        self._pings: dict[bytes, tuple[Deferred, object]] = {}
        self._waiting = {"iopub", *REQUEST_CHANNELS}  # handshakes not yet completed
        self._sockets: dict[str, ZmtpConnection] = {}
        self._sockets["iopub"] = ZmtpConnection(
            zmq_context, b"SUB", _address(connection_info, "iopub"),
            lambda frames: self._frames_received("iopub", frames), subscribe=True,
            on_ready=lambda: self._connected("iopub"))
        for channel in REQUEST_CHANNELS:
            self._sockets[channel] = ZmtpConnection(
                zmq_context, b"DEALER", _address(connection_info, channel),
                lambda frames, channel=channel: self._frames_received(channel, frames),
                identity=self.identity, on_ready=lambda channel=channel: self._connected(channel))

    @property
    def all_connected(self) -> bool:
        """Whether every connection has completed its handshake with the kernel.

        A kernel's stdin ROUTER drops an ``input_request`` addressed to a
        peer whose handshake is not done yet, so a kernel is not ready for
        clients until all four are connected, not just shell.
        """
        return not self._waiting

    def _connected(self, channel: str) -> None:
        if channel not in self._waiting:
            return
        self._waiting.discard(channel)
        if not self._waiting and self.on_connected is not None:
            self.on_connected()

    def sign(self, parts: Sequence) -> bytes:
        return self._signer.sign(parts)

    def ping(self, timeout: float) -> Deferred:
        """Ping the kernel's heartbeat channel; fire ``True`` on the echo, ``False`` after ``timeout``.

        The heartbeat is an echo (a ROUTER device in ipykernel, a REP socket in
        others): ``[b"", token]`` -- a REQ-style envelope both understand --
        comes back as it went.  The connection is opened by the first ping and
        kept; pings to an unreachable kernel wait (bounded) until it answers.
        """
        answered: Deferred = Deferred()
        if self.closed or "hb_port" not in self._info:
            answered.callback(False)
            return answered
        if self._hb is None:
            self._hb = ZmtpConnection(self._zmq, b"DEALER", _address(self._info, "hb"), self._echo)
        token = b"jkg-ping-" + uuid.uuid4().hex.encode("ascii")

        def expire() -> None:
            if self._pings.pop(token, None) is not None:
                answered.callback(False)

        self._pings[token] = (answered, self._zmq.reactor.callLater(timeout, expire))
        self._hb.send([b"", token])
        return answered

    def _echo(self, frames: list) -> None:
        pending = self._pings.pop(bytes(frames[-1]), None) if frames else None
        if pending is not None:
            answered, timer = pending
            if timer.active():
                timer.cancel()
            answered.callback(True)

    def pause_iopub(self) -> None:
        """Stop reading iopub (flow control: the clients are behind); it waits in the sockets."""
        socket = self._sockets.get("iopub")
        if socket is not None:
            socket.pause_reading()

    def resume_iopub(self) -> None:
        socket = self._sockets.get("iopub")
        if socket is not None:
            socket.resume_reading()

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
        batch = self._zmq.batch
        if batch.open:
            message.batch = batch
        self._on_message(message)

    def close(self) -> None:
        """Close every connection; late sends become no-ops."""
        if self.closed:
            return
        self.closed = True
        for connection in [*self._sockets.values(), *([self._hb] if self._hb is not None else [])]:
            try:
                connection.close()
            except Exception:  # noqa: BLE001 - closing must not fail the caller
                log.failure("closing a kernel connection")
        self._sockets.clear()
        self._hb = None
        pings, self._pings = self._pings, {}
        for answered, timer in pings.values():
            if timer.active():
                timer.cancel()
            answered.callback(False)
