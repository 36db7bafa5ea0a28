"""Slowing down password and token guessing, one client address at a time."""
from __future__ import annotations

from collections import OrderedDict, deque


class FailureLimiter:
    """More than ``limit`` failures from one address within ``window`` seconds locks it out.

    Only that address is refused (429 with ``Retry-After``) until its oldest
    failure leaves the window; everyone else is unaffected.  Memory is
    bounded: the least recently failing addresses are forgotten first.
    """

    def __init__(self, clock, limit: int = 10, window: float = 60.0, max_addresses: int = 10_000):
        self._clock = clock
        self.limit = limit
        self.window = window
        self._max_addresses = max_addresses
        self._failures: OrderedDict[str, deque] = OrderedDict()

    def _recent(self, address: str) -> deque | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        horizon = self._clock.seconds() - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures

    def retry_after(self, address: str) -> int:
        """Seconds until ``address`` may try again; 0 when it is not locked out."""
        failures = self._recent(address)
        if failures is None or len(failures) <= self.limit:
            return 0
        return max(1, int(failures[-self.limit - 1] + self.window - self._clock.seconds()) + 1)

    def failed(self, address: str) -> None:
        failures = self._recent(address)
        if failures is None:
            failures = self._failures[address] = deque()
        self._failures.move_to_end(address)
        failures.append(self._clock.seconds())
        if len(failures) > self.limit * 2:
            failures.popleft()
        while len(self._failures) > self._max_addresses:
            self._failures.popitem(last=False)
