"""Every Prometheus metric jkg exports, defined once; other modules call the helpers here.

Event counters (starts, failures, culls, restarts, auth failures ...) are
``prometheus_client`` objects shared by the process.  What can be read off
the gateway's state when scraped (kernels by state, pool sizes, open
WebSockets, reactor lag) is produced by :class:`GatewayCollector` at scrape
time, so it costs nothing in between.  The message path only adds plain
integers per (direction, channel) in :class:`Traffic` -- a dictionary update,
no lock and no label lookup per message -- which the collector turns into
counters when scraped.
"""
from __future__ import annotations

import time
from collections import defaultdict

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.application.service import Service
from twisted.internet.task import LoopingCall

__all__ = ["CONTENT_TYPE_LATEST", "GatewayCollector", "ReactorLag", "TRAFFIC", "kernel_started",
           "kernel_start_failed", "pool_handout", "kernel_culled", "kernel_restarted", "slow_client_disconnected",
           "auth_failed", "auth_locked_out", "render"]

KERNEL_STARTS = Counter("jkg_kernel_starts_total", "Kernels started (answering, handed to a client).",
                        ["kernelspec"], registry=None)
KERNEL_START_FAILURES = Counter("jkg_kernel_start_failures_total", "Kernel starts that failed.",
                                ["kernelspec"], registry=None)
KERNEL_START_SECONDS = Histogram("jkg_kernel_start_seconds", "Seconds from a start request to a ready kernel.",
                                 ["kernelspec"], registry=None,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120))
POOL_HANDOUTS = Counter("jkg_pool_handouts_total", "Kernels handed out from the warm pool.", ["kernelspec"],
                        registry=None)
CULLS = Counter("jkg_kernel_culls_total", "Idle kernels shut down by the culler.", registry=None)
RESTARTS = Counter("jkg_kernel_restarts_total", "Kernel restarts, requested by a client or after a crash.",
                   ["reason"], registry=None)
SLOW_DISCONNECTS = Counter("jkg_slow_client_disconnects_total",
                           "WebSocket clients disconnected for not reading (code 4008).", registry=None)
AUTH_FAILURES = Counter("jkg_auth_failures_total", "Requests refused for missing or wrong credentials.",
                        registry=None)
AUTH_LOCKOUTS = Counter("jkg_auth_lockouts_total", "Requests refused because their address is locked out "
                        "after too many failed logins.", registry=None)
_EVENTS = (KERNEL_STARTS, KERNEL_START_FAILURES, KERNEL_START_SECONDS, POOL_HANDOUTS, CULLS, RESTARTS,
           SLOW_DISCONNECTS, AUTH_FAILURES, AUTH_LOCKOUTS)


def kernel_started(kernelspec: str, seconds: float) -> None:
    KERNEL_STARTS.labels(kernelspec).inc()
    KERNEL_START_SECONDS.labels(kernelspec).observe(seconds)


def kernel_start_failed(kernelspec: str) -> None:
    KERNEL_START_FAILURES.labels(kernelspec).inc()


def pool_handout(kernelspec: str) -> None:
    POOL_HANDOUTS.labels(kernelspec).inc()


def kernel_culled() -> None:
    CULLS.inc()


def kernel_restarted(automatic: bool) -> None:
    RESTARTS.labels("crash" if automatic else "requested").inc()


def slow_client_disconnected() -> None:
    SLOW_DISCONNECTS.inc()


def auth_failed() -> None:
    AUTH_FAILURES.inc()


def auth_locked_out() -> None:
    AUTH_LOCKOUTS.inc()


class Traffic:
    """Messages and bytes per direction and channel: plain integers, read when scraped.

    0.3-0.8 us per message (two ``defaultdict`` additions and a C-level
    ``sum(map(len, parts))``), against about 40 us of gateway CPU for
    relaying a small iopub message (docs/api.md, Metrics).
    """

    __slots__ = ("from_kernel", "from_kernel_bytes", "to_kernel", "to_kernel_bytes")

    def __init__(self):
        self.from_kernel: defaultdict[str, int] = defaultdict(int)
        self.from_kernel_bytes: defaultdict[str, int] = defaultdict(int)
        self.to_kernel: defaultdict[str, int] = defaultdict(int)
        self.to_kernel_bytes: defaultdict[str, int] = defaultdict(int)

    def received(self, channel: str, parts) -> None:
        """A message from a kernel (before it is relayed)."""
        self.from_kernel[channel] += 1
        self.from_kernel_bytes[channel] += sum(map(len, parts))

    def sent(self, channel: str, parts) -> None:
        """A message from a client to a kernel."""
        self.to_kernel[channel] += 1
        self.to_kernel_bytes[channel] += sum(map(len, parts))

    def rows(self):
        """``(direction, channel, messages, bytes)`` for every channel seen."""
        for direction, counts, sizes in (("from_kernel", self.from_kernel, self.from_kernel_bytes),
                                         ("to_kernel", self.to_kernel, self.to_kernel_bytes)):
            for channel in sorted(counts):
                yield direction, channel, counts[channel], sizes[channel]


TRAFFIC = Traffic()


class ReactorLag(Service):
    """How late a timer meant to fire every ``interval`` seconds fires: a stalled reactor shows here."""

    def __init__(self, clock, interval: float = 1.0, now=time.monotonic):
        self.clock = clock
        self.interval = interval
        self.last = 0.0
        self.worst = 0.0
        self._now = now
        self._expected = None
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock

    def _tick(self) -> None:
        now = self._now()
        if self._expected is not None:
            self.last = max(0.0, now - self._expected)
            self.worst = max(self.worst, self.last)
        self._expected = now + self.interval

    def startService(self):  # noqa: N802 - Twisted API
        super().startService()
        self._loop.start(self.interval, now=True)

    def stopService(self):  # noqa: N802 - Twisted API
        if self._loop.running:
            self._loop.stop()
        return super().stopService()


class GatewayCollector:
    """What one gateway's state says at scrape time: kernels, pool, WebSockets, traffic, reactor lag."""

    def __init__(self, registry, lag: ReactorLag | None = None, traffic: Traffic = TRAFFIC):
        self.registry = registry
        self.lag = lag
        self.traffic = traffic

    def collect(self):
        kernels = GaugeMetricFamily("jkg_kernels", "Kernels by execution state, kernelspec and tenant.",
                                    labels=["state", "kernelspec", "tenant"])
        counts: dict[tuple[str, str, str], int] = {}
        for kernel in self.registry.list_kernels():
            key = (kernel.execution_state, kernel.name, kernel.owner or "")
            counts[key] = counts.get(key, 0) + 1
        for key, value in sorted(counts.items()):
            kernels.add_metric(list(key), value)
        yield kernels
        pool = GaugeMetricFamily("jkg_pool_kernels", "Ready kernels waiting in the warm pool.",
                                 labels=["kernelspec"])
        target = GaugeMetricFamily("jkg_pool_size", "Configured warm pool size.", labels=["kernelspec"])
        if self.registry.pool is not None:
            for name, size in sorted(self.registry.pool.sizes.items()):
                pool.add_metric([name], len(self.registry.pool.ready.get(name, ())))
                target.add_metric([name], size)
        yield pool
        yield target
        yield GaugeMetricFamily("jkg_websocket_connections", "Open kernel WebSocket connections.",
                                value=self.registry.connection_count())
        messages = CounterMetricFamily("jkg_messages", "Kernel messages relayed, by direction and channel.",
                                       labels=["direction", "channel"])
        sizes = CounterMetricFamily("jkg_message_bytes", "Bytes of kernel messages relayed (all frames).",
                                    labels=["direction", "channel"])
        for direction, channel, count, size in self.traffic.rows():
            messages.add_metric([direction, channel], count)
            sizes.add_metric([direction, channel], size)
        yield messages
        yield sizes
        if self.lag is not None:
            yield GaugeMetricFamily("jkg_reactor_lag_seconds", "How late the last 1-second reactor timer fired.",
                                    value=self.lag.last)
            yield GaugeMetricFamily("jkg_reactor_lag_max_seconds", "Worst reactor timer lateness since start.",
                                    value=self.lag.worst)


def make_registry(collector: GatewayCollector) -> CollectorRegistry:
    """A registry with the process's event counters and one gateway's state."""
    registry = CollectorRegistry(auto_describe=False)
    for metric in _EVENTS:
        registry.register(metric)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition format."""
    return generate_latest(registry)
