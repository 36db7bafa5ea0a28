"""iopub flow control: a kernel's output is read at the pace of its fastest client.

When every client that is reading has a backlog over :data:`FLOW_HIGH`, the
kernel's iopub is left in its sockets (``IKernelChannels.pause_iopub``) until
one of them is under :data:`FLOW_LOW`, instead of piling up in the gateway.
A client that took nothing for :data:`FLOW_STALL` seconds does not hold the
others back: it stops counting, its backlog grows and its own limit drops it.
Clients tell their backlog through ``IKernelClient.outgoing()`` ->
``(bytes waiting, bytes taken so far)``; one that cannot tell (``None``)
turns flow control off.

Nothing is polled.  While paused, the decision is reviewed when it can
change: when a client's socket took a slice of its backlog (its writer's
``resumeProducing``, reported through ``IAttachedKernel.drained``), when a
client leaves, and at the one moment the longest-silent reading client would
turn stalled (a single timer, re-armed from that review).
"""
from __future__ import annotations

FLOW_HIGH = 8 * 1024 * 1024
FLOW_LOW = 2 * 1024 * 1024
FLOW_STALL = 0.25


class IopubFlow:
    """Flow control for one :class:`~jkg.kernels.kernel.ManagedKernel` (its ``clients`` and ``channels``)."""

    def __init__(self, kernel, clock):
        self._kernel = kernel
        self._clock = clock
        self._seen: dict[str, list] = {}  # session -> [bytes taken, when it last took some]
        self._paused = None  # the channels whose iopub reading is paused
        self._stall_call = None  # when the longest-silent reading client turns stalled

    def forget(self, session_id: str) -> None:
        """A client left: it may have been the one holding the kernel back."""
        self._seen.pop(session_id, None)
        self.drained()

    def forget_all(self) -> None:
        self._seen.clear()
        self.drained()

    def _levels(self) -> dict | None:
        """session -> bytes waiting, for the clients still reading; None if one cannot tell."""
        now = self._clock.seconds()
        seen_all = self._seen
        levels = {}
        for session_id, client in self._kernel.clients.items():
            backlog = client.outgoing()
            if backlog is None:
                return None
            waiting, taken = backlog
            seen = seen_all.get(session_id)
            if seen is None or taken != seen[0]:
                seen_all[session_id] = [taken, now]
            elif now - seen[1] >= FLOW_STALL:
                continue  # not reading: does not count
            levels[session_id] = waiting
        return levels

    def check(self) -> None:
        """After iopub went to the clients: pause reading if every reading client is behind."""
        kernel = self._kernel
        if self._paused is not None:
            if self._paused is kernel.channels:
                return
            self._stop()  # reconnected meanwhile: the new sockets read
        for client in kernel.clients.values():  # cheap way out: someone keeps up
            backlog = client.outgoing()
            if backlog is None or backlog[0] <= FLOW_HIGH:
                return
        levels = self._levels()
        if levels and min(levels.values()) > FLOW_HIGH:
            kernel.channels.pause_iopub()
            self._paused = kernel.channels
            self._arm(levels)

    def drained(self) -> None:
        """A client's socket took part of its backlog (or a client left): resume if one is low enough."""
        channels = self._paused
        if channels is None:
            return
        if channels is not self._kernel.channels:  # reconnected meanwhile: the new sockets read
            self._stop()
            return
        levels = self._levels() if self._kernel.clients else None
        if not levels or min(levels.values()) < FLOW_LOW:
            self._stop()
            channels.resume_iopub()
        else:
            self._arm(levels)

    def _arm(self, levels: dict) -> None:
        """Review again when the reading client silent the longest would turn stalled."""
        last_taken = min(self._seen[session_id][1] for session_id in levels)
        # (never 0: a float rounding must not make it fire again in the same turn)
        delay = max(FLOW_STALL / 100, last_taken + FLOW_STALL - self._clock.seconds())
        call = self._stall_call
        if call is not None and call.active():
            call.reset(delay)
        else:
            self._stall_call = self._clock.callLater(delay, self._stall_review)

    def _stall_review(self) -> None:
        self._stall_call = None
        self.drained()

    def _stop(self) -> None:
        self._paused = None
        call, self._stall_call = self._stall_call, None
        if call is not None and call.active():
            call.cancel()
