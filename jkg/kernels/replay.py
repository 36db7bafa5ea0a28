"""Output kept for a session whose last client went away, replayed on return.

jupyter_server keeps such output in an unbounded list; here the buffer is
bounded in bytes, drops the oldest messages first, and reports how many it
dropped so the user is told that output is missing instead of silently
losing it.
"""
from __future__ import annotations

from collections import deque

from .messages import KernelMessage, local_message, make_message_parts


class ReplayBuffer:
    """Messages for one ``session_id``, at most ``limit`` bytes of them."""

    def __init__(self, session_id: str, limit: int):
        self.session_id = session_id
        self.limit = limit
        self.size = 0
        self.dropped = 0
        self._messages: deque[KernelMessage] = deque()

    def __len__(self) -> int:
        return len(self._messages)

    def append(self, message: KernelMessage) -> None:
        self._messages.append(message)
        self.size += message.size
        while self.size > self.limit and self._messages:
            oldest = self._messages.popleft()
            self.size -= oldest.size
            self.dropped += 1

    def drain(self) -> list[KernelMessage]:
        """Everything kept, oldest first, led by a notice when output was dropped."""
        messages = list(self._messages)
        self._messages.clear()
        self.size = 0
        if self.dropped:
            text = (f"[jkg] {self.dropped} output message(s) were dropped while this session was "
                    f"disconnected (replay buffer limit {self.limit} bytes).\n")
            notice = local_message("iopub", make_message_parts(
                "stream", {"name": "stderr", "text": text}, self.session_id))
            messages.insert(0, notice)
            self.dropped = 0
        return messages
