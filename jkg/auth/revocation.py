"""Which open WebSockets lose their right to stay open when the tenants file changes.

A WebSocket is authenticated once, at the upgrade.  When a reload rotates a
token away or changes a password, connections opened with the old secret
must close too, or a revoked credential keeps working for as long as its
socket stays up.  Each connection remembers what it logged in with (never
the secret itself: the token's hash, or the password hash in force then).
"""
from __future__ import annotations

from twisted.cred.credentials import IUsernamePassword

from .credentials import ITokenCredentials
from .tenants import TenantTable, hash_token

#: WebSocket close code for a connection whose credentials a reload revoked
CLOSE_REVOKED = 4401


def credential_key(credentials, tenant_name: str, table: TenantTable | None) -> tuple | None:
    """What to compare at the next reload; ``None`` for credentials a reload cannot revoke.

    The shared ``--auth-token`` and anonymous access do not come from the
    tenants file, so they are never revoked by a reload.
    """
    if table is None or table.get(tenant_name) is None:
        return None
    if ITokenCredentials.providedBy(credentials):
        return ("token", hash_token(credentials.token))
    if IUsernamePassword.providedBy(credentials):
        return ("password", table.get(tenant_name).password)
    return None


def revoked(key: tuple | None, tenant_name: str, table: TenantTable) -> bool:
    """Whether a connection that logged in with ``key`` as ``tenant_name`` must close under ``table``."""
    if key is None:
        return False
    record = table.get(tenant_name)
    if record is None:
        return True
    kind, value = key
    if kind == "token":
        return value not in record.tokens
    return record.password is None or record.password != value
