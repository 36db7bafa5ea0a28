"""iopub pacing (``--iopub-batch-ms``): while a kernel streams output, its iopub may be read in batches.

A kernel that displays thousands of small outputs sends them one by one, a
few hundred microseconds apart.  Read as they come, each costs the gateway a
whole wake-up (epoll, the reactor's dispatch, one ``recv``) and each client a
``send`` and a wake-up of its own: about 100 us of gateway CPU per message on
a quiet 2-core machine, most of it per wake-up.  With pacing on, once an
execution has produced :data:`STREAM_AFTER` outputs in a row, the gateway
leaves iopub unread for the configured hold after each read and takes what
came meanwhile in one read, written to each client in one ``send``
(interrupt moderation, as network cards do it).

Ordinary executions (fewer than :data:`STREAM_AFTER` outputs before their
``status``) are never held, so request latency is unchanged; a stream arrives
in bursts at most one hold apart; a ``status`` ends the streak, and so does a
held read that found only one message (the stream slowed down).

Off by default, because of what it measured (benchmarks/README.md, "iopub
batches"): with a 4–16 ms hold the gateway's CPU per streamed message fell
from ~100 to 30–55 us, but on a quiet machine the kernel then produced its
output 20–25 % more slowly -- its own threads, no longer kept busy, each wake
for every message.  Reads that already hold several messages (a busy gateway)
are batched whether or not pacing is on.
"""
from __future__ import annotations

from typing import Sequence

#: outputs (iopub messages other than ``status``) in a row before iopub is held
STREAM_AFTER = 32


class IopubPacer:
    """The pacing state of one kernel's iopub: how long to hold it after each read.

    :param hold: seconds iopub stays unread after each read of a stream.
    """

    __slots__ = ("streak", "holding", "stream_after", "hold")

    def __init__(self, hold: float, stream_after: int = STREAM_AFTER):
        self.streak = 0  # outputs since the last status
        self.holding = False  # the last read was followed by a hold
        self.stream_after = stream_after
        self.hold = hold

    def after_read(self, messages: Sequence) -> float:
        """Seconds to leave iopub unread after a read that brought ``messages`` (0: read on at once)."""
        streak = self.streak
        for message in messages:
            streak = 0 if message.msg_type == "status" else streak + 1
        self.streak = streak
        if self.holding and len(messages) <= 1:
            self.holding = False  # the stream slowed down: read each message as it comes again
            self.streak = 0
            return 0.0
        self.holding = self.hold > 0 and streak >= self.stream_after
        return self.hold if self.holding else 0.0
