"""A warm pool: kernels started ahead of time and handed out on request.

Unlike jupyter-kernel-gateway's prespawned kernels (which never serve a
POST), pooled kernels answer ``POST /api/kernels`` at once and the pool
refills in the background.  Pooled kernels belong to nobody and count
against no quota until they are handed out; dead ones are dropped and
replaced.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.logger import Logger

log = Logger()

RETRY_DELAY = 5.0


class WarmPool:
    """Ready kernels per kernelspec name.

    :param sizes: how many ready kernels to keep per kernelspec.
    :param launch: ``launch(name)`` fires with a ready, seeded kernel.
    :param clock: an ``IReactorTime``.
    """

    def __init__(self, sizes: dict[str, int], launch: Callable[[str], Deferred], clock):
        self.sizes = dict(sizes)
        self._launch = launch
        self._clock = clock
        self.ready: dict[str, deque] = {name: deque() for name in sizes}
        self._starting: dict[str, int] = {name: 0 for name in sizes}
        self._inflight: set[Deferred] = set()
        self._retry = None
        self.stopped = False

    def take(self, name: str):
        """A ready kernel for ``name``, or ``None``; a refill starts either way."""
        queue = self.ready.get(name)
        kernel = None
        while queue:
            candidate = queue.popleft()
            if candidate.execution_state not in ("dead", "restarting"):
                kernel = candidate
                break
        self.refill()
        return kernel

    def refill(self) -> None:
        if self.stopped:
            return
        for name, size in self.sizes.items():
            while len(self.ready[name]) + self._starting[name] < size:
                self._start_one(name)

    def _start_one(self, name: str) -> None:
        self._starting[name] += 1
        d = self._launch(name)
        self._inflight.add(d)

        def started(kernel):
            if self.stopped:
                return kernel.launched.shutdown(now=True)
            self.ready[name].append(kernel)
            log.info("pooled kernel {id} ({name}) ready: {n}/{size}", id=kernel.id, name=name,
                     n=len(self.ready[name]), size=self.sizes[name])

        def failed(failure):
            log.error("could not start a pooled {name} kernel: {error}; retrying in {delay:g} s", name=name,
                      error=failure.getErrorMessage(), delay=RETRY_DELAY)
            if not self.stopped and (self._retry is None or not self._retry.active()):
                self._retry = self._clock.callLater(RETRY_DELAY, self.refill)

        def done(result):
            self._starting[name] -= 1
            self._inflight.discard(d)
            return result

        d.addCallbacks(started, failed).addBoth(done)

    def discard_dead(self, is_dead: Callable[[object], bool]) -> None:
        """Drop pooled kernels whose process died, then refill."""
        for queue in self.ready.values():
            for kernel in [k for k in queue if is_dead(k)]:
                queue.remove(kernel)
                kernel.channels.close()
        self.refill()

    def pooled(self) -> list:
        return [kernel for queue in self.ready.values() for kernel in queue]

    @inlineCallbacks
    def stop(self):
        """Stop refilling and shut every pooled kernel down (including ones still starting)."""
        self.stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        yield DeferredList(list(self._inflight), consumeErrors=True)
        kernels = self.pooled()
        for queue in self.ready.values():
            queue.clear()
        for kernel in kernels:
            kernel.channels.close()
        yield DeferredList([kernel.launched.shutdown(now=False) for kernel in kernels], consumeErrors=True)
