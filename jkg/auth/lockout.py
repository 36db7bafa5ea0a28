"""Slowing down password and token guessing, one client address at a time."""
from __future__ import annotations

from collections import OrderedDict, deque


class FailureLimiter:
    """More than ``limit`` failures from one address within ``window`` seconds locks it out.

    Only that address is refused (429 with ``Retry-After``) until its oldest
    failure leaves the window; everyone else is unaffected.  Attempts still
    being checked count as failures-to-be, so a burst of concurrent guesses
    is refused beyond ``limit`` instead of all being checked.  Memory is
    bounded: the least recently failing addresses are forgotten first.
    """

    def __init__(self, clock, limit: int = 10, window: float = 60.0, max_addresses: int = 10_000):
        self._clock = clock
        self.limit = limit
        self.window = window
        self._max_addresses = max_addresses
        self._failures: OrderedDict[str, deque] = OrderedDict()
        self._in_flight: dict[str, int] = {}

    def attempting(self, address: str):
        """Count one login attempt from ``address`` as in progress; call the result when it is decided."""
        self._in_flight[address] = self._in_flight.get(address, 0) + 1
        done = []

        def finished() -> None:
            if not done:
                done.append(True)
                left = self._in_flight[address] - 1
                if left:
                    self._in_flight[address] = left
                else:
                    del self._in_flight[address]

        return finished

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
        in_flight = self._in_flight.get(address, 0)
        if (len(failures) if failures else 0) + in_flight <= self.limit:
            return 0
        if failures is None or len(failures) <= self.limit:
            return 1  # the attempts in progress decide: try again in a moment
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
