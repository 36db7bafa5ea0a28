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


class SandboxPolicy:
    """The profile of each launch: gateway options, then the tenants file's ``[sandbox]`` table."""

    def __init__(self, base: SandboxProfile, table: Callable[[], SandboxTable | None] = lambda: None):
        self.base = base
        self._table = table

    def profile_for(self, owner: str | None, kernelspec: str) -> SandboxProfile:
        table = self._table()
        if table is None:
            return replace(self.base, owner=owner)
        return table.profile_for(self.base, owner, kernelspec)

    def poolable(self, profile: SandboxProfile, pooled: SandboxProfile) -> bool:
        """Whether a kernel pooled with ``pooled`` may serve a request for ``profile``."""
        return not profile.persist_workspace and replace(profile, owner=None) == replace(pooled, owner=None)
