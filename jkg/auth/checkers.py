"""Credential checkers: the gateway's token, or nobody's when none is set."""
from __future__ import annotations

import hmac

from twisted.cred.checkers import ANONYMOUS, ICredentialsChecker
from twisted.cred.credentials import IAnonymous, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import fail, succeed
from zope.interface import implementer

from .credentials import ITokenCredentials


@implementer(ICredentialsChecker)
class SharedTokenChecker:
    """One shared token naming one tenant (``--auth-token``, ``KG_AUTH_TOKEN``).

    The comparison takes the same time whatever the token, so a client cannot
    guess it byte by byte; the token is never logged.  HTTP Basic is accepted
    with the token as password (any user name), since that is the only secret
    jupyter_server's ``http_user``/``http_pwd`` settings can carry.
    """

    credentialInterfaces = (ITokenCredentials, IUsernamePassword)

    def __init__(self, token: str, tenant: str = "default"):
        self._token = token.encode("utf-8")
        self._tenant = tenant

    def requestAvatarId(self, credentials):  # noqa: N802 - twisted.cred API
        if ITokenCredentials.providedBy(credentials):
            offered = credentials.token.encode("utf-8")
        else:
            offered = credentials.password
        if hmac.compare_digest(offered, self._token):
            return succeed(self._tenant)
        return fail(UnauthorizedLogin("invalid credentials"))


@implementer(ICredentialsChecker)
class OpenChecker:
    """No secret configured: everyone is the anonymous tenant, whatever they send."""

    credentialInterfaces = (IAnonymous, ITokenCredentials, IUsernamePassword)

    def requestAvatarId(self, credentials):  # noqa: N802 - twisted.cred API
        return succeed(ANONYMOUS)
