"""The HTTP resource tree and the Site that serves it.

:func:`make_root_resource` mounts the API under ``base_url`` and wraps it so
that CORS headers go on every response and preflights are answered without
credentials; it is what an embedder mounts in an existing Site.
:class:`GatewaySite` sets TCP_NODELAY on every connection: without it, small
WebSocket frames wait up to 40 ms for delayed ACKs, which is where the
reference gateways lose most of their round-trip time.
"""
from __future__ import annotations

import json
from typing import Callable

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from .guard import GuardedChannel, GuardedRequest
from .http import CorsPolicy

log = Logger()


class CorsResource(Resource):
    """Applies the CORS policy, answers ``OPTIONS``, then defers to the API.

    A preflight gets 204, or what ``answer_preflight(request)`` returns when
    one is given (notebook-http answers as the reference does).  It is passed
    in, not looked up on the API resource: the kernels API is a klein
    resource, which has no such method to declare.
    """

    isLeaf = True

    def __init__(self, api_resource, cors: CorsPolicy,
                 answer_preflight: Callable[[object], bytes] | None = None):
        super().__init__()
        self._api = api_resource
        self._cors = cors
        self._answer_preflight = answer_preflight

    def render(self, request):
        preflight = request.method == b"OPTIONS"
        self._cors.apply(request, preflight=preflight)
        if preflight:
            answer = self._answer_preflight
            if answer is not None:
                return answer(request)
            request.setResponseCode(204)
            return b""
        return self._api.render(request)


class JsonNotFound(Resource):
    """Anything outside ``base_url``: a JSON 404 like every other error."""

    isLeaf = True

    def render(self, request):
        request.setResponseCode(404)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"reason": "Not Found", "message": "no such resource"}).encode()


class _Prefix(Resource):
    """One path segment of ``base_url``; unknown children are JSON 404s."""

    def getChild(self, path, request):  # noqa: N802 - Twisted API
        return JsonNotFound()

    def render(self, request):
        return JsonNotFound().render(request)


def make_root_resource(api_resource, cors: CorsPolicy, base_url: str = "/",
                       answer_preflight: Callable[[object], bytes] | None = None) -> Resource:
    """The resource to serve (or mount in an embedder's own tree).

    :param answer_preflight: answers ``OPTIONS`` instead of a bare 204 (see :class:`CorsResource`).
    """
    leaf = CorsResource(api_resource, cors, answer_preflight)
    segments = [s for s in base_url.strip("/").split("/") if s]
    if not segments:
        return leaf
    root = _Prefix()
    node = root
    for segment in segments[:-1]:
        child = _Prefix()
        node.putChild(segment.encode("utf-8"), child)
        node = child
    node.putChild(segments[-1].encode("utf-8"), leaf)
    return root


def _set_no_delay(transport) -> None:
    setter = getattr(transport, "setTcpNoDelay", None)
    if setter is not None:
        try:
            setter(True)
        except OSError:  # a UNIX socket has no Nagle algorithm to turn off
            pass


class _NoDelayChannel(GuardedChannel):
    """A :class:`GuardedChannel` that turns Nagle's algorithm off before anything is written."""

    def connectionMade(self):  # noqa: N802 - Twisted API
        _set_no_delay(self.transport)
        super().connectionMade()


class GatewaySite(Site):
    """A Site that turns Nagle's algorithm off, logs requests only to ``--access-log`` (without
    tokens), and (with a :class:`jkg.web.guard.ConnectionGuard`) bounds connections, header
    time and body size."""

    noisy = False  # no "Starting factory <GatewaySite object at 0x...>" lines
    protocol = _NoDelayChannel
    requestFactory = GuardedRequest

    def __init__(self, resource, guard=None, access_log=None, **kwargs):
        super().__init__(resource, requestFactory=GuardedRequest, **kwargs)
        self.guard = guard  # a ConnectionGuard, or None: no limits (every GuardedRequest reads it)
        self.access_log = access_log

    def buildProtocol(self, addr):  # noqa: N802 - Twisted API
        guard = self.guard
        if guard is not None:
            refused = guard.admit(getattr(addr, "host", "local"))
            if refused is not None:
                return refused
        return super().buildProtocol(addr)

    def log(self, request):
        """Only with ``--access-log`` (:class:`jkg.logs.AccessLog` strips ``?token=``): a line
        per request costs more CPU than many requests themselves."""
        if self.access_log is not None:
            self.access_log.write(request)
