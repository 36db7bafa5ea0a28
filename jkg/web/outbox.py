"""Writing frames to one client, within a bound: the outbox and its backlog.

When nothing is waiting in the connection's buffer, a frame is written to the
socket at once (``send``/``sendmsg``) instead of taking a turn of the reactor
through Twisted's write buffer; only what the socket does not take is
buffered (:class:`TCPOutbox`).  TLS and other transports are written through
the transport (:class:`TransportOutbox`).  Both learn what the client's socket
took only from Twisted's public producer API, never from the transport's
internals.  Every client has a bounded backlog (:class:`Backlog`): one that
stops reading is disconnected (code 4008, by
:class:`~jkg.web.channels.ChannelsProtocol`) and the kernel keeps its
session's output for replay.  A client that stops reading thus never makes
memory grow without bound nor slows anyone else.
"""
from __future__ import annotations

from collections import deque

from twisted.internet.interfaces import IPullProducer, IPushProducer
from zope.interface import implementer

from ..interfaces import IClientOutbox
from .frames import MAX_PIECES


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


@implementer(IPullProducer, IClientOutbox)
class TCPOutbox:
    """Writes one client's frames straight to its TCP socket, without copying them.

    When nothing is waiting, frames go to the socket at once (``send`` or,
    for a frame in pieces, ``sendmsg``) instead of on the reactor's next turn
    through Twisted's buffer: no wake-up, no ``epoll_ctl``, no copy.  What the
    socket does not take waits here as views of the shared frames; a slice of
    it (up to the transport's ``bufferSize``) is lent to the transport at a
    time.  This object is the transport's pull producer (Twisted's public
    consumer API): the transport calls :meth:`resumeProducing` each time its
    buffer is empty, so this knows, without looking inside the transport,
    that the slice it lent was sent -- then sends on, and tells ``on_drain``
    (iopub flow control waits for that).  Whatever else is written to the
    connection (autobahn's pings and close frames, :meth:`write_data`) goes
    through here too, so the stream stays in order.
    """

    def __init__(self, transport, limit: int, on_drain=lambda: None):
        self.transport = transport
        self.backlog = Backlog(limit)
        self._socket = transport.getHandle()
        self._on_drain = on_drain
        self.queue: deque = deque()  # bytes-likes not yet handed to the socket or transport
        self.queued = 0
        # bytes lent to the transport since it last said its buffer was empty;
        # -1 until it first says so (the handshake's answer may still be in it)
        self.lent = -1
        # (start, end) of each frame that was queued, as offsets in the stream (``backlog.appended``)
        self._spans: deque = deque()
        # twisted.web's HTTPChannel stays registered as the producer after the
        # upgrade (it would stop reading the client while its output backs up).
        if transport.producer is not None:
            transport.unregisterProducer()
        self._registering = True  # (a pull producer is resumed at once: that says nothing yet)
        transport.registerProducer(self, False)
        self._registering = False
        transport.startWriting()  # its buffer, even if empty, is looked at and reported on

    def waiting(self) -> int:
        """Bytes not known to be taken by the socket (what the transport holds counts in full)."""
        return self.queued + abs(self.lent)

    def send(self, frame) -> str | None:
        """Write ``frame`` unless the client is too slow: then why not (and nothing is written).

        One call, no helpers: the path of every message to every client."""
        backlog = self.backlog
        size = frame.size
        start = backlog.appended
        if self.queue or self.lent:
            refused = backlog.check(self.queued + abs(self.lent))
            if refused is not None:
                return refused
            backlog.appended = start + size
            self.queue.extend(frame.pieces)
            self.queued += size
            self._spans.append((start, start + size))
            return None
        backlog.appended = start + size
        pieces = frame.pieces
        try:
            sent = self._socket.send(pieces[0]) if len(pieces) == 1 else self._socket.sendmsg(pieces[:MAX_PIECES])
        except OSError:  # full (EAGAIN), or broken: the transport's own write finds out
            sent = 0
        if sent < size:
            self._keep(pieces, sent)
            self._spans.append((start, start + size))
            self._lend()
        return None

    def send_all(self, frames: list) -> str | None:
        """:meth:`send` several frames, in order, with one ``sendmsg`` (one wake-up of the client):
        all of them, or none if the client is too slow."""
        backlog = self.backlog
        start = position = backlog.appended
        spans = self._spans
        if self.queue or self.lent:
            refused = backlog.check(self.queued + abs(self.lent))
            if refused is not None:
                return refused
            queue = self.queue
            for frame in frames:
                queue.extend(frame.pieces)
                spans.append((position, position + frame.size))
                position += frame.size
            backlog.appended = position
            self.queued += position - start
            return None
        pieces = [piece for frame in frames for piece in frame.pieces]
        total = sum(frame.size for frame in frames)
        backlog.appended = start + total
        sent = self._send(pieces)
        if sent < total:
            done = start + sent
            for frame in frames:
                end = position + frame.size
                if end > done:
                    spans.append((position, end))
                position = end
            self._keep(pieces, sent)
            self._lend()
        return None

    def write_data(self, data: bytes) -> str | None:
        """Bytes from autobahn (control frames), in order with the frames: always written (a close
        frame must go), then why the client is too slow, or ``None`` (a client that sends pings
        and never reads the pongs is bounded like one that does not read its output)."""
        self.backlog.appended += len(data)
        if self._write((data,), len(data)):
            return self.backlog.check(self.waiting())
        return None

    def _write(self, pieces, size: int) -> bool:
        """Send or queue; whether anything was queued."""
        if self.queue or self.lent:
            self.queue.extend(pieces)
            self.queued += size
            self._spans.append((self.backlog.appended - size, self.backlog.appended))
            return True  # goes out when the transport says its buffer is empty
        sent = self._send(pieces)
        if sent < size:
            self._keep(pieces, sent)
            self._spans.append((self.backlog.appended - size, self.backlog.appended))
            self._lend()
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
        if len(pieces) > MAX_PIECES:
            pieces = pieces[:MAX_PIECES]
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

    def _lend(self) -> None:
        """Lend the transport the next slice of the queue (up to its ``bufferSize``).

        It writes the slice when the socket can take it and then calls
        :meth:`resumeProducing`; nothing else goes to the socket meanwhile.
        """
        t = self.transport
        queue = self.queue
        need = t.bufferSize
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
            data = b"".join(chunk)
            self.lent = len(data)
            t.write(data)
        spans = self._spans
        if not queue:
            spans.clear()
        else:
            handed = self.backlog.appended - self.queued
            while spans and spans[0][1] <= handed:
                spans.popleft()

    # -- IPullProducer: the transport's buffer is empty
    def resumeProducing(self) -> None:  # noqa: N802 - Twisted API
        if self._registering:
            return
        self.lent = 0
        queue = self.queue
        if queue:
            pieces = list(queue) if len(queue) <= MAX_PIECES else [queue[i] for i in range(MAX_PIECES)]
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
            self._lend()
        if not self.lent and self.transport.disconnecting:
            # all sent, and loseConnection was called: a pull producer would keep it open
            self.transport.unregisterProducer()
            self.transport.loseConnection()
        self._on_drain()

    def stopProducing(self) -> None:  # noqa: N802 - Twisted API
        self.queue.clear()
        self._spans.clear()
        self.queued = 0

    def close_when_sent(self) -> bool:
        """The connection is being dropped; whether bytes still wait to go out.

        Nothing to do here: while this pull producer is registered the
        transport waits for it, and :meth:`resumeProducing` lets it close once
        the last slice went out.
        """
        return bool(self.queue or self.lent)


@implementer(IPushProducer, IClientOutbox)
class TransportOutbox:
    """Writes one client's frames through its transport: TLS, and any transport but a plain TCP socket.

    What waits in the transport is not ours to look into.  This object is the
    transport's *push* producer (Twisted's public consumer API; a pull
    producer would be polled without end by TLS's ``_PullToPush``): the
    transport pauses it once its buffer passes its ``bufferSize`` and resumes
    it once the buffer is empty.  Frames go to the transport whole while it is
    not paused; while it is paused they wait here, whole, so the backlog is
    what waits here plus what was handed over since the transport last had
    room (``lent``; what it held before that is under its ``bufferSize``,
    64 KiB, and not counted).  Each resume is progress the :class:`Backlog`
    sees, and is reported to ``on_drain`` (iopub flow control waits for it).
    autobahn's own writes (:meth:`write_data`) queue behind the frames, so the
    stream stays in order.  After ``loseConnection``, TLS writes only while a
    producer is registered, so this one stays until the queue is handed over.
    """

    def __init__(self, transport, limit: int, on_drain=lambda: None):
        self.transport = transport
        self.backlog = Backlog(limit)
        self._on_drain = on_drain
        self.queue: deque = deque()  # whole frames (and control frames) not yet handed to the transport
        self.queued = 0
        self.lent = 0
        self.paused = False
        self._closing = False
        try:
            transport.registerProducer(self, True)
        except RuntimeError:
            # twisted.web's HTTPChannel stays registered after the upgrade (the
            # consumer API refuses a second producer rather than saying who it has)
            transport.unregisterProducer()
            transport.registerProducer(self, True)

    def waiting(self) -> int:
        """Bytes waiting here, plus what the transport took since it last had room (if it has none now)."""
        return self.queued + self.lent if self.paused else self.queued

    def refuse(self) -> str | None:
        """Why no more may be written to this client (it is too slow), or ``None``."""
        if not self.paused:
            return None
        return self.backlog.check(self.queued + self.lent)

    def send(self, frame) -> str | None:
        """Write ``frame`` unless the client is too slow: then why not (and nothing is written)."""
        return self.send_all((frame,))

    def send_all(self, frames) -> str | None:
        """:meth:`send` several frames, in order: all of them, or none if the client is too slow."""
        refused = self.refuse()
        if refused is None:
            for frame in frames:
                self._hand(frame.joined())
        return refused

    def write_data(self, data: bytes) -> str | None:
        """Bytes from autobahn (control frames), in order with the frames: always written, then
        why the client is too slow, or ``None`` (as :meth:`TCPOutbox.write_data`)."""
        self._hand(data)
        return self.refuse()

    def _hand(self, data) -> None:
        size = len(data)
        self.backlog.appended += size
        if self.paused:
            self.queue.append(data)
            self.queued += size
            return
        self.lent = size  # it had room: what it held is under its bufferSize
        self.transport.write(data)  # (may pause this producer before it returns)

    def trim(self) -> None:
        """Drop every queued frame (none is under way: frames are handed over whole)."""
        self.backlog.appended -= self.queued
        self.queue.clear()
        self.queued = 0

    def close_when_sent(self) -> bool:
        """The connection is being dropped: let it close once the queue is handed over (now if empty).

        :returns: whether bytes still wait here.
        """
        self._closing = True
        if self.queue:
            return True
        self.transport.unregisterProducer()
        return False

    # -- IPushProducer
    def pauseProducing(self) -> None:  # noqa: N802 - Twisted API
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted API
        """The transport sent all it held: hand it what waits here until it pauses again."""
        self.paused = False
        self.lent = 0
        queue, transport = self.queue, self.transport
        while queue and not self.paused:
            data = queue.popleft()
            self.queued -= len(data)
            self.lent = len(data)
            transport.write(data)
        if self._closing and not queue:
            self._closing = False
            transport.unregisterProducer()
        self._on_drain()

    def stopProducing(self) -> None:  # noqa: N802 - Twisted API
        self.queue.clear()
        self.queued = 0
