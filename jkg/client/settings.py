"""Where the gateway is and how to talk to it: one frozen object, from arguments or env.

Tools such as nbclient construct the kernel manager themselves (with only a
kernel name and a traitlets config), so every setting must also be reachable
through environment variables; explicit arguments win over the environment.
TLS certificates are verified unless explicitly turned off, because a token
sent to an impostor is a token given away.
"""
from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping
from urllib.parse import quote, urlsplit, urlunsplit

from .errors import GatewayClientError

__all__ = ["GatewaySettings", "ENV_PREFIX"]

ENV_PREFIX = "JKG_GATEWAY_"
_FALSE = {"0", "false", "no", "off"}


def _bool(value: str) -> bool:
    return value.strip().lower() not in _FALSE


def _headers(value: str) -> dict:
    try:
        headers = json.loads(value)
    except ValueError:
        raise GatewayClientError(f"{ENV_PREFIX}HEADERS must be a JSON object, got {value[:80]!r}") from None
    if not isinstance(headers, dict):
        raise GatewayClientError(f"{ENV_PREFIX}HEADERS must be a JSON object, got {value[:80]!r}")
    return {str(k): str(v) for k, v in headers.items()}


@dataclass(frozen=True)
class GatewaySettings:
    """Connection settings shared by a manager and its clients.

    Environment variables are ``JKG_GATEWAY_`` + the upper-cased field name
    (``JKG_GATEWAY_URL``, ``JKG_GATEWAY_TOKEN``, ``JKG_GATEWAY_USER``,
    ``JKG_GATEWAY_PASSWORD``, ``JKG_GATEWAY_VALIDATE_CERT``, ...).
    """

    url: str = ""
    ws_url: str = ""  # derived from url (http -> ws) when empty
    token: str = ""
    auth_scheme: str = "token"  # "Authorization: <scheme> <token>"
    user: str = ""  # HTTP Basic, used when no token is set
    password: str = ""
    headers: dict = field(default_factory=dict)
    validate_cert: bool = True
    ca_certs: str = ""
    client_cert: str = ""
    client_key: str = ""
    connect_timeout: float = 20.0
    request_timeout: float = 120.0  # a POST /api/kernels waits for the kernel to start
    ws_protocol: str = "auto"  # "auto": offer v1 and use what the server selects; "legacy": offer nothing
    retry_max: int = 5  # WebSocket reconnection attempts after a drop
    retry_interval: float = 0.5  # first reconnection delay, doubled each attempt (capped at 10 s)
    ping_interval: float = 30.0  # WebSocket keep-alive pings; 0 disables
    liveness_interval: float = 5.0  # while someone waits in silence, ask REST if the kernel still exists; 0: never

    _PARSERS = {"validate_cert": _bool, "headers": _headers, "connect_timeout": float,
                "request_timeout": float, "retry_max": int, "retry_interval": float, "ping_interval": float,
                "liveness_interval": float}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "GatewaySettings":
        """Settings from ``JKG_GATEWAY_*`` variables; ``overrides`` that are not ``None`` win.

        :raises GatewayClientError: no URL at all, or a value that does not parse.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for item in fields(cls):
            raw = environ.get(ENV_PREFIX + item.name.upper())
            if raw is None or raw == "":
                continue
            parse = cls._PARSERS.get(item.name, str)
            try:
                values[item.name] = parse(raw)
            except ValueError:
                raise GatewayClientError(f"{ENV_PREFIX}{item.name.upper()}={raw[:80]!r} is not valid") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def __post_init__(self) -> None:
        """Normalize the URLs; raise :class:`GatewayClientError` if they cannot work."""
        if not self.url:
            raise GatewayClientError(f"no gateway URL: pass url=... or set {ENV_PREFIX}URL")
        url = self.url.rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise GatewayClientError(f"the gateway URL must be http(s)://host[:port][/base], got {self.url!r}")
        ws_url = (self.ws_url or urlunsplit((
            "wss" if parts.scheme == "https" else "ws", parts.netloc, parts.path, "", ""))).rstrip("/")
        if urlsplit(ws_url).scheme not in ("ws", "wss"):
            raise GatewayClientError(f"the gateway WebSocket URL must be ws(s)://..., got {ws_url!r}")
        if self.ws_protocol not in ("auto", "legacy"):
            raise GatewayClientError(f"ws_protocol must be 'auto' or 'legacy', got {self.ws_protocol!r}")
        object.__setattr__(self, "url", url)  # frozen: normalized once, here
        object.__setattr__(self, "ws_url", ws_url)

    # -- what requests carry ---------------------------------------------------------
    def auth_headers(self) -> dict[str, str]:
        """Headers for every request, REST and WebSocket handshake alike."""
        headers = dict(self.headers)
        if self.token:
            headers["Authorization"] = f"{self.auth_scheme} {self.token}".strip()
        elif self.user:
            raw = f"{self.user}:{self.password}".encode("utf-8")
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")
        return headers

    def tls_options(self) -> dict[str, Any]:
        """Keyword arguments for tornado's ``HTTPRequest``."""
        options: dict[str, Any] = {"validate_cert": self.validate_cert}
        if self.ca_certs:
            options["ca_certs"] = self.ca_certs
        if self.client_cert:
            options["client_cert"] = self.client_cert
        if self.client_key:
            options["client_key"] = self.client_key
        return options

    def kernel_url(self, kernel_id: str = "", suffix: str = "") -> str:
        path = "/api/kernels" + (f"/{quote(kernel_id, safe='')}" if kernel_id else "") + suffix
        return self.url + path

    def channels_url(self, kernel_id: str, session_id: str) -> str:
        return f"{self.ws_url}/api/kernels/{quote(kernel_id, safe='')}/channels?session_id={quote(session_id, safe='')}"

    def __repr__(self) -> str:  # never print secrets
        return f"GatewaySettings(url={self.url!r}, auth={'token' if self.token else 'basic' if self.user else 'none'})"
