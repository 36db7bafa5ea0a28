"""Password checks (bcrypt) on their own small thread pool, with in-flight caps.

A bcrypt check costs ~0.25 s of CPU by design.  Run on the reactor's shared
thread pool, 200 concurrent wrong passwords would queue ahead of every other
thread job (kernel starts among them) for tens of seconds.  Here checks run
on a separate pool of a few threads, and a client address or a tenant name
with too many checks already in progress is refused at once (429), so the
work any one attacker can queue is bounded.

Names without a password get a check against a dummy hash of the same cost,
so the time a wrong answer takes does not tell which names exist.
"""
from __future__ import annotations

import re
import threading

from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from ..errors import TooManyRequests

#: bcrypt only looks at the first 72 bytes; longer passwords are refused rather than silently cut
MAX_PASSWORD_BYTES = 72
DEFAULT_COST = 12
_COST = re.compile(r"\$2[aby]?\$(\d{2})\$")


def bcrypt_cost(stored: str) -> int:
    match = _COST.search(stored)
    return int(match.group(1)) if match else DEFAULT_COST


class PasswordHasher:
    """Checks passwords against bcrypt hashes off the reactor thread, boundedly.

    :param reactor: the reactor (for the pool's shutdown and Deferreds).
    :param threads: size of the pool.
    :param per_address: checks one client address may have in progress (0: no limit).
    :param per_tenant: checks for one tenant name in progress (0: no limit).
    """

    def __init__(self, reactor, threads: int = 2, per_address: int = 4, per_tenant: int = 8):
        self._reactor = reactor
        self._threads = max(1, threads)
        self.per_address = per_address
        self.per_tenant = per_tenant
        self._pool: ThreadPool | None = None
        self.by_address: dict[str, int] = {}
        self.by_tenant: dict[str, int] = {}
        self._dummies: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def _start_pool(self) -> ThreadPool:
        if self._pool is None:
            self._pool = ThreadPool(minthreads=0, maxthreads=self._threads, name="jkg-password")
            self._pool.start()
            self._reactor.addSystemEventTrigger("during", "shutdown", self._pool.stop)
        return self._pool

    def check(self, password: bytes, stored: str | None, address: str, tenant: str, cost: int = DEFAULT_COST):
        """A Deferred firing with whether ``password`` matches ``stored``.

        ``stored`` ``None`` checks against a dummy hash of ``cost`` and
        fires ``False``.

        :raises TooManyRequests: when ``address`` or ``tenant`` already has its
            share of checks in progress.
        """
        if 0 < self.per_address <= self.by_address.get(address, 0):
            raise TooManyRequests("too many password checks in progress from this address", 1)
        if 0 < self.per_tenant <= self.by_tenant.get(tenant, 0):
            raise TooManyRequests("too many password checks in progress for this name", 1)
        _increment(self.by_address, address, 1)
        _increment(self.by_tenant, tenant, 1)

        def done(result):
            _increment(self.by_address, address, -1)
            _increment(self.by_tenant, tenant, -1)
            return result

        if stored is None:
            work = (self._dummy_check, password, cost)
        else:
            work = (_check, password, stored)
        return deferToThreadPool(self._reactor, self._start_pool(), *work).addBoth(done)

    def _dummy_check(self, password: bytes, cost: int) -> bool:
        import bcrypt

        with self._lock:
            dummy = self._dummies.get(cost)
            if dummy is None:
                dummy = self._dummies[cost] = bcrypt.hashpw(b"jkg dummy password", bcrypt.gensalt(cost))
        bcrypt.checkpw(password[:MAX_PASSWORD_BYTES], dummy)
        return False


def _check(password: bytes, stored: str) -> bool:
    import bcrypt  # imported lazily: only tenants with passwords need it

    return bcrypt.checkpw(password, stored.removeprefix("bcrypt:").encode("ascii"))


def _increment(counts: dict, key: str, delta: int) -> None:
    value = counts.get(key, 0) + delta
    if value > 0:
        counts[key] = value
    else:
        counts.pop(key, None)
