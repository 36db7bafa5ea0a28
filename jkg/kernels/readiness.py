"""Who tells a kernel connection that its socket can be read or written.

Twisted's asyncio reactor hands each ready descriptor to ``callWithLogger``,
which pushes and pops a legacy log context, and then to ``_readOrWrite``,
before the descriptor's own ``doRead``.  On a kernel connection that is paid
on every wake-up, and on a quiet gateway each kernel message is a wake-up of
its own: measured side by side, leaving it out takes 3-7 % off the gateway's
CPU per execute (benchmarks/README.md).  A :class:`~jkg.kernels.zmtp.ZmtpConnection`
handles its own errors and needs none of it, so when the reactor runs on an
asyncio loop in this thread, the connection's socket is watched on that loop
directly, through its public ``add_reader``/``add_writer``
(:class:`LoopReadiness`).  Any other reactor (the unit tests' fake ones) and
a reactor not running yet watch it the Twisted way (:class:`ReactorReadiness`).
Both have the same four methods; each call is idempotent.
"""
from __future__ import annotations

import asyncio
from typing import Callable

from twisted.python.threadable import isInIOThread


def running_loop_of(reactor) -> asyncio.AbstractEventLoop | None:
    """The asyncio loop ``reactor`` runs on, if it is Twisted's asyncio reactor running in this thread."""
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor) or not isInIOThread():
        return None
    try:
        return asyncio.get_running_loop()  # one loop runs per thread: the reactor's
    except RuntimeError:
        return None


class LoopReadiness:
    """The socket watched on the asyncio loop: ``on_readable()``/``on_writable()`` are called by it directly.

    The descriptor is read from ``fileno()`` when watching starts and kept
    for stopping, so a connection may close its socket (and get a new one on
    reconnecting) between a start and the next.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fileno: Callable[[], int],
                 on_readable: Callable[[], None], on_writable: Callable[[], None]):
        self._loop = loop
        self._fileno = fileno
        self._on_readable = on_readable
        self._on_writable = on_writable
        self._reading = -1  # the descriptor being watched for reading, or -1
        self._writing = -1

    def start_reading(self) -> None:
        if self._reading == -1:
            fd = self._fileno()
            self._loop.add_reader(fd, self._on_readable)
            self._reading = fd

    def stop_reading(self) -> None:
        fd, self._reading = self._reading, -1
        if fd != -1:
            self._loop.remove_reader(fd)

    def start_writing(self) -> None:
        if self._writing == -1:
            fd = self._fileno()
            self._loop.add_writer(fd, self._on_writable)
            self._writing = fd

    def stop_writing(self) -> None:
        fd, self._writing = self._writing, -1
        if fd != -1:
            self._loop.remove_writer(fd)


class ReactorReadiness:
    """The socket watched by the reactor: ``addReader(descriptor)``, which calls its ``doRead``."""

    def __init__(self, reactor, descriptor):
        self._reactor = reactor
        self._descriptor = descriptor

    def start_reading(self) -> None:
        self._reactor.addReader(self._descriptor)

    def stop_reading(self) -> None:
        self._reactor.removeReader(self._descriptor)

    def start_writing(self) -> None:
        self._reactor.addWriter(self._descriptor)

    def stop_writing(self) -> None:
        self._reactor.removeWriter(self._descriptor)
