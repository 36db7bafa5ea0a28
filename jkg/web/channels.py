"""The kernel channels WebSocket: autobahn protocol and its upgrade resource.

The REST route has already authenticated the client and found the kernel;
:class:`ChannelsUpgrade` hands the HTTP connection to autobahn with the kernel
id and session id attached.  The protocol converts frames (through
:mod:`jkg.wire`) and calls the registry.

Kernel to client, the path every output takes, is kept short: a message's
frame is built once per format for all its clients
(:class:`jkg.web.frames.FrameCache`), and written through the client's outbox
(:mod:`jkg.web.outbox`), which bounds what may wait for it: a client that
stops reading is disconnected with code 4008 and the reason, and the kernel
keeps its session's output for replay (see
:meth:`jkg.kernels.kernel.ManagedKernel.detach`).  Optional iopub rate limits
follow jupyter_server (:mod:`jkg.web.ratelimit`).  The connection quota is
policy, in :mod:`jkg.auth.quota`.
"""
from __future__ import annotations

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import tcp
from twisted.logger import Logger
from twisted.web.resource import Resource
from zope.interface import implementer

from .. import metrics, wire
from ..auth.quota import ConnectionCounter
from ..errors import BadRequest, GatewayError
from ..interfaces import IKernelClient
from .client_frames import (autobahn_between_frames, autobahn_refuse_message, autobahn_traffic_seen,
                            whole_data_frames)
from .frames import Frame, FrameCache, encode_legacy_frame, encode_v1_frame
from .guard import GuardedChannel
from .outbox import TCPOutbox, TransportOutbox
from .partial import PartialBudget
from .ratelimit import IOPubRateLimit, warning_message

_log = Logger()  # autobahn claims ``.log`` on protocols

LEGACY = "legacy"
V1 = "v1"
CLOSE_BAD_MESSAGE = 4400
CLOSE_TOO_SLOW = 4008
SLOW_CLOSE_TIMEOUT = 30  # seconds a client dropped as too slow has to read the close frame
_OPEN = WebSocketServerProtocol.STATE_OPEN
_CLOSE_FRAME = b"\x88"  # the first byte of a server's close frame (FIN, opcode 8)


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


_ENCODERS = {V1: encode_v1_frame, LEGACY: encode_legacy_frame}
_DECODERS = {
    (V1, True): wire.decode_client_v1,
    (LEGACY, False): wire.decode_client_legacy_text,
    (LEGACY, True): wire.decode_client_legacy_binary,
}


@implementer(IKernelClient)
class ChannelsProtocol(WebSocketServerProtocol):
    """One client's WebSocket to one kernel.

    Built by :meth:`ChannelsFactory.build` with what the REST route found out
    (the kernel, the session, the tenant, and ``release``, which gives back what
    the connection holds when it is lost: the tenant's connection place, and the
    place in the site's connection count that the upgrade took over).  Once open, it
    holds the kernel that :meth:`~jkg.interfaces.IKernelRegistry.attach`
    returned and talks to it directly.
    """

    def __init__(self, kernel_id: str, session_id: str, tenant: str = "", release=lambda: None,
                 credential=None):
        super().__init__()
        self.kernel_id = kernel_id
        self.session_id = session_id
        self.tenant = tenant
        self.release = release
        #: what the client logged in with, for jkg.auth.revocation on the next reload
        self.credential = credential
        self.wire_format = LEGACY
        self._encode = encode_legacy_frame
        #: the attached kernel (an :class:`~jkg.interfaces.IAttachedKernel`), None when not attached
        self.kernel = None
        #: non-zero once disconnected for being too slow: the buffer limit it went over
        self.dropped_as_slow = 0
        self._outbox = None  # an IClientOutbox, set when the WebSocket opens
        self._rate_limit: IOPubRateLimit | None = None
        self._abort_call = None
        self._frames = None  # the factory's FrameCache, once built

    def onConnect(self, request):  # noqa: N802 - autobahn API
        self.wire_format = V1 if wire.V1_PROTOCOL in request.protocols else LEGACY
        self._encode = _ENCODERS[self.wire_format]
        return wire.V1_PROTOCOL if self.wire_format == V1 else None

    def onOpen(self):  # noqa: N802 - autobahn API
        transport = self.transport
        limit = self.factory.client_buffer_limit
        self._frames = self.factory.frames
        if isinstance(transport, tcp.Connection) and not transport.TLS:
            self._outbox = TCPOutbox(transport, limit, self._drained)
        else:
            self._outbox = TransportOutbox(transport, limit, self._drained)
        limits = self.factory.rate_limits
        if limits is not None:
            self._rate_limit = IOPubRateLimit(*limits)
        self.factory.connections.protocols.setdefault(self.tenant, set()).add(self)
        try:
            self.kernel = self.factory.registry.attach(self.kernel_id, self)
        except GatewayError as error:  # deleted between the route's lookup and now
            self.sendClose(1000, error.message[:120])

    def dataReceived(self, data):  # noqa: N802 - Twisted API
        """Whole, unfragmented data frames go straight to :meth:`onMessage`; the rest to autobahn.

        See :mod:`jkg.web.client_frames` (why, and what counts as such a frame).
        """
        if self.state != _OPEN or not autobahn_between_frames(self):
            super().dataReceived(data)
            return
        pos = 0
        limit = min(self.maxFramePayloadSize or self.maxMessagePayloadSize, self.maxMessagePayloadSize or
                    self.maxFramePayloadSize)
        for payload, binary, end in whole_data_frames(data, limit):
            pos = end
            autobahn_traffic_seen(self)
            self.onMessage(payload, binary)
            if self.state != _OPEN:
                break
        if pos < len(data) and self.state in (_OPEN, WebSocketServerProtocol.STATE_CLOSING):
            super().dataReceived(data[pos:] if pos else data)

    def onMessage(self, payload, isBinary):  # noqa: N802,N803 - autobahn API
        """Decode and forward to the kernel; a malformed message closes with 4400.

        A message on a channel that does not exist is ignored with a warning,
        as jupyter_server does (clients rely on that).
        """
        kernel = self.kernel
        if kernel is None:
            return
        decode = _DECODERS.get((self.wire_format, isBinary))
        try:
            if decode is None:
                raise wire.WireError("text frames are not part of the v1 protocol")
            incoming = decode(payload, self.factory.max_buffers, self.factory.max_decoded_size)
            kernel.send(self, incoming)
        except wire.UnknownChannel as error:
            _log.warn("ignored a message from session {session}: {error}", session=self.session_id, error=error)
        except wire.WireError as error:
            _log.info("closing {session}: malformed message: {error}", session=self.session_id, error=error)
            self.sendClose(CLOSE_BAD_MESSAGE, f"malformed message: {error}"[:120])
        except GatewayError as error:
            code = CLOSE_BAD_MESSAGE if isinstance(error, BadRequest) else 1000
            self.sendClose(code, error.message[:120])

    def onMessageFrameBegin(self, length):  # noqa: N802 - autobahn API
        """A large frame must fit in the gateway's :class:`PartialBudget` before its bytes are kept."""
        super().onMessageFrameBegin(length)
        if length >= PartialBudget.SMALL and not self.failedByMe and not self.factory.partial.take(self, length):
            autobahn_refuse_message(self, length, self.factory.partial.limit - self.factory.partial.held,
                                    "the gateway holds too many partly received messages (--client-partial-limit)")

    def onMessageEnd(self):  # noqa: N802 - autobahn API
        super().onMessageEnd()
        self.factory.partial.release(self)

    def onClose(self, wasClean, code, reason):  # noqa: N802,N803 - autobahn API
        self._detach()

    def _detach(self) -> None:
        kernel, self.kernel = self.kernel, None
        if kernel is not None:
            kernel.detach(self)

    def connectionLost(self, reason):  # noqa: N802 - Twisted API
        call = self._abort_call
        if call is not None and call.active():
            call.cancel()
        self.factory.connections.protocols.get(self.tenant, set()).discard(self)
        self.factory.partial.release(self)
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
                self._write(self._encode(warning_message(warning, message.parts[1], self.session_id)))
            if not send:
                return
        self._write(self._frames.frame(message, self.wire_format, self._encode))

    def deliver_all(self, messages: list) -> None:
        """:meth:`deliver` each of ``messages``, written to the socket in one go."""
        if self.state != _OPEN:
            return
        if len(messages) == 1 or self._rate_limit is not None:
            for message in messages:
                self.deliver(message)
            return
        refused = self._outbox.send_all(self._frames.frames(messages, self.wire_format, self._encode))
        if refused is not None:
            self._too_slow(self._outbox.backlog.limit, refused)

    def _write(self, frame: Frame) -> None:
        """Send ``frame`` now (what the socket does not take waits in the outbox), or drop a too slow client."""
        refused = self._outbox.send(frame)
        if refused is not None:
            self._too_slow(self._outbox.backlog.limit, refused)

    def outgoing(self) -> tuple[int, int]:
        """``(bytes waiting to be sent, bytes the socket has taken so far)``, for flow control."""
        outbox = self._outbox
        if outbox is None:
            return 0, 0
        waiting = outbox.waiting()
        return waiting, outbox.backlog.appended - waiting

    def _drained(self) -> None:
        """The outbox's socket took part of the backlog: iopub held back for this client may flow."""
        kernel = self.kernel
        if kernel is not None:
            kernel.drained(self)

    def sendData(self, data, sync=False, chopsize=None):  # noqa: N802 - autobahn API
        """autobahn's own writes (pings, close) once open: through the outbox, in order with the frames."""
        outbox = self._outbox
        if outbox is None:
            super().sendData(data, sync, chopsize)
            return
        refused = outbox.write_data(data)
        # pongs pile up for a client that pings and never reads; a close frame goes as it is (the
        # connection ends anyway, with the code it was closed with), and so does the one of _too_slow
        if refused is not None and self.state == _OPEN and not self.dropped_as_slow and data[:1] != _CLOSE_FRAME:
            self._too_slow(outbox.backlog.limit, refused)

    def dropConnection(self, abort=False):  # noqa: N802 - autobahn API
        """The transport closes once the outbox has sent what is queued (the close frame last),
        unless the peer stops reading: then it is aborted after :data:`SLOW_CLOSE_TIMEOUT` seconds."""
        outbox = self._outbox
        if not abort and outbox is not None and outbox.close_when_sent() and self._abort_call is None:
            self._abort_call = self.factory.reactor.callLater(SLOW_CLOSE_TIMEOUT, self._abort)
        super().dropConnection(abort)

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
        metrics.slow_client_disconnected()
        self._detach()
        self._outbox.trim()  # free the backlog now; the close frame follows the frame under way
        # little is left waiting: give the client time to read the reason before the drop
        self.closeHandshakeTimeout = SLOW_CLOSE_TIMEOUT
        self.sendClose(CLOSE_TOO_SLOW, reason)

    def disconnect(self, code: int, reason: str) -> None:
        """Close with ``code`` when it is an application code (3000-4999), else 1000.

        @jupyterlab/services reconnects on any code but 1000: a kernel that is
        gone closes with 1000, a gateway restart with 4503 (come back).
        """
        if self.kernel is not None:
            self.kernel = None  # the kernel let go of this client already
            self.sendClose(code if 3000 <= code <= 4999 else 1000, reason[:120])


class ChannelsFactory(WebSocketServerFactory):
    """The one WebSocket factory of a gateway: its collaborators, limits and reactor, given once.

    :param registry: the :class:`~jkg.interfaces.IKernelRegistry` clients attach to.
    :param config: the gateway's :class:`~jkg.config.GatewayConfig` (message size,
        buffer and rate limits, pings).
    :param reactor: drives every connection (autobahn's timers included).
    :param connections: the open connections per tenant (:class:`~jkg.auth.quota.ConnectionCounter`).
    """

    protocol = ChannelsProtocol

    def __init__(self, registry, config, reactor, connections: ConnectionCounter | None = None):
        super().__init__(reactor=reactor)
        self.registry = registry
        self.connections = connections if connections is not None else ConnectionCounter()
        self.client_buffer_limit = config.client_buffer_limit
        self.max_buffers = config.max_client_buffers or None  # per message (jkg.wire decoders)
        self.max_decoded_size = config.max_message_size or None
        self.partial = PartialBudget(config.client_partial_limit or None)
        self.frames = FrameCache()  # one frame per message and format, for all its clients
        self.rate_limits = None
        if config.iopub_msg_rate_limit or config.iopub_data_rate_limit:
            self.rate_limits = (config.iopub_msg_rate_limit, config.iopub_data_rate_limit, config.rate_limit_window)
        options = {
            "maxMessagePayloadSize": config.max_message_size,
            "maxFramePayloadSize": config.max_message_size,
            "openHandshakeTimeout": 30,
            "tcpNoDelay": True,
            # Legacy text frames are parsed as strict UTF-8 JSON by jkg.wire anyway.
            "utf8validateIncoming": False,
        }
        if config.ws_ping_interval:
            options["autoPingInterval"] = config.ws_ping_interval
            if config.ws_ping_timeout:
                options["autoPingTimeout"] = config.ws_ping_timeout
        self.setProtocolOptions(**options)

    def build(self, kernel_id: str, session_id: str, tenant: str = "", release=lambda: None,
              credential=None) -> ChannelsProtocol:
        """The protocol for one client's connection to ``kernel_id``."""
        protocol = self.protocol(kernel_id, session_id, tenant, release, credential)
        protocol.factory = self
        return protocol

    def buildProtocol(self, addr):  # noqa: N802 - Twisted API
        raise TypeError("a channels WebSocket belongs to a kernel and session: use ChannelsUpgrade")


class _OneConnection:
    """What :class:`ChannelsUpgrade` hands autobahn: builds the protocol for one request."""

    def __init__(self, factory: ChannelsFactory, kernel_id: str, session_id: str, tenant: str, release,
                 credential=None):
        self._build = lambda: factory.build(kernel_id, session_id, tenant, release, credential)

    def buildProtocol(self, addr):  # noqa: N802 - Twisted API
        return self._build()


class ChannelsUpgrade(Resource):
    """Upgrade this request to a channels WebSocket for one kernel, session and tenant.

    :param release: gives back the connection place reserved for the tenant;
        called when the connection is lost.
    :param credential: what the client logged in with (see :mod:`jkg.auth.revocation`).

    autobahn's ``WebSocketResource`` does the handshake and takes the request's
    transport away from its HTTP channel, which then never hears that the
    connection closed.  So the channel's place in the gateway's connection
    count (a :class:`jkg.web.guard.GuardedChannel`'s, see
    :meth:`~jkg.web.guard.GuardedChannel.hand_over`) goes to the protocol
    with the tenant's, and is given back by the same ``release``.
    """

    isLeaf = True

    def __init__(self, factory: ChannelsFactory, kernel_id: str, session_id: str, tenant: str = "",
                 release=lambda: None, credential=None):
        super().__init__()
        self._factory = factory
        self._kernel_id = kernel_id
        self._session_id = session_id
        self._tenant = tenant
        self._release = release
        self._credential = credential

    def render(self, request):
        release = self._release
        channel = request.channel
        if isinstance(channel, GuardedChannel):
            release = _releasing_both(release, channel.hand_over())
        connection = _OneConnection(self._factory, self._kernel_id, self._session_id, self._tenant, release,
                                    self._credential)
        return WebSocketResource(connection).render(request)


def _releasing_both(first, second):
    def release() -> None:
        try:
            first()
        finally:
            second()

    return release
