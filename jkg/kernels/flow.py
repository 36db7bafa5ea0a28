"""iopub flow control: a kernel's output is read at the pace of its fastest client.

When every client that is reading has a backlog over :data:`FLOW_HIGH`, the
kernel's iopub is left in its sockets (``IKernelChannels.pause_iopub``) until
one of them is under :data:`FLOW_LOW`, instead of piling up in the gateway.
A client that took nothing for :data:`FLOW_STALL` seconds does not hold the
others back: it stops counting, its backlog grows and its own limit drops it.
Clients tell their backlog through ``IKernelClient.outgoing()`` ->
``(bytes waiting, bytes taken so far)``; one that cannot tell (``None``)
turns flow control off.
"""
from __future__ import annotations

FLOW_HIGH = 8 * 1024 * 1024
FLOW_LOW = 2 * 1024 * 1024
FLOW_STALL = 0.25
FLOW_POLL = 0.005


class IopubFlow:
    """Flow control for one :class:`~jkg.kernels.kernel.ManagedKernel` (its ``clients`` and ``channels``)."""

    def __init__(self, kernel, clock):
        self._kernel = kernel
        self._clock = clock
        self._seen: dict[str, list] = {}  # session -> [bytes taken, when it last took some]
        self._paused = None  # the channels whose iopub reading is paused

    def forget(self, session_id: str) -> None:
        self._seen.pop(session_id, None)

    def forget_all(self) -> None:
        self._seen.clear()

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
            elif now - seen[1] > FLOW_STALL:
                continue  # not reading: does not count
            levels[session_id] = waiting
        return levels

    def check(self) -> None:
        """After iopub went to the clients: pause reading if every reading client is behind."""
        if self._paused is not None:
            return
        kernel = self._kernel
        for client in kernel.clients.values():  # cheap way out: someone keeps up
            backlog = client.outgoing()
            if backlog is None or backlog[0] <= FLOW_HIGH:
                return
        levels = self._levels()
        if levels and min(levels.values()) > FLOW_HIGH:
            kernel.channels.pause_iopub()
            self._paused = kernel.channels
            self._clock.callLater(FLOW_POLL, self._poll)

    def _poll(self) -> None:
        channels = self._paused
        if channels is None:
            return
        if channels is not self._kernel.channels:  # reconnected meanwhile: the new sockets read
            self._paused = None
            return
        levels = self._levels() if self._kernel.clients else None
        if not levels or min(levels.values()) < FLOW_LOW:
            self._paused = None
            channels.resume_iopub()
        else:
            self._clock.callLater(FLOW_POLL, self._poll)
