"""Quotas and the default kernel: the gateway's admission policy, in one room.

Every limit on what a caller may have -- kernels in the gateway
(``--max-kernels``), kernels and WebSocket connections per tenant (the
tenants file) -- and the rule that picks the kernel a request without a name
gets, are decided here and nowhere else; the registry, the REST API and the
test fakes ask.  Counting is the caller's: these functions are pure, so that
admission stays synchronous (checked and taken before the first yield).
"""
from __future__ import annotations

from ..errors import ResourceLimit


def default_kernel_name(config, specs_default: str, tenant=None) -> str:
    """The kernel a start without a name gets (and that ``GET /api/kernelspecs`` names default).

    ``--force-kernel-name`` wins; then ``--default-kernel-name`` or the
    kernelspecs' own default, which a tenant limited to other kernelspecs
    replaces with its first allowed one.
    """
    if config.force_kernel_name:
        return config.force_kernel_name
    default = config.default_kernel_name or specs_default
    return tenant.default_kernel(default) if tenant is not None else default


def kernel_to_start(config, requested: str | None, specs_default: str, tenant=None) -> str:
    """The kernel a start asking for ``requested`` (maybe nothing) launches."""
    if config.force_kernel_name:
        return config.force_kernel_name
    return requested or default_kernel_name(config, specs_default, tenant)


def check_kernel_quota(max_kernels: int | None, total: int, tenant=None, owned: int = 0) -> None:
    """Refuse one more kernel when the gateway (``total``) or the tenant (``owned``) is at its limit.

    ``total`` and ``owned`` count the kernels running and being started.

    :raises ResourceLimit: with the limit that was reached.
    """
    if max_kernels is not None and total >= max_kernels:
        raise ResourceLimit(f"Maximum number of kernels ({max_kernels}) reached")
    if tenant is not None and tenant.max_kernels is not None and owned >= tenant.max_kernels:
        raise ResourceLimit(f"tenant {tenant.name} reached its limit of {tenant.max_kernels} kernels")


class ConnectionCounter:
    """Open WebSockets per tenant, so ``max_connections`` is checked before the upgrade.

    A place is reserved when the upgrade is accepted and released when that
    connection is lost, whatever happened in between, so the count cannot
    drift and concurrent upgrades cannot overshoot the limit.
    """

    def __init__(self):
        self.open: dict[str, int] = {}
        #: tenant name -> its open WebSockets (jkg.web.channels.ChannelsProtocol: ``tenant``, ``credential``)
        self.protocols: dict[str, set] = {}

    def reserve(self, tenant: str, limit: int | None):
        if limit is not None and self.open.get(tenant, 0) >= limit:
            raise ResourceLimit(f"tenant {tenant} reached its limit of {limit} connections")
        self.open[tenant] = self.open.get(tenant, 0) + 1
        released = []

        def release() -> None:
            if not released:
                released.append(True)
                self.open[tenant] -= 1
                if not self.open[tenant]:
                    del self.open[tenant]

        return release

    def close_tenant(self, tenant: str, reason: str) -> None:
        """Close every connection of a tenant (removed from the tenants file)."""
        for protocol in list(self.protocols.get(tenant, ())):
            protocol.disconnect(1000, reason)
            protocol.dropConnection(abort=False)
