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
from zope.interface import implementer

from .credentials import ITokenCredentials
from .hashing import MAX_PASSWORD_BYTES, PasswordHasher, bcrypt_cost
from .tenants import TenantTable

DEFAULT_TENANT = "default"


def _same(offered: str | bytes, expected: str | bytes) -> bool:
    if isinstance(offered, str):
        offered = offered.encode("utf-8")
    if isinstance(expected, str):
        expected = expected.encode("utf-8")
    return hmac.compare_digest(offered, expected)


@implementer(ICredentialsChecker)
class GatewayChecker:
    """Tokens (``Authorization: token|Bearer``, ``?token=``) and HTTP Basic.

    :param shared_token: ``--auth-token`` (``KG_AUTH_TOKEN``), which logs in
        as the admin tenant ``default``; empty for none.
    :param tenants: returns the tenant table in force (it changes on SIGHUP),
        or ``None`` without a tenants file.
    :param hasher: runs the bcrypt checks (its own bounded thread pool).
    """

    credentialInterfaces = (ITokenCredentials, IUsernamePassword)

    def __init__(self, shared_token: str, tenants: Callable[[], TenantTable | None],
                 hasher: PasswordHasher | None = None):
        self._shared_token = shared_token
        self._tenants = tenants
        if hasher is None:
            from twisted.internet import reactor  # the one already installed: called after startup

            hasher = PasswordHasher(reactor)
        self._hasher = hasher

    def requestAvatarId(self, credentials):  # noqa: N802 - twisted.cred API
        table = self._tenants()
        if ITokenCredentials.providedBy(credentials):
            return self._check_token(credentials.token, table)
        return self._check_password(credentials.username, credentials.password, table,
                                    getattr(credentials, "address", ""))

    def _check_token(self, token: str, table: TenantTable | None):
        if self._shared_token and _same(token, self._shared_token):
            return succeed(DEFAULT_TENANT)
        record = table.by_token(token) if table is not None else None
        if record is not None:
            return succeed(record.name)
        return fail(UnauthorizedLogin("invalid token"))

    def _check_password(self, username: bytes, password: bytes, table: TenantTable | None, address: str):
        # jupyter_server's http_user/http_pwd can carry the shared token as the password
        if self._shared_token and _same(password, self._shared_token):
            return succeed(DEFAULT_TENANT)
        if len(password) > MAX_PASSWORD_BYTES:  # bcrypt would ignore the rest (or refuse it)
            return fail(UnauthorizedLogin("password too long"))
        if table is None:
            return fail(UnauthorizedLogin("invalid credentials"))
        name = username.decode("utf-8", "replace")
        record = table.get(name)
        stored = record.password if record is not None else None
        cost = bcrypt_cost(stored or next((r.password for r in table.tenants.values() if r.password), ""))

        def verdict(ok: bool):
            if ok:
                return name
            raise UnauthorizedLogin("invalid password")

        try:  # unknown names cost a dummy check, so timing does not reveal which names exist
            return self._hasher.check(password, stored, address, name, cost).addCallback(verdict)
        except Exception as refused:  # noqa: BLE001 - TooManyRequests travels through the portal's Deferred
            return fail(refused)


@implementer(ICredentialsChecker)
class OpenChecker:
    """No secret configured: everyone is the anonymous tenant, whatever they send."""

    credentialInterfaces = (IAnonymous, ITokenCredentials, IUsernamePassword)

    def requestAvatarId(self, credentials):  # noqa: N802 - twisted.cred API
        return succeed(ANONYMOUS)
