"""The realm: turns an authenticated avatar id into a :class:`Tenant`."""
from __future__ import annotations

from dataclasses import dataclass

from twisted.cred.checkers import ANONYMOUS
from twisted.cred.portal import IRealm, Portal
from zope.interface import Interface, implementer

from .checkers import OpenChecker, SharedTokenChecker


class ITenant(Interface):
    """Who is calling: kernel-side code receives this, never a credential."""


@implementer(ITenant)
@dataclass(frozen=True)
class Tenant:
    name: str
    admin: bool = False
    max_kernels: int | None = None


@implementer(IRealm)
class GatewayRealm:
    """One shared-token tenant (``default``) or anonymous; both see every kernel."""

    def requestAvatar(self, avatar_id, mind, *interfaces):  # noqa: N802 - twisted.cred API
        if ITenant not in interfaces:
            raise NotImplementedError("only ITenant avatars")
        name = "anonymous" if avatar_id is ANONYMOUS else avatar_id
        return ITenant, Tenant(name=name, admin=True), lambda: None


def make_portal(auth_token: str) -> Portal:
    checker = SharedTokenChecker(auth_token) if auth_token else OpenChecker()
    return Portal(GatewayRealm(), [checker])
