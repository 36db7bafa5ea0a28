"""Small HTTP helpers shared by the REST routes: JSON bodies, errors, CORS.

CORS headers are applied to every response *before* the route runs, so error
responses carry them too (jupyter-kernel-gateway loses them on errors, which
turns every 404 into an opaque network error in a browser), and a preflight
``OPTIONS`` is answered without credentials, since browsers never send any.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..errors import BadRequest, Forbidden, GatewayError

MAX_BODY = 1024 * 1024


def write_json(request, body: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(body).encode("utf-8")


def write_error(request, error: GatewayError) -> bytes:
    for name, value in getattr(error, "headers", {}).items():
        request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
    return write_json(request, {"reason": error.reason, "message": error.message}, error.status)


def read_json_body(request) -> dict:
    """The request body as a JSON object; empty means ``{}``.

    :raises BadRequest: for a body that is too large, not JSON, or not an object.
    """
    raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
    if len(raw) > MAX_BODY:
        raise BadRequest("request body too large")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deeply
        raise BadRequest("Invalid JSON in body of request") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def query_arg(request, name: bytes) -> bytes | None:
    values = (request.args or {}).get(name)
    return values[0] if values else None


def host_allowed(host_header: bytes | None, allowed: tuple[str, ...]) -> bool:
    """Whether a ``Host`` header names this server, as jupyter_server's ``local_hostnames`` rule decides.

    A DNS-rebinding page reaches a loopback gateway under the attacker's own
    host name, so only names in ``allowed`` pass; IP addresses always pass
    (rebinding needs a name), and so does a request without ``Host``
    (HTTP/1.0 scripts; browsers always send one).
    """
    if "*" in allowed or not host_header:
        return True
    host = host_header.decode("latin-1").strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host.rstrip(".") in allowed


@dataclass(frozen=True)
class CorsPolicy:
    """The ``Access-Control-*`` answer configured by ``--allow-*`` options."""

    allow_origin: str = ""
    allow_headers: str = ""
    allow_methods: str = ""
    allow_credentials: str = ""
    expose_headers: str = ""
    max_age: str = ""
    allowed_hosts: tuple[str, ...] = ("localhost",)

    def apply(self, request, preflight: bool = False) -> None:
        if self.allow_origin:
            value = self._allowed_origin(request.getHeader(b"origin"))
            if value:
                request.setHeader(b"Access-Control-Allow-Origin", value.encode("latin-1"))
            if value != "*":
                request.setHeader(b"Vary", b"Origin")
        if self.allow_credentials:
            request.setHeader(b"Access-Control-Allow-Credentials", self.allow_credentials.encode("latin-1"))
        if self.expose_headers:
            request.setHeader(b"Access-Control-Expose-Headers", self.expose_headers.encode("latin-1"))
        if preflight:
            if self.allow_headers:
                request.setHeader(b"Access-Control-Allow-Headers", self.allow_headers.encode("latin-1"))
            if self.allow_methods:
                request.setHeader(b"Access-Control-Allow-Methods", self.allow_methods.encode("latin-1"))
            if self.max_age:
                request.setHeader(b"Access-Control-Max-Age", self.max_age.encode("latin-1"))

    def _allowed_origin(self, origin: bytes | None) -> str:
        """``*``, the single configured origin, or the request's origin if it is in the list."""
        allowed = [o.strip() for o in self.allow_origin.split(",") if o.strip()]
        if self.allow_origin == "*" or len(allowed) == 1:
            return self.allow_origin.strip()
        text = origin.decode("latin-1") if origin else ""
        return text if text in allowed else ""

    def check_origin(self, request) -> None:
        """Refuse a cross-origin request the policy does not allow.

        Without this, any web page a user visits could drive an
        unauthenticated loopback gateway through the user's browser.
        Requests without ``Origin`` (scripts, servers) are not affected.
        """
        origin = request.getHeader(b"origin")
        if not origin or self.allow_origin == "*":
            return
        origin_text = origin.decode("latin-1")
        if origin_text in [o.strip() for o in self.allow_origin.split(",") if o.strip()]:
            return
        host = request.getHeader(b"host") or b""
        if urlsplit(origin_text).netloc.lower() == host.decode("latin-1").lower() and \
                host_allowed(host, self.allowed_hosts):
            return
        raise Forbidden(f"cross-origin request from {origin_text} is not allowed")
