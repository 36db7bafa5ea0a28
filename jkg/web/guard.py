"""Bounds on HTTP connections, enforced before any route runs.

Twisted reads a request's whole body (spooling it to a temporary file) before
the resource sees it, and keeps a connection that sends its headers one byte
at a time open for as long as it keeps sending.  So the limits live below
the resource tree:

* :class:`GuardedRequest` refuses a body over ``max_body_size`` with 413 as
  soon as the ``Content-Length`` header says so, or as soon as a chunked body
  goes over it, before authentication and without storing the rest;
* :class:`ConnectionGuard` counts open connections (WebSockets included) and
  connections still sending headers per client address, refuses new ones
  over either limit with 503, and disconnects a client that takes more than
  ``header_timeout`` seconds to send a request's headers.
"""
from __future__ import annotations

import json
from typing import Callable

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.server import Request

log = Logger()

#: after a refusal, bytes the client may still send (and we discard) before the connection is dropped
_LINGER_BYTES = 1024 * 1024
_LINGER_SECONDS = 2.0


def refusal(status: int, reason: str, message: str, retry_after: int | None = None) -> bytes:
    """A complete HTTP/1.1 response with a JSON error body that closes the connection."""
    body = json.dumps({"reason": reason, "message": message}).encode("utf-8")
    extra = f"Retry-After: {retry_after}\r\n" if retry_after else ""
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{extra}Connection: close\r\n\r\n")
    return head.encode("latin-1") + body


class _Linger:
    """Send a last response, stop sending, and drop the connection a little later.

    Closing at once while the client is still sending makes the kernel answer
    with a reset, which can destroy the response before the client reads it;
    so the write side is closed first and whatever else arrives is discarded,
    up to a small bound in bytes and time.  The protocol that owns the
    connection (:class:`_Refusal`, :class:`GuardedChannel`) hands it what it
    receives and tells it when the connection is lost.
    """

    def __init__(self, transport, clock, response: bytes):
        self._transport = transport
        self._received = 0
        self._call = None
        transport.write(response)
        try:
            transport.loseWriteConnection()
        except (AttributeError, NotImplementedError):
            transport.loseConnection()
            return
        self._call = clock.callLater(_LINGER_SECONDS, transport.abortConnection)

    def discard(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > _LINGER_BYTES:
            self._transport.abortConnection()

    def lost(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()


class GuardedRequest(Request):
    """A Request whose body may not exceed the site's ``max_body_size``.

    It is the ``requestFactory`` of :class:`jkg.web.site.GatewaySite`, so
    ``self.channel.site`` is that site, and its ``guard`` is always set: the
    :class:`ConnectionGuard`, or ``None`` when no limits are enforced.
    """

    _received = 0
    _refused = False

    def gotLength(self, length):  # noqa: N802 - Twisted API
        guard = self.channel.site.guard
        limit = guard.max_body_size if guard is not None else 0
        if limit and length is not None and length > limit:
            self._refuse(limit)
            return
        super().gotLength(length)

    def handleContentChunk(self, data):  # noqa: N802 - Twisted API
        if self._refused:
            return
        self._received += len(data)
        guard = self.channel.site.guard
        if guard is not None and 0 < guard.max_body_size < self._received:
            self._refuse(guard.max_body_size)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command, path, version):  # noqa: N802 - Twisted API
        if not self._refused:
            super().requestReceived(command, path, version)

    def _refuse(self, limit: int) -> None:
        self._refused = True
        self.content = None
        if self.channel.transport is None:
            return
        self.channel.linger(refusal(413, "Payload Too Large", f"request body over {limit} bytes (--max-body-size)"))


class _Refusal(Protocol):
    """Answers a connection that is over a limit with 503 and closes it."""

    def __init__(self, clock, message: str):
        self._clock = clock
        self._message = message

    _linger: _Linger | None = None

    def connectionMade(self):  # noqa: N802 - Twisted API
        self._linger = _Linger(self.transport, self._clock,
                               refusal(503, "Service Unavailable", self._message, retry_after=1))

    def dataReceived(self, data):  # noqa: N802 - Twisted API
        self._linger.discard(data)

    def connectionLost(self, reason):  # noqa: N802 - Twisted API
        if self._linger is not None:
            self._linger.lost()


class ConnectionGuard:
    """Connection counts and header deadlines of one site.

    :param clock: an ``IReactorTime``.
    :param max_connections: open connections at once (``None``: no limit).
    :param max_pending_per_address: connections from one address still
        sending headers (0: no limit).
    :param header_timeout: seconds allowed for a request's headers.
    :param max_body_size: bytes of request body (0: no limit).
    """

    def __init__(self, clock, max_connections: int | None, max_pending_per_address: int, header_timeout: float,
                 max_body_size: int):
        self.clock = clock
        self.max_connections = max_connections
        self.max_pending_per_address = max_pending_per_address
        self.header_timeout = header_timeout
        self.max_body_size = max_body_size
        self.open = 0
        self.pending: dict[str, int] = {}
        self.refused = 0

    def admit(self, address: str):
        """``None`` to go ahead, or the protocol that refuses this connection."""
        if self.max_connections is not None and self.open >= self.max_connections:
            self.refused += 1
            return _Refusal(self.clock, f"the gateway has {self.open} connections open, its limit "
                                        "(--max-http-connections); try again later")
        if self.max_pending_per_address and self.pending.get(address, 0) >= self.max_pending_per_address:
            self.refused += 1
            return _Refusal(self.clock, f"too many connections from {address} still sending headers "
                                        "(--max-pending-per-address)")
        return None

    def watch(self, channel, address: str) -> "_ChannelState":
        """Count ``channel``'s connection and time its headers.

        Returns the connection's state; its :meth:`~_ChannelState.closed`
        gives the connection back (once, however often it is called).
        """
        self.open += 1
        state = _ChannelState(self, channel, address)
        state.start_waiting()
        return state


class _ChannelState:
    """One connection: whether it is waiting for headers, and the timer that ends the wait."""

    def __init__(self, guard: ConnectionGuard, channel, address: str):
        self._guard = guard
        self._channel = channel
        self._address = address
        self._timer = None
        self._open = True

    def closed(self) -> None:
        """The connection is gone: it no longer counts, nor waits for headers.

        Both the channel and, after a WebSocket upgrade, the protocol that took
        its transport over may say so; only the first call counts.
        """
        if self._open:
            self._open = False
            self._guard.open -= 1
            self.done_waiting()

    def start_waiting(self) -> None:
        if self._timer is not None:
            return
        guard = self._guard
        guard.pending[self._address] = guard.pending.get(self._address, 0) + 1
        self._timer = guard.clock.callLater(guard.header_timeout, self._expired)

    def done_waiting(self) -> None:
        if self._timer is None:
            return
        if self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._leave_pending()

    def _leave_pending(self) -> None:
        pending = self._guard.pending
        left = pending.get(self._address, 1) - 1
        if left:
            pending[self._address] = left
        else:
            pending.pop(self._address, None)

    def _expired(self) -> None:
        self._timer = None  # fired: done_waiting must not cancel it
        self._leave_pending()
        transport = self._channel.transport
        if transport is not None:  # not logged: a slow-header flood must not become a log flood
            transport.write(refusal(408, "Request Timeout", "request headers not received in time "
                                                            "(--header-timeout)"))
            transport.loseConnection()


class GuardedChannel(HTTPChannel):
    """An HTTPChannel counted by its site's :class:`ConnectionGuard` while it is open.

    It tells the guard when a request's headers are complete and when an idle
    kept-alive connection starts waiting for the next ones.  A WebSocket
    upgrade takes the transport away from the channel, whose
    :meth:`connectionLost` is then never called: whoever takes it over calls
    :meth:`hand_over` and reports the loss itself.
    """

    _guarded: _ChannelState | None = None
    _linger: _Linger | None = None

    def connectionMade(self):  # noqa: N802 - Twisted API
        super().connectionMade()
        guard = self.site.guard
        if guard is not None:
            self._guarded = guard.watch(self, getattr(self.transport.getPeer(), "host", "local"))

    def linger(self, response: bytes) -> None:
        """Answer with ``response`` (a refusal) and close: what the client still sends is discarded."""
        self._linger = _Linger(self.transport, self.site.guard.clock, response)

    def dataReceived(self, data):  # noqa: N802 - Twisted API
        if self._linger is not None:
            self._linger.discard(data)
            return
        super().dataReceived(data)

    def connectionLost(self, reason):  # noqa: N802 - Twisted API
        if self._linger is not None:
            self._linger.lost()
        if self._guarded is not None:
            self._guarded.closed()
        super().connectionLost(reason)

    def hand_over(self) -> Callable[[], None]:
        """The transport goes to another protocol: what it calls once its connection is lost.

        Calling it gives the connection back to the guard; so does this
        channel's own :meth:`connectionLost`, should it still come, and the
        first of the two is the one that counts.
        """
        state = self._guarded
        return state.closed if state is not None else _nothing

    def allHeadersReceived(self):  # noqa: N802 - Twisted API
        if self._guarded is not None:
            self._guarded.done_waiting()
        super().allHeadersReceived()

    def requestDone(self, request):  # noqa: N802 - Twisted API
        super().requestDone(request)
        if self._guarded is not None and self.persistent and self.transport is not None:
            self._guarded.start_waiting()  # an idle kept-alive connection waits for headers too


def _nothing() -> None:
    pass


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the limit now in force.

    Every connection and every kernel socket is a descriptor; the usual soft
    limit of 1024 would run out long before the machine does.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as error:
            log.warn("could not raise the descriptor limit from {soft} to {hard}: {error}", soft=soft,
                     hard=hard, error=error)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_limit(configured: int | None, descriptors: int) -> int:
    """``--max-http-connections``, or half the descriptors (the rest for kernels and files)."""
    return configured if configured else max(16, descriptors // 2)
