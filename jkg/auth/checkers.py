"""Credential checkers: tenant tokens and passwords, the shared token, or nobody's.

Checkers see credentials only, never a request; the realm turns the avatar id
they return into a :class:`jkg.auth.realm.Tenant`.  Every secret comparison
takes the same time whatever the guess, and no secret is ever logged.
"""
from __future__ import annotations

import hmac
from typing import Callable

from twisted.cred.checkers import ANONYMOUS, ICredentialsChecker
from twisted.cred.credentials import IAnonymous, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import fail, succeed
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from .credentials import ITokenCredentials
from .tenants import TenantTable

DEFAULT_TENANT = "default"


def _same(offered: str | bytes, expected: str | bytes) -> bool:
    if isinstance(offered, str):
        offered = offered.encode("utf-8")
    if isinstance(expected, str):
        expected = expected.encode("utf-8")
    return hmac.compare_digest(offered, expected)


def _check_bcrypt(password: bytes, stored: str) -> bool:
    import bcrypt  # imported lazily: only tenants with passwords need it

    return bcrypt.checkpw(password, stored.removeprefix("bcrypt:").encode("ascii"))


@implementer(ICredentialsChecker)
class GatewayChecker:
    """Tokens (``Authorization: token|Bearer``, ``?token=``) and HTTP Basic.

    :param shared_token: ``--auth-token`` (``KG_AUTH_TOKEN``), which logs in
        as the admin tenant ``default``; empty for none.
    :param tenants: returns the tenant table in force (it changes on SIGHUP),
        or ``None`` without a tenants file.
    """

    credentialInterfaces = (ITokenCredentials, IUsernamePassword)

    def __init__(self, shared_token: str, tenants: Callable[[], TenantTable | None]):
        self._shared_token = shared_token
        self._tenants = tenants

    def requestAvatarId(self, credentials):  # noqa: N802 - twisted.cred API
        table = self._tenants()
        if ITokenCredentials.providedBy(credentials):
            return self._check_token(credentials.token, table)
        return self._check_password(credentials.username, credentials.password, table)

    def _check_token(self, token: str, table: TenantTable | None):
        if self._shared_token and _same(token, self._shared_token):
            return succeed(DEFAULT_TENANT)
        record = table.by_token(token) if table is not None else None
        if record is not None:
            return succeed(record.name)
        return fail(UnauthorizedLogin("invalid token"))

    def _check_password(self, username: bytes, password: bytes, table: TenantTable | None):
        name = username.decode("utf-8", "replace")
        record = table.get(name) if table is not None else None
        if record is not None and record.password:
            def verdict(ok: bool):
                if ok:
                    return name
                raise UnauthorizedLogin("invalid password")

            return deferToThread(_check_bcrypt, password, record.password).addCallback(verdict)
        # jupyter_server's http_user/http_pwd can carry the shared token as the password
        if self._shared_token and _same(password, self._shared_token):
            return succeed(DEFAULT_TENANT)
        return fail(UnauthorizedLogin("invalid credentials"))


@implementer(ICredentialsChecker)
class OpenChecker:
    """No secret configured: everyone is the anonymous tenant, whatever they send."""

    credentialInterfaces = (IAnonymous, ITokenCredentials, IUsernamePassword)

    def requestAvatarId(self, credentials):  # noqa: N802 - twisted.cred API
        return succeed(ANONYMOUS)
