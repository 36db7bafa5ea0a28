"""The registry's clocks: the crash watch, the culler and the heartbeat, each a Twisted ``TimerService``.

They are children of one ``MultiService`` (:func:`watch_services`) that the
registry starts and stops with itself.  Each acts only through the registry's
and the kernels' public methods: the registry decides what a restart or a
shutdown is, the kernel keeps its own state (``died``, ``seen_alive``,
``heard``, ``declare_dead``); the clocks only say when to look.
"""
from __future__ import annotations

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.logger import Logger

from .. import metrics
from ..errors import KernelLaunchError
from .lifecycle import CullPolicy
from .messages import utcnow

log = Logger()


class _EveryStep(TimerService):
    """A ``TimerService`` whose first call comes one step after it starts: a poll, not a check at boot."""

    def __init__(self, step: float, clock):
        super().__init__(step, self._tick)
        self.clock = clock
        self._first = True

    def startService(self) -> None:  # noqa: N802 - Twisted API
        self._first = True
        super().startService()

    def _tick(self):
        if self._first:
            self._first = False
            return None
        return self.tick()

    def tick(self) -> Deferred | None:
        raise NotImplementedError


class CrashWatch(_EveryStep):
    """Polls ``is_alive`` of every kernel; restarts the dead ones up to ``--restart-limit`` in a row."""

    name = "crash-watch"

    def __init__(self, registry, step: float, restart_limit: int, clock):
        super().__init__(step, clock)
        self.registry = registry
        self.restart_limit = restart_limit

    def tick(self) -> Deferred:
        registry = self.registry
        checks = [self._check(kernel) for kernel in list(registry.kernels.values())
                  if kernel.execution_state != "dead" and not registry.busy(kernel.id)]
        if registry.pool is not None:
            checks += [self._check_pooled(kernel) for kernel in registry.pool.pooled()]
        return DeferredList(checks, consumeErrors=True)

    @inlineCallbacks
    def _check_pooled(self, kernel):
        alive = yield kernel.launched.is_alive()
        if not alive:
            log.warn("pooled kernel {id} died; replacing it", id=kernel.id)
            self.registry.pool.discard_dead(lambda k: k is kernel)

    @inlineCallbacks
    def _check(self, kernel):
        registry = self.registry
        alive = yield kernel.launched.is_alive()
        if alive or kernel.id not in registry.kernels or registry.busy(kernel.id):
            if alive:
                kernel.seen_alive()
            return
        deaths = kernel.died()
        reason = kernel.launched.death_reason()
        if reason:  # final (a sandbox limit): no restart
            log.error("kernel {id} is dead: {reason}", id=kernel.id, reason=reason)
            kernel.declare_dead(reason=reason)
            return
        if not kernel.launched.can_restart:
            log.warn("kernel {id}, started outside jkg, died", id=kernel.id)
            kernel.declare_dead()
            return
        if deaths > self.restart_limit:
            log.error("kernel {id} died and exceeded its restart limit; it is dead", id=kernel.id)
            kernel.declare_dead()
            return
        log.warn("kernel {id} died; restarting ({n}/{limit})", id=kernel.id, n=deaths, limit=self.restart_limit)
        try:
            yield registry.restart_automatically(kernel)
        except KernelLaunchError:
            pass


class Culler(_EveryStep):
    """Shuts down kernels idle for longer than ``--cull-idle-timeout`` (jupyter_server's rules, :class:`CullPolicy`)."""

    name = "culler"

    def __init__(self, registry, step: float, policy: CullPolicy, clock):
        super().__init__(step, clock)
        self.registry = registry
        self.policy = policy

    def tick(self) -> Deferred:
        registry = self.registry
        now = utcnow()
        doomed = [kernel for kernel in registry.kernels.values()
                  if self.policy.should_cull(kernel.last_activity, now, len(kernel.clients), kernel.execution_state)
                  and not registry.busy(kernel.id)]
        for kernel in doomed:
            log.info("culling kernel {id}: inactive since {since}", id=kernel.id, since=kernel.last_activity)
            metrics.kernel_culled()
        return DeferredList([registry.shutdown(kernel.id) for kernel in doomed], consumeErrors=True)


class Heartbeat(_EveryStep):
    """Pings every kernel on its hb channel; three misses in a row mean dead (or hung).

    This catches what polling a process cannot: a kernel without a known
    process (bridged, remote) that died, and a live process that stopped
    answering.  A kernel that answers again comes back as idle
    (:meth:`~jkg.kernels.kernel.ManagedKernel.heard`).
    """

    name = "heartbeat"

    def __init__(self, registry, step: float, clock):
        super().__init__(step, clock)
        self.registry = registry

    def tick(self) -> Deferred:
        pings = []
        for kernel in list(self.registry.kernels.values()):
            if kernel.busy_with is not None or self.registry.busy(kernel.id) or kernel.channels.closed:
                continue
            pings.append(kernel.channels.ping(self.step).addCallback(kernel.heard))
        return DeferredList(pings, consumeErrors=True)


def watch_services(registry, config, clock) -> MultiService:
    """The clocks ``config`` asks for, as one ``MultiService``: the crash watch always, culler and heartbeat if set."""
    timers = MultiService()
    CrashWatch(registry, config.kernel_poll_interval, config.restart_limit, clock).setServiceParent(timers)
    policy = CullPolicy(config.cull_idle_timeout, config.cull_connected, config.cull_busy)
    if policy.enabled:
        Culler(registry, config.cull_interval, policy, clock).setServiceParent(timers)
    if config.heartbeat_interval:
        Heartbeat(registry, config.heartbeat_interval, clock).setServiceParent(timers)
    return timers
