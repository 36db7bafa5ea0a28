"""Authenticating an HTTP request through the gateway's ``twisted.cred`` portal.

One path for every HTTP surface (the kernels API and notebook endpoints):
the origin check, the failed-login lockout, credentials from the
``Authorization`` header or ``?token=``, the portal, and the audit line on
failure.  Callers only ever see the resulting tenant.
"""
from __future__ import annotations

from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.logger import Logger

from ..auth.credentials import credentials_from_request
from ..auth.realm import ITenant
from ..errors import TooManyRequests, Unauthorized
from .http import query_arg

audit = Logger(namespace="jkg.audit")


def peer(request) -> str:
    address = request.getClientAddress()
    return getattr(address, "host", str(address))


async def login(request, portal, limiter, cors):
    """The request's tenant, or raise :class:`Unauthorized` / :class:`TooManyRequests` / ``Forbidden``."""
    cors.check_origin(request)
    address = peer(request)
    retry_after = limiter.retry_after(address)
    if retry_after:
        raise TooManyRequests("too many failed logins from this address; try again later", retry_after)
    credentials = credentials_from_request(request.getHeader(b"authorization"), query_arg(request, b"token"))
    try:
        _, tenant, _ = await portal.login(credentials, None, ITenant)
    except (UnauthorizedLogin, UnhandledCredentials):
        limiter.failed(address)
        audit.info("login failed: address={address} path={path}", address=address,
                   path=request.path.decode("utf-8", "replace"))
        raise Unauthorized("invalid or missing credentials") from None
    return tenant
