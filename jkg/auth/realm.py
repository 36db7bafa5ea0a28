"""The realm: turns an authenticated avatar id into a :class:`Tenant`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from twisted.cred.checkers import ANONYMOUS
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from zope.interface import Attribute, Interface, implementer

from .checkers import DEFAULT_TENANT, GatewayChecker, OpenChecker
from .tenants import TenantTable


class ITenant(Interface):
    """Who is calling: kernel-side code receives this, never a credential.

    Everything the gateway reads of a tenant is declared here, so an avatar
    from another realm must have all of it (:class:`Tenant` is jkg's).
    """

    name = Attribute("The tenant's name: owner of its kernels, key of its quotas.")
    admin = Attribute("Whether it may see and manage every tenant's kernels.")
    named = Attribute("True for tenants from the tenants file (their kernels get KERNEL_USERNAME, their admins "
                      "see owners); False for the shared-token and anonymous ones.")
    max_kernels = Attribute("Most kernels it may hold at once; None: no limit of its own.")
    max_connections = Attribute("Most WebSockets it may have open at once; None: no limit of its own.")
    kernelspecs = Attribute("The kernelspec names it may start, a tuple; None: any.")
    sees_owners = Attribute("Whether listings show it who owns each kernel and session.")

    def may_use(owner):  # noqa: N805 - zope.interface methods take no self
        """Whether it may use a kernel or session owned by ``owner`` (a tenant name or None)."""

    def may_start(kernel_name):  # noqa: N805 - zope.interface methods take no self
        """Whether it may start kernelspec ``kernel_name``."""

    def default_kernel(gateway_default):  # noqa: N805 - zope.interface methods take no self
        """The kernelspec it gets when it names none."""


@implementer(ITenant)
@dataclass(frozen=True)
class Tenant:
    """A caller and its limits.

    ``named`` is true for tenants from the tenants file: their kernels get
    ``KERNEL_USERNAME`` set to the tenant name, and admins see owners.  The
    shared-token ``default`` tenant and the anonymous one (single-user,
    jupyter-kernel-gateway style) are admins that see every kernel.
    """

    name: str
    admin: bool = False
    max_kernels: int | None = None
    max_connections: int | None = None
    kernelspecs: tuple[str, ...] | None = None
    named: bool = False

    def may_use(self, owner: str | None) -> bool:
        return self.admin or owner == self.name

    def may_start(self, kernel_name: str) -> bool:
        return self.kernelspecs is None or kernel_name in self.kernelspecs

    @property
    def sees_owners(self) -> bool:
        """Whether listings show this tenant who owns each kernel and session (named admins)."""
        return self.admin and self.named

    def default_kernel(self, gateway_default: str) -> str:
        """The gateway's default, or this tenant's first allowed kernelspec if that is not allowed."""
        if self.may_start(gateway_default) or not self.kernelspecs:
            return gateway_default
        return self.kernelspecs[0]


ANONYMOUS_TENANT = Tenant("anonymous", admin=True)
DEFAULT = Tenant(DEFAULT_TENANT, admin=True)


@implementer(IRealm)
class GatewayRealm:
    def __init__(self, tenants: Callable[[], TenantTable | None]):
        self._tenants = tenants

    def requestAvatar(self, avatar_id, mind, *interfaces):  # noqa: N802 - twisted.cred API
        if ITenant not in interfaces:
            raise NotImplementedError("only ITenant avatars")
        return ITenant, self.tenant(avatar_id), lambda: None

    def tenant(self, avatar_id) -> Tenant:
        if avatar_id is ANONYMOUS:
            return ANONYMOUS_TENANT
        if avatar_id == DEFAULT_TENANT:
            return DEFAULT
        table = self._tenants()
        record = table.get(avatar_id) if table is not None else None
        if record is None:  # removed by a reload between check and login
            raise UnauthorizedLogin("no such tenant")
        return Tenant(record.name, record.admin, record.max_kernels, record.max_connections,
                      record.kernelspecs, named=True)


def make_portal(auth_token: str, tenants: Callable[[], TenantTable | None] = lambda: None,
                open_access: bool | None = None, hasher=None) -> Portal:
    """The gateway's portal: open when no credential of any kind is configured."""
    if open_access is None:
        open_access = not auth_token and tenants() is None
    checker = OpenChecker() if open_access else GatewayChecker(auth_token, tenants, hasher)
    return Portal(GatewayRealm(tenants), [checker])
