"""The ZMTP engine: client connections (DEALER or SUB) driven by the reactor, with no Jupyter knowledge.

The connections speak ZMTP 3.0 (:mod:`jkg.kernels.zmtp_wire`) with the NULL
mechanism directly on non-blocking sockets read and written by the reactor
(:class:`ZmtpConnection`).  A gateway only ever connects to a kernel's bound
ports, with no encryption (CurveZMQ is not supported, as before), so this is
a small client: greeting, ``READY``, then frames.  Compared with libzmq
behind pyzmq (or txzmq) this saves, per message, a hop through ZeroMQ's I/O
thread and its wake-up of the reactor thread, a system call and a Python call
per frame, and any copy of large parts: they are received straight into their
own buffer and passed on as views.  Like libzmq, a connection reconnects by
itself (10 ms, backing off to 1 s) and queues what is sent before the peer
is reachable.

Nothing here imports the global reactor: it comes from :func:`make_factory`.
What the frames mean is :mod:`jkg.kernels.channels`' business.
"""
from __future__ import annotations

import errno
import ipaddress
import socket
from collections import deque
from typing import Callable, Sequence

from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from .errorlog import ProtocolErrorLog
from .readiness import LoopReadiness, ReactorReadiness, running_loop_of
from .zmtp_reader import ZmtpReader
from .zmtp_wire import (CLOSED, CONNECTING, GREETING, GREETING_WAIT, IOV_MAX, MAX_QUEUED, READ_BUFFER, READY,
                        RECONNECT_FIRST, RECONNECT_MAX, WAITING, BufferPool, ProtocolError, ReadLimits,
                        encode_message, ready_command)

log = Logger()


class ZmqContext:
    """The gateway's ZeroMQ side: the reactor that drives every connection, and them."""

    def __init__(self, reactor, limits: ReadLimits | None = None, errors: ProtocolErrorLog | None = None):
        self.reactor = reactor
        self.connections: set[ZmtpConnection] = set()
        self.buffers = BufferPool()
        self.limits = limits or ReadLimits()
        self.errors = errors or ProtocolErrorLog(reactor)

    def shutdown(self) -> None:
        """Close every connection still open."""
        for connection in list(self.connections):
            connection.close()


def make_factory(reactor, limits: ReadLimits | None = None, errors: ProtocolErrorLog | None = None) -> ZmqContext:
    """The ZeroMQ side of one gateway, driven by ``reactor``, taking at most ``limits`` from kernels."""
    return ZmqContext(reactor, limits, errors)




@implementer(IReadWriteDescriptor)
class ZmtpConnection(ZmtpReader):
    """A ZMTP 3.0 client connection (DEALER or SUB) to one of a kernel's ports.

    Complete messages (lists of frames) go to ``on_message(frames)``; frames
    are ``bytes``, or for large ones read-only ``memoryview``\\ s of a buffer
    of their own.  After the messages that one read completed, ``on_read_done()``
    (if given) is called: a consumer can handle them as one batch (one write per
    client instead of one per message).  ``on_ready()`` is called each time the
    handshake with the kernel completes.

    :param address: ``tcp://host:port`` or ``ipc://path``.
    """

    def __init__(self, zmq_context: ZmqContext, socket_type: bytes, address: str,
                 on_message: Callable[[list], None], identity: bytes | None = None,
                 subscribe: bool = False, on_ready: Callable[[], None] | None = None,
                 on_read_done: Callable[[], None] | None = None):
        self._owner = zmq_context
        self._reactor = zmq_context.reactor
        self._socket_type = socket_type
        self._address = address
        self._hello = GREETING + ready_command(socket_type, identity)
        self._subscribe = subscribe
        self.on_message = on_message
        self.on_ready = on_ready
        self.on_read_done = on_read_done
        self._sock: socket.socket | None = None
        self._fd = -1
        self._state = WAITING
        self._delay = RECONNECT_FIRST
        self._retry = None
        self._queued: deque = deque()  # messages sent before the handshake completed
        self._queued_bytes = 0
        self._out: deque = deque()  # bytes-likes not yet taken by the socket
        self._out_bytes = 0  # their size, counted while the socket is full
        self._writing = False
        self._reading = False
        self._readiness = None  # who watches the socket: chosen when it is first watched
        self._paused = False  # reading suspended (flow control)
        self._hold_call = None  # reading held back for a moment (hold_reading)
        self._buf = bytearray(READ_BUFFER)
        self._view = memoryview(self._buf)
        self._start = self._end = 0
        self._big: memoryview | None = None  # a large frame being received into its own buffer
        self._big_filled = 0
        self._big_flags = 0
        self._big_size = 0  # the large frame's announced size; its buffer grows towards it
        self._frames: list = []
        self._message_bytes = 0  # bytes of the frames of the message in progress
        self._sliced = False  # the last parse stopped at FRAME_SLICE frames, leaving some in the buffer
        self._drain_call = None  # the reactor call that goes on with them
        zmq_context.connections.add(self)
        self._connect()

    # -- connecting ----------------------------------------------------------------
    def _connect(self) -> None:
        self._retry = None
        if self._state == CLOSED:
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
        self._state = CONNECTING
        self._start = self._end = 0
        self._big = None
        self._frames = []
        self._message_bytes = 0
        self._sliced = False
        self._out.clear()
        self._out_bytes = len(self._hello)
        self._out.append(self._hello)
        self._start_writing()

    def _schedule_retry(self) -> None:
        if self._state == CLOSED or self._retry is not None:
            return
        self._state = WAITING
        self._retry = self._reactor.callLater(self._delay, self._connect)
        self._delay = min(self._delay * 2, RECONNECT_MAX)

    def _lost(self, why) -> None:
        """The connection failed or closed: drop it and try again later."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self._cancel_hold()
        self._stop_reading()
        self._stop_writing()
        self._fd = -1
        sock.close()
        if self._state == READY:
            log.debug("connection to {address} lost: {why}", address=self._address, why=why)
        self._state = WAITING
        self._schedule_retry()

    def close(self) -> None:
        """Close for good; later sends are ignored."""
        if self._state == CLOSED:
            return
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
        self._drain_call = None
        self._cancel_hold()
        sock, self._sock = self._sock, None
        if sock is not None:
            self._stop_reading()
            self._stop_writing()
            sock.close()
        self._fd = -1
        self._state = CLOSED
        self._queued.clear()
        self._queued_bytes = 0
        self._out.clear()
        self._out_bytes = 0
        self._owner.connections.discard(self)

    @property
    def ready(self) -> bool:
        return self._state == READY

    # -- the reactor's side ----------------------------------------------------------
    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:  # noqa: N802 - Twisted API
        return "zmtp"

    def connectionLost(self, reason) -> None:  # noqa: N802 - Twisted API (the reactor gave up on us)
        self._writing = self._reading = False
        self._lost(reason)

    def hold_reading(self, seconds: float) -> None:
        """Read again only in ``seconds``: what comes meanwhile waits in the socket and is read at once.

        Interrupt moderation for a stream of small messages: one wake-up and
        one read for all that came, instead of one per message.  Independent
        of :meth:`pause_reading`: reading goes on when neither holds it.
        """
        if self._hold_call is None and self._sock is not None:
            self._stop_reading()
            self._hold_call = self._reactor.callLater(seconds, self._end_hold)

    def _end_hold(self) -> None:
        self._hold_call = None
        if self._sock is not None and self._state != CONNECTING:
            self._start_reading()

    def _cancel_hold(self) -> None:
        if self._hold_call is not None:
            if self._hold_call.active():
                self._hold_call.cancel()
            self._hold_call = None

    def pause_reading(self) -> None:
        """Leave what the kernel sends in the sockets until :meth:`resume_reading`."""
        self._paused = True
        self._stop_reading()

    def resume_reading(self) -> None:
        self._paused = False
        if self._sock is not None and self._state != CONNECTING:
            self._start_reading()
            if self._sliced:
                self._later()

    def _watch(self):
        readiness = self._readiness
        if readiness is None:
            loop = running_loop_of(self._reactor)
            if loop is None:
                readiness = ReactorReadiness(self._reactor, self)
            else:
                readiness = LoopReadiness(loop, self.fileno, self._readable, self._writable)
            self._readiness = readiness
        return readiness

    def _start_reading(self) -> None:
        if not self._reading and not self._paused and self._hold_call is None:
            self._reading = True
            self._watch().start_reading()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._readiness.stop_reading()

    def _start_writing(self) -> None:
        if not self._writing:
            self._writing = True
            self._watch().start_writing()

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            self._readiness.stop_writing()

    def _readable(self) -> None:
        """``doRead`` called by the asyncio loop: what would escape it drops the connection, logged."""
        try:
            self.doRead()
        except Exception as error:  # noqa: BLE001 - as the reactor would: log, drop, reconnect
            log.failure("reading from {address}", address=self._address)
            self._lost(error)

    def _writable(self) -> None:
        try:
            self.doWrite()
        except Exception as error:  # noqa: BLE001 - as the reactor would
            log.failure("writing to {address}", address=self._address)
            self._lost(error)

    def doWrite(self) -> None:  # noqa: N802 - Twisted API
        sock = self._sock
        if sock is None:
            return
        if self._state == CONNECTING:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._lost(OSError(code, errno.errorcode.get(code, "connect failed")))
                return
            self._state = GREETING_WAIT
            self._start_reading()
        out = self._out
        while out:
            pieces = list(out) if len(out) <= IOV_MAX else [out[i] for i in range(IOV_MAX)]
            try:
                sent = sock.sendmsg(pieces)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self._lost(error)
                return
            self._out_bytes -= sent
            while sent:
                first = out[0]
                if sent >= len(first):
                    sent -= len(first)
                    out.popleft()
                else:
                    out[0] = memoryview(first)[sent:]
                    sent = 0
            if len(pieces) < IOV_MAX and out:
                return  # the socket is full: wait for the next writable event
        self._stop_writing()

    # -- sending -------------------------------------------------------------------------
    def send(self, frames: Sequence) -> None:
        """Send a multipart message (bytes-likes); queued until the kernel is reachable."""
        state = self._state
        if state == CLOSED:
            return
        if state != READY:
            queued = list(frames)
            self._queued.append(queued)
            self._queued_bytes += sum(map(len, queued))
            limit = self._owner.limits.send_buffer
            while len(self._queued) > MAX_QUEUED or (self._queued_bytes > limit and len(self._queued) > 1):
                self._queued_bytes -= sum(map(len, self._queued.popleft()))
                self._owner.errors.report(self._address, "message queued for an unreachable kernel",
                                          "the oldest was dropped (--kernel-buffer-limit)")
            return
        if self._out and self._out_bytes > self._owner.limits.send_buffer:
            # the kernel does not read: refuse more rather than hold it all
            self._owner.errors.report(self._address, "message for a kernel that does not read",
                                      f"over {self._owner.limits.send_buffer} bytes wait (--kernel-buffer-limit)")
            return
        self._write(encode_message(frames))

    def _flush_queued(self) -> None:
        queued, self._queued = self._queued, deque()
        self._queued_bytes = 0
        pieces = []
        for frames in queued:
            pieces.extend(encode_message(frames))
        if pieces:
            self._write(pieces)

    def _write(self, pieces: list) -> None:
        sock = self._sock
        if sock is None:
            return
        out = self._out
        if not out and len(pieces) <= IOV_MAX:
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
                self._out_bytes += size - sent
                sent = 0
        else:
            out.extend(pieces)
            self._out_bytes += sum(map(len, pieces))
        if out:
            self._start_writing()

