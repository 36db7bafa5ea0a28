"""Turning what an HTTP request carries into ``twisted.cred`` credentials.

Jupyter clients present a token as ``Authorization: token T`` (jupyter_server,
@jupyterlab/services), ``Authorization: Bearer T``, or ``?token=T`` (browsers
cannot set headers on a WebSocket); jupyter_server can also send HTTP Basic.
Parsing is kept apart from checking, so the checkers never see a request.
"""
from __future__ import annotations

import base64
import binascii

from twisted.cred.credentials import Anonymous, ICredentials, UsernamePassword
from zope.interface import implementer


class ITokenCredentials(ICredentials):
    """A bearer token."""


@implementer(ITokenCredentials)
class TokenCredentials:
    def __init__(self, token: str):
        self.token = token

    def __repr__(self) -> str:  # never show the secret in logs
        return "<TokenCredentials>"


class AddressedPassword(UsernamePassword):
    """HTTP Basic credentials with the client address, for per-address limits on checking them."""

    def __init__(self, username: bytes, password: bytes, address: str = ""):
        super().__init__(username, password)
        self.address = address

    def __repr__(self) -> str:  # never show the secret in logs
        return "<AddressedPassword>"


def credentials_from_request(authorization: bytes | None, query_token: bytes | None,
                             address: str = "") -> ICredentials:
    """Credentials from the ``Authorization`` header and the ``token`` query argument.

    An empty ``Authorization: token `` (what jupyter_server's gateway client
    sends when it has no token) counts as no credentials at all.
    """
    if authorization:
        scheme, _, value = authorization.decode("latin-1").strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme in ("token", "bearer") and value:
            return TokenCredentials(value)
        if scheme == "basic" and value:
            try:
                user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return Anonymous()
            return AddressedPassword(user.encode("utf-8"), password.encode("utf-8"), address)
    if query_token:
        return TokenCredentials(query_token.decode("utf-8", "replace"))
    return Anonymous()
