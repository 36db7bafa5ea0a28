"""Which kernels get which sandbox: the gateway's mode, and the profile of each launch.

``--sandbox auto`` means bwrap wherever it matters -- tenants configured or a
listener beyond loopback -- and refusing to start there when no sandbox can be
made (unless ``--sandbox none`` says so explicitly); on a single-user loopback
gateway ``auto`` leaves kernels unsandboxed and ``--sandbox bwrap`` turns it
on.  Pure apart from the :class:`~jkg.sandbox.host.HostSupport` handed in.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from ..config import ConfigError
from ..endpoints import is_loopback_endpoint
from .host import HostSupport
from .settings import SandboxProfile, SandboxTable
from .uids import assign_uids, parse_uid_range


def sandbox_expected(config) -> str:
    """Why a sandbox is needed here ("" when it is not)."""
    if config.tenants:
        return "tenants are configured"
    exposed = [e for e in config.endpoints if not is_loopback_endpoint(e)]
    return f"{exposed[0]} is not a loopback listener" if exposed else ""


def resolve_mode(config, host: HostSupport) -> str:
    """``bwrap`` or ``none`` for the gateway's default profile; ConfigError to refuse starting."""
    if config.sandbox == "none":
        return "none"
    if config.sandbox == "bwrap":
        if not host.available:
            raise ConfigError(f"--sandbox bwrap, but {host.problem}")
        return "bwrap"
    why = sandbox_expected(config)
    if not why:
        return "none"
    if not host.available:
        raise ConfigError(f"refusing to start: {why} but no kernel sandbox is available ({host.problem}); "
                          "install bubblewrap, or pass --sandbox none to run kernels unsandboxed")
    return "bwrap"


def kernel_uid_range(config, euid: int) -> tuple[int, int] | None:
    """``--kernel-uid-range`` validated for this gateway (only root can hand out uids)."""
    try:
        uid_range = parse_uid_range(config.kernel_uid_range)
    except ValueError as error:
        raise ConfigError(f"invalid value for --kernel-uid-range: {error}") from None
    if uid_range is not None and euid != 0:
        raise ConfigError("--kernel-uid-range needs jkg to run as root: an unprivileged gateway's kernels "
                          "keep its uid")
    return uid_range


class SandboxPolicy:
    """The profile of each launch: gateway options, then the tenants file's ``[sandbox]`` table.

    :param uid_range: ``--kernel-uid-range``: a tenant whose profile sets no uid gets one from it.
    :param tenant_names: every tenant of the tenants file (the range is shared out among them).
    """

    def __init__(self, base: SandboxProfile, table: Callable[[], SandboxTable | None] = lambda: None,
                 uid_range: tuple[int, int] | None = None, tenant_names: Callable[[], tuple] = tuple):
        self.base = base
        self._table = table
        self.uid_range = uid_range
        self._tenant_names = tenant_names
        self._assigned: tuple = ((), {})  # (key, {tenant: uid}) of the last assignment

    def profile_for(self, owner: str | None, kernelspec: str) -> SandboxProfile:
        table = self._table()
        profile = replace(self.base, owner=owner) if table is None else table.profile_for(self.base, owner, kernelspec)
        if self.uid_range is not None and owner and profile.uid is None:
            uid = self._range_uid(owner, table)
            profile = replace(profile, uid=uid, gid=uid)
        return profile

    def _range_uid(self, owner: str, table: SandboxTable | None) -> int:
        explicit = sorted({value for _, override in (table.tenants if table else ()) for key, value in override.values
                           if key == "uid"})
        key = (tuple(sorted({*self._tenant_names(), owner})), tuple(explicit))
        if self._assigned[0] != key:
            self._assigned = (key, assign_uids(key[0], self.uid_range, explicit))
        return self._assigned[1][owner]

    def poolable(self, profile: SandboxProfile, pooled: SandboxProfile) -> bool:
        """Whether a kernel pooled with ``pooled`` may serve a request for ``profile``."""
        return not profile.persist_workspace and replace(profile, owner=None) == replace(pooled, owner=None)
