"""One worker thread with its own asyncio loop, for provisioners that block.

gateway_provisioners' container and SSH provisioners do synchronous work
inside their coroutines: docker-py requests on every poll, ``Popen.wait()``
on the local launcher when a start fails or a kernel stops, SSH commands; and
its ``ResponseManager`` polls the listening socket for launchers' connection
info from a periodic callback on whatever loop created it.  On the reactor's
loop each of those stalls every client of the gateway (a slow engine once
held a ``POST /api/kernels`` -- and everyone else -- for the whole time the
launcher took).  So everything such a kernel's manager does -- start, poll,
signal, restart, shutdown, reattach -- runs here, and the reactor only sees
Deferreds.

One thread for all of them, not one per call: jupyter_client's manager and
the provisioners keep loop-bound state between calls (futures, the
``ResponseManager``'s periodic callback), so every call for such a kernel must
land on the same loop.
"""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any, Callable, Coroutine

from twisted.internet.defer import Deferred


class EngineLoop:
    """Runs coroutines on a private asyncio loop in a daemon thread; results come back as Deferreds.

    :param reactor: the reactor the Deferreds fire in (results cross over with
        ``callFromThread``).
    """

    def __init__(self, reactor, name: str = "jkg-engines"):
        self._reactor = reactor
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or not self.running:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve():
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=serve, name=self._name, daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def run(self, make: Callable[[], Coroutine[Any, Any, Any]]) -> Deferred:
        """Fire with what ``make()``'s coroutine returns, run on the engine loop.

        ``make`` is called on the engine loop, so the coroutine (and anything it
        creates at once) belongs to that loop.  Cancelling the Deferred cancels
        the coroutine there.
        """
        loop = self._start()

        async def call():
            return await make()

        future: Future = asyncio.run_coroutine_threadsafe(call(), loop)
        result = Deferred(lambda _: future.cancel())

        def settled(done: Future) -> None:
            self._reactor.callFromThread(_fire, result, done)

        future.add_done_callback(settled)
        return result

    def stop(self, timeout: float = 5.0) -> None:
        """End the loop and its thread (what still runs on it is abandoned)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            if not thread.is_alive():
                loop.close()


def _fire(result: Deferred, done: Future) -> None:
    if result.called:  # cancelled meanwhile: the canceller already fired it
        return
    if done.cancelled():
        result.cancel()
        return
    error = done.exception()
    if error is not None:
        result.errback(error)
    else:
        result.callback(done.result())
