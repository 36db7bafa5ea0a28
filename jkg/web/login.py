"""Authenticating an HTTP request through the gateway's ``twisted.cred`` portal.

One path for every HTTP surface (the kernels API and notebook endpoints):
the origin check, the failed-login lockout, credentials from the
``Authorization`` header or ``?token=``, the portal, and the audit line on
failure.  Callers only ever see the resulting tenant.
"""
from __future__ import annotations

from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.logger import Logger

from .. import metrics
from ..auth.credentials import credentials_from_request
from ..auth.realm import ITenant
from ..errors import Forbidden, TooManyRequests, Unauthorized
from .http import host_allowed, query_arg

audit = Logger(namespace="jkg.audit")


def peer(request) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)  # str(address) only when needed: it costs more than the lookup
    return host if host is not None else str(address)


async def login(request, portal, limiter, cors, hosts: tuple[str, ...] | None = None):
    """The request's tenant, or raise :class:`Unauthorized` / :class:`TooManyRequests` / ``Forbidden``.

    :param hosts: without credentials configured, the ``--allowed-hosts``
        the ``Host`` header must name (DNS rebinding); ``None`` with credentials.
    """
    tenant, _ = await login_with_credentials(request, portal, limiter, cors, hosts)
    return tenant


async def login_with_credentials(request, portal, limiter, cors, hosts: tuple[str, ...] | None = None):
    """``(tenant, credentials)``: :func:`login`, and what the client logged in with.

    The WebSocket route keeps the credentials so that the connection can be
    closed when a reload revokes them (:mod:`jkg.auth.revocation`).  They are
    returned rather than set on the request: the request is Twisted's (or an
    embedder's), with no such attribute declared.
    """
    cors.check_origin(request)
    if hosts is not None and not host_allowed(request.getHeader(b"host"), hosts):
        raise Forbidden("Host header not allowed without credentials (--allowed-hosts)")
    address = peer(request)
    retry_after = limiter.retry_after(address)
    if retry_after:
        metrics.auth_locked_out()
        raise TooManyRequests("too many failed logins from this address; try again later", retry_after)
    credentials = credentials_from_request(request.getHeader(b"authorization"), query_arg(request, b"token"),
                                           address)
    finished = limiter.attempting(address)  # attempts in progress count toward the lockout
    try:
        _, tenant, _ = await portal.login(credentials, None, ITenant)
    except (UnauthorizedLogin, UnhandledCredentials):
        limiter.failed(address)
        metrics.auth_failed()
        audit.info("login failed: address={address} path={path}", address=address,
                   path=request.path.decode("utf-8", "replace"))
        raise Unauthorized("invalid or missing credentials") from None
    finally:
        finished()
    return tenant, credentials
