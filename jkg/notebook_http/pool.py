"""Which kernel serves which request: a pool that grows under load, bounded queues.

Policy only: kernels are made and destroyed by the ``spawn``/``retire``
functions passed in, time comes from the clock passed in, so the whole policy
is tested with ``task.Clock`` and fakes.

- At least ``min_size`` kernels are kept (``KG_PRESPAWN_COUNT``, at least 1).
- A request that finds no idle kernel waits in a FIFO queue and, while fewer
  than ``max_size`` kernels exist or are starting, makes the pool start one
  more -- so N concurrent slow requests are served by N kernels, not one
  after another as in the reference.
- The queue is bounded (``queue_limit``) and so is the wait
  (``queue_timeout``): beyond either the request gets 503 with Retry-After.
- A tenant holds at most ``limit`` kernels at once (its quota); its further
  requests wait while other tenants' requests are served.
- The most recently used idle kernel serves next (LIFO): under light load
  one warm kernel does the work, and the others really are idle, so kernels
  above ``min_size`` that stayed idle for ``idle_ttl`` are retired.
- :meth:`drain` stops taking requests, lets queued and running ones finish,
  then retires every kernel (notebook reloads, gateway stop).
"""
from __future__ import annotations

from collections import deque
from typing import Callable

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger

from ..errors import GatewayError, KernelLaunchError

log = Logger()


class PoolUnavailable(GatewayError):
    """No kernel could take the request in time: 503 with Retry-After."""

    status = 503
    reason = "Service Unavailable"

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.headers = {"Retry-After": str(max(1, int(retry_after)))}


class _Waiter:
    __slots__ = ("deferred", "tenant", "limit", "timer")

    def __init__(self, deferred, tenant, limit):
        self.deferred = deferred
        self.tenant = tenant
        self.limit = limit
        self.timer = None


class KernelPool:
    """Kernels lent to one request at a time.

    :param spawn: ``spawn()`` -> Deferred firing with a new ready runner.
    :param retire: ``retire(runner)`` -> Deferred firing once it is gone.

    A runner (a :class:`jkg.notebook_http.runner.KernelRunner`, or a test's
    fake) has two attributes the pool reads and writes: ``lost``, true once
    its kernel is gone, and ``tenant``, who holds it now.
    """

    def __init__(self, spawn: Callable[[], Deferred], retire: Callable[[object], Deferred], clock, *,
                 min_size: int = 1, max_size: int = 4, queue_limit: int = 100, queue_timeout: float = 30.0,
                 idle_ttl: float = 300.0, name: str = "notebook"):
        self._spawn = spawn
        self._retire = retire
        self._clock = clock
        self.min_size = max(1, min_size)
        self.max_size = max(self.min_size, max_size)
        self.queue_limit = queue_limit
        self.queue_timeout = queue_timeout
        self.idle_ttl = idle_ttl
        self.name = name
        self.idle: deque = deque()
        self.busy: set = set()
        self.starting = 0
        self.waiters: deque[_Waiter] = deque()
        self.held: dict = {}
        self.draining = False
        self.last_error: Exception | None = None
        self._idle_since: dict = {}
        self._retiring: list[Deferred] = []
        self._drained: Deferred | None = None
        self._first: list[Deferred] = []  # waiting for the first kernel to be ready (or to fail)
        self.ready_once = False

    @property
    def size(self) -> int:
        return len(self.idle) + len(self.busy) + self.starting

    def start(self) -> None:
        """Start the minimum number of kernels."""
        self._grow()

    def when_ready(self) -> Deferred:
        """Fires once a first kernel is ready; fails if starting kernels fails while none runs."""
        if self.ready_once:
            return succeed(None)
        d = Deferred()
        self._first.append(d)
        return d

    def _tell_first(self, error: Exception | None) -> None:
        first, self._first = self._first, []
        for d in first:
            if error is None:
                d.callback(None)
            else:
                d.errback(error)

    # -- lending -----------------------------------------------------------------
    def acquire(self, tenant=None, limit: int | None = None) -> Deferred:
        """A Deferred firing with a runner for ``tenant`` (errback :class:`PoolUnavailable`)."""
        if self.draining:
            raise PoolUnavailable(f"{self.name} is being replaced; retry", 1)
        if self.idle and self._may_hold(tenant, limit) and not self.waiters:
            return succeed(self._lend(self.idle.pop(), tenant))
        if len(self.waiters) >= self.queue_limit:
            raise PoolUnavailable(f"{self.name}: {len(self.waiters)} requests already wait for a kernel",
                                  self._retry_after())
        waiter = _Waiter(Deferred(lambda d: self._forget(waiter)), tenant, limit)
        if self.queue_timeout:
            waiter.timer = self._clock.callLater(self.queue_timeout, self._expire, waiter)
        self.waiters.append(waiter)
        self._grow()
        self._dispatch()
        return waiter.deferred

    def release(self, runner) -> None:
        """The request is done with ``runner``; it serves the next one (or waits idle)."""
        if runner not in self.busy:
            return
        self.busy.discard(runner)
        self._unhold(runner)
        if runner.lost:
            self._retire_one(runner)
            self._grow()
            self._check_drained()
            return
        self.idle.append(runner)
        self._idle_since[runner] = self._clock.seconds()
        self._dispatch()
        self._check_drained()

    def discard(self, runner, replace: bool = False) -> None:
        """Take ``runner`` out for good (lost, or hung past its interrupt) and retire it.

        With ``replace`` a new kernel takes its place even above the minimum
        (a hung kernel is replaced; idle ones are trimmed later).
        """
        was_busy = runner in self.busy
        self.busy.discard(runner)
        if was_busy:
            self._unhold(runner)
        try:
            self.idle.remove(runner)
        except ValueError:
            if not was_busy:
                return
        self._idle_since.pop(runner, None)
        self._retire_one(runner)
        if not self.draining:
            if replace and self.size < self.max_size:
                self._spawn_one()
            self._grow()
        self._check_drained()

    def lost(self, runner) -> None:
        """The kernel under ``runner`` went away; a busy one is discarded when its request ends."""
        if runner in self.busy:
            return
        self.discard(runner)

    # -- internals ---------------------------------------------------------------
    def _may_hold(self, tenant, limit) -> bool:
        return limit is None or self.held.get(tenant, 0) < limit

    def _lend(self, runner, tenant):
        self._idle_since.pop(runner, None)
        self.busy.add(runner)
        runner.tenant = tenant
        self.held[tenant] = self.held.get(tenant, 0) + 1
        return runner

    def _unhold(self, runner) -> None:
        count = self.held.get(runner.tenant, 0) - 1
        if count > 0:
            self.held[runner.tenant] = count
        else:
            self.held.pop(runner.tenant, None)

    def _dispatch(self) -> None:
        while self.idle and self.waiters:
            waiter = next((w for w in self.waiters if self._may_hold(w.tenant, w.limit)), None)
            if waiter is None:
                return
            self.waiters.remove(waiter)
            if waiter.timer is not None and waiter.timer.active():
                waiter.timer.cancel()
            waiter.deferred.callback(self._lend(self.idle.pop(), waiter.tenant))

    def _grow(self) -> None:
        if self.draining:
            return
        eligible = sum(1 for w in self.waiters if self._may_hold(w.tenant, w.limit))
        while self.size < self.max_size and (self.size < self.min_size or eligible > self.starting + len(self.idle)):
            if not self._spawn_one():
                return

    def _spawn_one(self) -> bool:
        self.starting += 1
        try:
            d = self._spawn()
        except Exception as error:  # noqa: BLE001 - e.g. the gateway's max_kernels reached
            self.starting -= 1
            self._spawn_failed(error)
            return False
        d.addCallbacks(self._spawned, self._failed)
        return True

    def _spawned(self, runner) -> None:
        self.starting -= 1
        self.last_error = None
        if self.draining or runner.lost:
            if not runner.lost:
                self._retire_one(runner)
            self._check_drained()
            return
        self.idle.append(runner)
        self._idle_since[runner] = self._clock.seconds()
        if not self.ready_once:
            self.ready_once = True
            self._tell_first(None)
        self._dispatch()

    def _failed(self, failure) -> None:
        self.starting -= 1
        self._spawn_failed(failure.value)

    def _spawn_failed(self, error: Exception) -> None:
        if str(error) != str(self.last_error):  # once per kind of failure, not once per waiting request
            log.error("{pool}: could not start a kernel: {error}", pool=self.name, error=error)
        self.last_error = error
        if self.size == 0:  # nothing will ever serve the queue: tell the waiters now
            self._tell_first(error)
            waiters, self.waiters = list(self.waiters), deque()
            for waiter in waiters:
                if waiter.timer is not None and waiter.timer.active():
                    waiter.timer.cancel()
                message = error.message if isinstance(error, GatewayError) else str(error)
                waiter.deferred.errback(KernelLaunchError(f"{self.name}: no kernel could be started: {message}"))
        self._check_drained()

    def _expire(self, waiter: _Waiter) -> None:
        if waiter in self.waiters:
            self.waiters.remove(waiter)
            waiter.deferred.errback(PoolUnavailable(
                f"{self.name}: no kernel became free within {self.queue_timeout:g} s", self._retry_after()))

    def _forget(self, waiter: _Waiter) -> None:
        if waiter in self.waiters:
            self.waiters.remove(waiter)
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()

    def _retry_after(self) -> int:
        return max(1, min(60, int(self.queue_timeout / 2) or 1))

    def _retire_one(self, runner) -> None:
        d = self._retire(runner)
        self._retiring.append(d)

        def done(result):
            self._retiring.remove(d)
            return None

        d.addBoth(done)

    # -- shrinking and draining ----------------------------------------------------
    def trim(self) -> None:
        """Retire kernels above the minimum that stayed idle longer than ``idle_ttl``."""
        now = self._clock.seconds()
        while len(self.idle) + len(self.busy) > self.min_size and self.idle:
            runner = self.idle[0]
            if now - self._idle_since.get(runner, now) < self.idle_ttl:
                return
            self.idle.popleft()
            self._idle_since.pop(runner, None)
            self._retire_one(runner)

    def drain(self) -> Deferred:
        """Take no more requests; fire once queued and running ones ended and every kernel is retired."""
        if self._drained is None:
            self.draining = True
            self._drained = Deferred()
            self._check_drained()
        return self._drained

    def _check_drained(self) -> None:
        if not self.draining or self._drained is None or self._drained.called:
            return
        if self.waiters and self.size:
            return
        for waiter in list(self.waiters):
            self.waiters.remove(waiter)
            if waiter.timer is not None and waiter.timer.active():
                waiter.timer.cancel()
            waiter.deferred.errback(PoolUnavailable(f"{self.name} was replaced; retry", 1))
        while self.idle:
            runner = self.idle.popleft()
            self._idle_since.pop(runner, None)
            self._retire_one(runner)
        if self.busy or self.starting:
            return
        drained = self._drained
        DeferredList(list(self._retiring), consumeErrors=True).addCallback(lambda _: drained.callback(None))
