"""The engine loop: coroutines of blocking provisioners run off the reactor, results come back as Deferreds."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from jkg.kernels.engine_loop import EngineLoop


@pytest.fixture
def engine_loop():
    loop = EngineLoop(reactor)
    yield loop
    loop.stop()


@pytest_twisted.inlineCallbacks
def test_results_errors_and_the_thread(engine_loop):
    async def where():
        await asyncio.sleep(0)
        return threading.current_thread().name

    assert (yield engine_loop.run(where)) == "jkg-engines"

    async def fails():
        raise ValueError("engine said no")

    with pytest.raises(ValueError, match="engine said no"):
        yield engine_loop.run(fails)


@pytest_twisted.inlineCallbacks
def test_a_blocking_provisioner_leaves_the_reactor_free(engine_loop):
    async def blocks():
        time.sleep(0.5)  # what docker-py and Popen.wait() do inside provisioner coroutines
        return "done"

    ticks = []

    def tick():
        ticks.append(time.monotonic())
        if len(ticks) < 100:
            reactor.callLater(0.01, tick)

    tick()
    assert (yield engine_loop.run(blocks)) == "done"
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert len(ticks) > 10 and max(gaps) < 0.3, gaps


@pytest_twisted.inlineCallbacks
def test_state_stays_on_one_loop(engine_loop):
    # jupyter_client's manager keeps loop-bound futures between calls: every call sees the same loop
    async def loop_id():
        return id(asyncio.get_running_loop())

    first = yield engine_loop.run(loop_id)
    second = yield engine_loop.run(loop_id)
    assert first == second != id(asyncio.get_event_loop())


@pytest_twisted.inlineCallbacks
def test_cancelling_the_deferred_cancels_the_coroutine(engine_loop):
    started, cancelled = threading.Event(), threading.Event()

    async def waits():
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    d = engine_loop.run(waits)
    assert started.wait(5)
    d.cancel()
    with pytest.raises(defer.CancelledError):
        yield d
    assert cancelled.wait(5)
