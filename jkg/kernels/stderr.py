"""A kernel's stderr: passed through to the gateway's own stderr, its tail kept.

When a launch fails, the tail says why (an import error, a bad argv) far
better than "exited during startup".  Read without blocking, from the
reactor, through a pipe jkg opens for each start of the kernel
(:func:`kernel_output_pipe`), which a later gateway can open again
(:func:`reopen_kernel_output`).
"""
from __future__ import annotations

import os
import sys
from typing import BinaryIO

from zope.interface import implementer
from twisted.internet.interfaces import IReadDescriptor

from ..procfs import children, open_pipe_of, reopen_descriptor

TAIL_BYTES = 4096


def kernel_output_pipe() -> tuple[int, BinaryIO]:
    """A new pipe for a kernel's stderr: ``(the kernel's end, jkg's reader)``.

    The kernel's end is opened for reading *and* writing, so the pipe has a
    reader for as long as the kernel lives.  A kernel left running when its
    gateway exits (``--keep-kernels-on-exit``) then never gets EPIPE:
    ipykernel's thread that forwards fd-level output ends on that error, after
    which the kernel's fd 2 fills up and the kernel blocks for good.  Its
    writes wait in the pipe instead, until the next gateway reattaches and
    reads on.  The caller closes the kernel's end once the process has it.
    """
    read_fd, write_fd = os.pipe()
    try:
        kernel_end = reopen_descriptor(write_fd, os.O_RDWR)
    except OSError:  # no /proc: a plain write end, as subprocess.PIPE gives
        kernel_end = os.dup(write_fd)
    finally:
        os.close(write_fd)
    return kernel_end, os.fdopen(read_fd, "rb", buffering=0)


def reopen_kernel_output(pid: int, inode: int) -> BinaryIO | None:
    """A reader of the stderr pipe ``inode`` that kernel ``pid`` (or a sandbox's child) holds, or None."""
    for holder in (pid, *children(pid)):
        fd = open_pipe_of(holder, inode, os.O_RDONLY | os.O_NONBLOCK)
        if fd is not None:
            return os.fdopen(fd, "rb", buffering=0)
    return None


@implementer(IReadDescriptor)
class StderrTail:
    def __init__(self, reactor, pipe, echo=None):
        self._reactor = reactor
        self._pipe = pipe
        self._fd = pipe.fileno()
        self.inode = os.fstat(self._fd).st_ino  # recorded, so that a later gateway finds the pipe again
        os.set_blocking(self._fd, False)
        self._echo = echo if echo is not None else getattr(sys.stderr, "buffer", None)
        self._tail = bytearray()
        reactor.addReader(self)

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:  # noqa: N802 - Twisted API
        return "kernel-stderr"

    def doRead(self):  # noqa: N802 - Twisted API
        if self._read_once() is None:
            self.close()
        return None

    def _read_once(self) -> int | None:
        """Read what is waiting: how many bytes (0: nothing yet), None at the end of the pipe."""
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return 0
        except OSError:
            data = b""
        if not data:
            return None
        self._tail += data
        del self._tail[:-TAIL_BYTES]
        if self._echo is not None:
            try:
                self._echo.write(data)
                self._echo.flush()
            except (OSError, ValueError):
                self._echo = None
        return len(data)

    def connectionLost(self, reason):  # noqa: N802 - Twisted API
        self.close()

    def close(self) -> None:
        """Stop reading, after what the process already wrote (bounded: a pipe's worth, a few times)."""
        if self._pipe is not None:
            for _ in range(4):
                if not self._read_once():
                    break
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
