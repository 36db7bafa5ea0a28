"""A kernel's stderr: passed through to the gateway's own stderr, its tail kept.

When a launch fails, the tail says why (an import error, a bad argv) far
better than "exited during startup".  Read without blocking, from the
reactor, through the pipe jupyter_client's launcher opened.
"""
from __future__ import annotations

import os
import sys

from zope.interface import implementer
from twisted.internet.interfaces import IReadDescriptor

TAIL_BYTES = 4096


@implementer(IReadDescriptor)
class StderrTail:
    def __init__(self, reactor, pipe, echo=None):
        self._reactor = reactor
        self._pipe = pipe
        self._fd = pipe.fileno()
        os.set_blocking(self._fd, False)
        self._echo = echo if echo is not None else getattr(sys.stderr, "buffer", None)
        self._tail = bytearray()
        reactor.addReader(self)

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:  # noqa: N802 - Twisted API
        return "kernel-stderr"

    def doRead(self):  # noqa: N802 - Twisted API
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self.close()
            return None
        self._tail += data
        del self._tail[:-TAIL_BYTES]
        if self._echo is not None:
            try:
                self._echo.write(data)
                self._echo.flush()
            except (OSError, ValueError):
                self._echo = None
        return None

    def connectionLost(self, reason):  # noqa: N802 - Twisted API
        self.close()

    def close(self) -> None:
        if self._pipe is not None:
            self._reactor.removeReader(self)
            try:
                self._pipe.close()
            except OSError:
                pass
            self._pipe = None

    def tail(self, lines: int = 10) -> str:
        """The last few lines the kernel wrote to stderr."""
        text = self._tail.decode("utf-8", "replace").strip()
        return "\n".join(text.splitlines()[-lines:])
