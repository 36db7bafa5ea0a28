"""The registry's persistence: kernel records saved, forgotten, and reattached by the next gateway.

:class:`KernelRecords` is mixed into :class:`~jkg.kernels.registry.KernelRegistry`
(it uses the registry's ``store``, ``launcher``, ``kernels`` and locks); it is
kept apart because it is one job: what a later gateway needs to find the
kernels that outlived this one (``--keep-kernels-on-exit``), and adopting them
(pid checked together with its start time) or forgetting them.
"""
from __future__ import annotations

from twisted.internet.defer import DeferredLock, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from ..errors import KernelLaunchError, UnknownKernelSpec
from ..procfs import pid_alive, process_start_time
from .adopt import adopt_through_provisioner
from .external import ExternalKernel
from .kernel import ManagedKernel
from .messages import isoformat
from .runtime import remove_connection_file, remove_stale_files
from .stderr import StderrTail, reopen_kernel_output
from .store import KernelRecord

log = Logger()


class KernelRecords:
    """Saving, forgetting and reattaching kernel records (part of the registry)."""

    @inlineCallbacks
    def _persist(self, kernel: ManagedKernel):
        """Record the kernel so that a later gateway can reattach to it (never fails the caller)."""
        if self.store is None:
            return
        try:
            pid, provisioner_info = yield kernel.launched.record_info()
            yield self.store.save(KernelRecord(
                id=kernel.id, name=kernel.name, owner=kernel.owner, connection_info=kernel.launched.connection_info,
                pid=pid, start_time=process_start_time(pid) if pid else None, provisioner_info=provisioner_info,
                env=kernel.env, language=kernel.language, created=isoformat(kernel.created),
                last_activity=isoformat(kernel.last_activity),
                stderr_inode=getattr(kernel.launched, "stderr_inode", None)))
        except Exception:  # noqa: BLE001
            log.failure("could not record kernel {id}", id=kernel.id)

    @inlineCallbacks
    def _forget(self, kernel_id: str, launched_here: bool = True):
        """Drop the kernel's record and (for kernels jkg launched) its connection file."""
        if launched_here:
            yield deferToThread(remove_connection_file, kernel_id)
        if self.store is not None:
            try:
                yield self.store.delete(kernel_id)
            except Exception:  # noqa: BLE001
                log.failure("could not delete the record of kernel {id}", id=kernel_id)

    @inlineCallbacks
    def reattach_all(self):
        """Adopt every recorded kernel whose process still runs; forget the others."""
        records = yield self.store.load_all() if self.store is not None else []
        for record in records:
            try:
                yield self._reattach(record)
            except Exception:  # noqa: BLE001
                log.failure("could not reattach kernel {id}", id=record.id)
                yield self._forget(record.id)
        removed = yield deferToThread(remove_stale_files, set(self.kernels))
        if removed:
            log.info("removed {n} stale connection file(s) of a previous gateway", n=len(removed))

    @inlineCallbacks
    def _reattach(self, record: KernelRecord):
        if record.id in self.kernels:
            return
        if record.pid is None and record.provisioner_info:  # a kernel on an engine: its provisioner knows
            yield self._reattach_through_provisioner(record)
            return
        if record.pid is None or not pid_alive(record.pid, record.start_time):
            log.info("forgetting kernel {id}: its process is gone", id=record.id)
            yield self._forget(record.id)
            return
        try:
            spec = yield self.launcher.specs.get(record.name)
        except UnknownKernelSpec:
            spec = {}
        sandboxed = "sandbox" in (record.provisioner_info or {})
        profile = self.sandbox.profile_for(record.owner, record.name) if self.sandbox is not None else None
        launched = ExternalKernel(
            record.connection_info, self._clock, record.pid, record.start_time,
            interrupt_mode="message" if sandboxed else spec.get("interrupt_mode", "signal"), owned=True,
            relaunch=lambda: self.launcher.relaunch(record.id, record.name, record.env, record.connection_info,
                                                    sandbox=profile),
            leftovers=record.provisioner_info.get("sandbox") if sandboxed else None,
            stderr=self._read_stderr_again(record))
        kernel = ManagedKernel(record.id, record.name, launched, self._connect, self._clock,
                               self.config.replay_buffer_limit)
        launched.bind(kernel)
        kernel.owner, kernel.language, kernel.env = record.owner, record.language, record.env
        try:
            yield kernel.wait_ready(10, channel="control")
            kernel.became_ready()
        except KernelLaunchError:
            log.warn("reattached kernel {id} does not answer yet; listing it as busy", id=record.id)
            kernel.unresponsive()
        self.kernels[kernel.id] = kernel
        self._locks[kernel.id] = DeferredLock()
        log.info("reattached kernel {id} ({name}, pid {pid})", id=kernel.id, name=kernel.name, pid=record.pid)

    def _read_stderr_again(self, record: KernelRecord):
        """Read on the stderr pipe the previous gateway gave the kernel (else it fills and blocks the kernel)."""
        reactor = getattr(self.launcher, "reactor", None)
        if not record.stderr_inode or reactor is None:
            return None
        reader = reopen_kernel_output(record.pid, record.stderr_inode)
        if reader is None:
            log.warn("kernel {id}: its stderr pipe was not found; its stderr is not read", id=record.id)
            return None
        return StderrTail(reactor, reader)

    @inlineCallbacks
    def _reattach_through_provisioner(self, record: KernelRecord):
        kernel = yield adopt_through_provisioner(self.launcher, record, self._connect, self._clock,
                                                 self.config.replay_buffer_limit)
        if kernel is None:
            yield self._forget(record.id)
            return
        self.kernels[kernel.id] = kernel
        self._locks[kernel.id] = DeferredLock()
