"""Kernels this gateway process did not start: reattached after a restart, or bridged.

:class:`ExternalKernel` offers the same operations as
:class:`jkg.kernels.launcher.LaunchedKernel`, working from a pid (when
known) and the kernel's own control channel instead of a ``Popen`` object:
liveness from the pid and its start time (so a reused pid is not mistaken
for the kernel), interrupt by signal or ``interrupt_request``, shutdown by
``shutdown_request`` then signals.  A kernel jkg does not own is only
detached on shutdown and cannot be restarted.
"""
from __future__ import annotations

import os
import signal
from typing import Callable

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from zope.interface import implementer

from ..errors import Conflict
from ..interfaces import ILaunchedKernel
from ..procfs import children, pid_alive

log = Logger()


@implementer(ILaunchedKernel)
class ExternalKernel:
    """A running kernel known by its connection info (and maybe its pid).

    :param owned: whether jkg may stop it; a bridged kernel without
        ``--own-existing`` is only detached.
    :param relaunch: ``relaunch()`` fires with a new LaunchedKernel started on
        the same connection info; without it, restart is refused (409).
    :param leftovers: a sandboxed kernel's recorded workspace, ipc directory and
        cgroups, removed once it is stopped.
    :param stderr: a :class:`~jkg.kernels.stderr.StderrTail` reading on the
        stderr pipe a previous gateway gave the kernel, or None.
    """

    def __init__(self, connection_info: dict, clock, pid: int | None = None, start_time: int | None = None,
                 interrupt_mode: str = "signal", owned: bool = True,
                 relaunch: Callable[[], Deferred] | None = None, leftovers: dict | None = None, stderr=None):
        self.leftovers = leftovers
        self._stderr = stderr
        self._connection_info = connection_info
        self._clock = clock
        self.pid = pid
        self.start_time = start_time
        self.interrupt_mode = interrupt_mode
        self.owned = owned
        self._relaunch = relaunch
        self._replacement = None
        self._kernel = None

    @property
    def can_restart(self) -> bool:
        return self._relaunch is not None or self._replacement is not None

    def stderr_tail(self) -> str:
        if self._replacement is not None:
            return self._replacement.stderr_tail()
        return self._stderr.tail() if self._stderr is not None else ""

    @property
    def stderr_inode(self) -> int | None:
        if self._replacement is not None:
            return self._replacement.stderr_inode
        return self._stderr.inode if self._stderr is not None else None

    def death_reason(self) -> str:
        return ""  # not known: a dead external kernel is restarted if it can be

    def record_info(self) -> Deferred:
        return succeed((self.pid, {}))

    def bind(self, kernel) -> None:
        """The :class:`ManagedKernel` whose channels carry control requests."""
        self._kernel = kernel

    @property
    def connection_info(self) -> dict:
        if self._replacement is not None:
            return self._replacement.connection_info
        return self._connection_info

    def is_alive(self) -> Deferred:
        if self._replacement is not None:
            return self._replacement.is_alive()
        if self.pid is None:
            return succeed(True)  # the heartbeat decides for kernels without a known pid
        return succeed(pid_alive(self.pid, self.start_time))

    def interrupt(self) -> Deferred:
        if self._replacement is not None:
            return self._replacement.interrupt()
        if self.pid is not None and self.interrupt_mode == "signal":
            self._signal(signal.SIGINT)
            return succeed(None)
        return self._kernel.request("interrupt_request", {}, 5, channel="control")

    def restart(self, now: bool = False) -> Deferred:
        if self._replacement is not None:
            return self._replacement.restart(now)
        if self._relaunch is None:
            raise Conflict("this kernel was started outside jkg and cannot be restarted by it")
        return self._restart(now)

    @inlineCallbacks
    def _restart(self, now: bool):
        yield self._stop(now)
        self._replacement = yield self._relaunch()

    def shutdown(self, now: bool = False) -> Deferred:
        if self._replacement is not None:
            return self._replacement.shutdown(now)
        if not self.owned:
            return succeed(None)  # detach: someone else runs this kernel
        return self._stop(now)

    @inlineCallbacks
    def _stop(self, now: bool):
        try:
            yield self._stop_process(now)
        finally:
            if self._stderr is not None:
                self._stderr.close()
            if self.leftovers is not None:
                from ..sandbox.provisioner import remove_recorded

                leftovers, self.leftovers = self.leftovers, None
                yield deferToThread(remove_recorded, leftovers)

    @inlineCallbacks
    def _stop_process(self, now: bool):
        if not now and self._kernel is not None:
            try:
                yield self._kernel.request("shutdown_request", {"restart": False}, 2, channel="control")
            except Exception:  # noqa: BLE001 - no answer: fall back to signals
                pass
        if self.pid is None:
            return
        for sig, grace in ((None, 0 if now else 3.0), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
            if sig is not None:
                self._signal(sig)
            waited = 0.0
            while pid_alive(self.pid, self.start_time) and waited < grace:
                yield deferLater(self._clock, 0.05, lambda: None)
                waited += 0.05
            if not pid_alive(self.pid, self.start_time):
                return
        log.warn("kernel process {pid} did not exit", pid=self.pid)

    def _signal(self, signum: int) -> None:
        if self.pid is None or not pid_alive(self.pid, self.start_time):
            return
        if signum == signal.SIGKILL:
            _kill_children(self.pid)  # a sandbox's PID 1: its death ends everything inside
        try:
            if os.getpgid(self.pid) == self.pid:  # jupyter_client starts kernels in their own group
                os.killpg(self.pid, signum)
            else:
                os.kill(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _kill_children(pid: int) -> None:
    for child in children(pid):
        try:
            os.kill(child, signal.SIGKILL)
        except OSError:
            pass
