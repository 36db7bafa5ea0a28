"""Malformed and badly signed kernel messages, logged by the count instead of one line each.

A kernel is a tenant's code: it can send 200,000 junk messages in seconds,
and one log line (or a traceback) apiece would fill the disk.  The first
problem from a kernel in a window is logged as it is; the rest are counted
and summed up in one line when the window ends ("kernel K: 2317 malformed
messages in the last 10 s").  Memory is one small entry per kernel with
problems in the current window.
"""
from __future__ import annotations

from twisted.logger import Logger

log = Logger(namespace="jkg.kernels")


class ProtocolErrorLog:
    """Rate-limited, aggregated warnings about what kernels send.

    :param clock: an ``IReactorTime`` (``seconds`` and ``callLater``).
    :param interval: seconds per window.
    """

    def __init__(self, clock, interval: float = 10.0):
        self._clock = clock
        self.interval = interval
        self._counts: dict[tuple[str, str], int] = {}
        self._call = None

    def report(self, kernel: str, what: str, detail: str = "") -> None:
        """One problem of kind ``what`` (e.g. "malformed message") from ``kernel``."""
        key = (kernel, what)
        count = self._counts.get(key)
        if count is None:
            self._counts[key] = 0
            log.warn("kernel {kernel}: dropped {what}{detail}", kernel=kernel, what=what,
                     detail=f": {detail[:200]}" if detail else "")
            if self._call is None:
                self._call = self._clock.callLater(self.interval, self._flush)
        else:
            self._counts[key] = count + 1

    def _flush(self) -> None:
        self._call = None
        counts, self._counts = self._counts, {}
        for (kernel, what), count in counts.items():
            if count:
                log.warn("kernel {kernel}: {count} more {what}s dropped in the last {interval:g} s",
                         kernel=kernel, count=count, what=what, interval=self.interval)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._flush()
