"""Output kept for a session that went away, replayed when it comes back.

jupyter_server keeps such output in an unbounded list; here the buffer is
bounded in bytes, drops the oldest messages first, and reports how many it
dropped so the user is told that output is missing instead of silently
losing it.  A session that was disconnected for reading too slowly is told so
as well: what was still waiting in its socket when it was dropped is lost.
"""
from __future__ import annotations

from collections import deque

from .messages import KernelMessage, local_message, make_message_parts


class ReplayBuffer:
    """Messages for one ``session_id``, at most ``limit`` bytes of them.

    :param dropped_slow: when the session was disconnected for being too slow,
        the outgoing buffer limit it went over (bytes); 0 otherwise.
    """

    def __init__(self, session_id: str, limit: int, dropped_slow: int = 0):
        self.session_id = session_id
        self.limit = limit
        self.size = 0
        self.dropped = 0
        self.dropped_slow = dropped_slow
        self._messages: deque[KernelMessage] = deque()

    def __len__(self) -> int:
        return len(self._messages)

    def append(self, message: KernelMessage) -> None:
        size = message.size
        if size > self.limit:
            self.dropped += 1
            return
        self._messages.append(message)
        self.size += size
        while self.size > self.limit:
            oldest = self._messages.popleft()
            self.size -= oldest.size
            self.dropped += 1

    def extend(self, messages) -> None:
        for message in messages:
            self.append(message)

    def drain(self) -> list[KernelMessage]:
        """Everything kept, oldest first, led by a notice when output was lost."""
        messages = list(self._messages)
        self._messages.clear()
        self.size = 0
        lines = []
        if self.dropped_slow:
            lines.append(f"[jkg] this session was disconnected because it did not read its output fast enough "
                         f"(more than {self.dropped_slow} bytes were waiting); output still waiting then "
                         f"was lost.\n")
            self.dropped_slow = 0
        if self.dropped:
            lines.append(f"[jkg] {self.dropped} output message(s) were dropped while this session was "
                         f"disconnected (replay buffer limit {self.limit} bytes).\n")
            self.dropped = 0
        if lines:
            notice = local_message("iopub", make_message_parts(
                "stream", {"name": "stderr", "text": "".join(lines)}, self.session_id))
            messages.insert(0, notice)
        return messages
