"""The tenants file in force, reloaded on SIGHUP without dropping anyone else."""
from __future__ import annotations

import signal
from typing import Callable

from twisted.application.service import Service
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from .tenants import TenantsFileError, TenantTable, read_tenants

log = Logger(namespace="jkg.audit")


class TenantsService(Service):
    """Holds the current :class:`TenantTable`; SIGHUP re-reads the file.

    New tenants and rotated tokens work as soon as the new table is in
    place; changed quotas apply to later requests; ``on_reloaded`` gets the
    new table (to close WebSockets opened with revoked credentials).  Tenants missing from the
    new file are handed to ``on_removed`` (which closes their connections and
    shuts their kernels down).  A file that does not parse is rejected with a
    log line and the old table stays in force.

    :param path: the tenants file; read once here, at startup, so that a
        broken file stops the gateway before it listens.
    """

    name = "tenants"

    def __init__(self, path: str, reactor, on_removed: Callable[[set], None] = lambda names: None,
                 on_reloaded: Callable[[TenantTable], None] = lambda table: None):
        self.path = path
        self.table: TenantTable = read_tenants(path)
        self.on_removed = on_removed
        self.on_reloaded = on_reloaded
        self._reactor = reactor
        self._previous_handler = None

    def current(self) -> TenantTable:
        return self.table

    def reload(self):
        def loaded(table: TenantTable):
            removed = set(self.table.tenants) - set(table.tenants)
            self.table = table
            log.info("tenants reloaded from {path}: {n} tenant(s), removed {removed}", path=self.path,
                     n=len(table.tenants), removed=sorted(removed) or "none")
            if removed:
                self.on_removed(removed)
            self.on_reloaded(table)
            return table

        def rejected(failure):
            failure.trap(TenantsFileError)
            log.error("tenants file {path} rejected, keeping the previous one: {error}", path=self.path,
                      error=failure.value)

        return deferToThread(read_tenants, self.path).addCallbacks(loaded, rejected)

    def startService(self):  # noqa: N802 - Twisted API
        super().startService()
        self._previous_handler = signal.signal(
            signal.SIGHUP, lambda signum, frame: self._reactor.callFromThread(self.reload))

    def stopService(self):  # noqa: N802 - Twisted API
        if self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
            self._previous_handler = None
        return super().stopService()
