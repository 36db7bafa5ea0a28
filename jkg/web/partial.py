"""The gateway-wide budget for client WebSocket messages still arriving."""
from __future__ import annotations


class PartialBudget:
    """Bytes of client WebSocket messages still arriving, over all connections.

    autobahn keeps a frame's payload until the frame is complete, so six
    clients each sending most of a 250 MiB frame and then nothing would hold
    1.5 GB.  A frame of ``SMALL`` bytes or more takes its announced size from
    this budget when it begins and gives it back when its message is handled
    or its connection is lost; a frame that does not fit is refused (close
    1009) before its bytes arrive.  When much was given back, freed heap is
    returned to the system (glibc keeps it otherwise).
    """

    SMALL = 1024 * 1024
    TRIM_AFTER = 64 * 1024 * 1024

    def __init__(self, limit: int | None):
        self.limit = limit
        self.held = 0
        self.by_protocol: dict = {}
        self._released = 0

    def take(self, protocol, size: int) -> bool:
        if self.limit is not None and self.held + size > self.limit:
            return False
        self.held += size
        self.by_protocol[protocol] = self.by_protocol.get(protocol, 0) + size
        return True

    def release(self, protocol) -> None:
        size = self.by_protocol.pop(protocol, 0)
        if size:
            self.held -= size
            self._released += size
            if self._released >= self.TRIM_AFTER:
                self._released = 0
                _trim_heap()


def _trim_heap() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
