"""The kernel channels WebSocket: autobahn protocol and its upgrade resource.

The REST route has already authenticated the client and found the kernel;
:class:`ChannelsUpgrade` hands the HTTP connection to autobahn with the kernel
id and session id attached.  The protocol only converts frames (through
:mod:`jkg.web.wire`) and calls the registry; it makes no decisions itself.
Frames for a kernel message are built once per format and cached on the
message, so fan-out to many clients costs one encoding, not one per client.
"""
from __future__ import annotations

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.logger import Logger
from zope.interface import implementer

from ..errors import BadRequest, GatewayError, ResourceLimit
from ..interfaces import IKernelClient
from . import wire

_log = Logger()  # autobahn claims ``.log`` on protocols

LEGACY = "legacy"
V1 = "v1"
CLOSE_BAD_MESSAGE = 4400


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


def _encode_v1(message) -> tuple[bytes, bytes]:
    payload = wire.encode_v1(message.channel, message.parts)
    return wire.server_frame_header(len(payload), True), payload


def _encode_legacy(message) -> tuple[bytes, bytes]:
    payload, binary = wire.encode_legacy(message.channel, message.parts, message.msg_id, message.msg_type)
    return wire.server_frame_header(len(payload), binary), payload


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

    def onConnect(self, request):  # noqa: N802 - autobahn API
        self.wire_format = V1 if wire.V1_PROTOCOL in request.protocols else LEGACY
        self._encode = _ENCODERS[self.wire_format]
        return wire.V1_PROTOCOL if self.wire_format == V1 else None

    def onOpen(self):  # noqa: N802 - autobahn API
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
        if self.state != WebSocketServerProtocol.STATE_OPEN:
            return
        frame = message.encoded.get(self.wire_format)
        if frame is None:
            frame = message.encoded[self.wire_format] = self._encode(message)
        self.transport.writeSequence(frame)

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
    options = {
        "maxMessagePayloadSize": config.max_message_size,
        "maxFramePayloadSize": config.max_message_size,
        "openHandshakeTimeout": 30,
        "tcpNoDelay": True,
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
