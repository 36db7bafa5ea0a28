"""Writing frames to one client, within a bound: the outbox and its backlog.

When nothing is waiting in the connection's buffer, a frame is written to the
socket at once (``send``/``sendmsg``) instead of taking a turn of the reactor
through Twisted's write buffer; only what the socket does not take is
buffered (:class:`TCPOutbox`; TLS and other transports always go through the
transport, :class:`Outbox`).  Every client has a bounded backlog
(:class:`Backlog`): one that stops reading is disconnected (code 4008, by
:class:`~jkg.web.channels.ChannelsProtocol`) and the kernel keeps its
session's output for replay.  A client that stops reading thus never makes
memory grow without bound nor slows anyone else.
"""
from __future__ import annotations

from collections import deque

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from .frames import MAX_PIECES



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


class Outbox:
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
class TCPOutbox(Outbox):
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
        self._prime()

    def stopProducing(self) -> None:  # noqa: N802 - Twisted API
        self.queue.clear()
        self._spans.clear()
        self.queued = 0

