"""jupyter_server's optional iopub rate limits, per client."""
from __future__ import annotations

import time
from collections import deque

from ..kernels.messages import KernelMessage, dumps, make_header


class IOPubRateLimit:
    """jupyter_server's iopub rate limits for one client (``ZMQChannelsWebsocketConnection``).

    Over a sliding window of ``window`` seconds, every iopub message except
    ``status``, ``comm_open`` and ``execute_input`` counts as one message and,
    for ``stream`` messages only, as its size in bytes.  When the message rate
    goes over ``msg_rate`` (or the byte rate over ``data_rate``), the client
    gets one warning on stderr and then nothing until the rate falls below 80 %
    of the limit; dropped messages do not count.  A ``status: idle`` resets
    everything.  A limit of 0 is off.
    """

    EXEMPT = frozenset({"status", "comm_open", "execute_input"})

    def __init__(self, msg_rate: float, data_rate: float, window: float, clock=time.monotonic):
        self.msg_rate = msg_rate
        self.data_rate = data_rate
        self.window = window
        self._clock = clock
        self._queue: deque = deque()  # (expiry, bytes) of every counted message
        self._count = 0
        self._bytes = 0
        self.msgs_exceeded = False
        self.data_exceeded = False

    def admit(self, message) -> tuple[bool, str | None]:
        """``(send it, warning to send first or None)`` for one iopub message."""
        msg_type = message.msg_type
        if msg_type == "status":
            if message.execution_state == "idle":
                self._queue.clear()
                self._count = self._bytes = 0
                self.msgs_exceeded = self.data_exceeded = False
            return True, None
        if msg_type in self.EXEMPT:
            return True, None
        now = self._clock()
        queue = self._queue
        while queue and queue[0][0] <= now:
            self._bytes -= queue.popleft()[1]
            self._count -= 1
        size = message.size if msg_type == "stream" else 0
        self._count += 1
        self._bytes += size
        queue.append((now + self.window, size))
        msg_rate = self._count / self.window
        data_rate = self._bytes / self.window
        warning = None
        if self.msg_rate > 0 and msg_rate > self.msg_rate:
            if not self.msgs_exceeded:
                self.msgs_exceeded = True
                warning = self._text("message", "iopub_msg_rate_limit", self.msg_rate, "msgs/sec")
        elif self.msgs_exceeded and msg_rate < 0.8 * self.msg_rate:
            self.msgs_exceeded = False
        if self.data_rate > 0 and data_rate > self.data_rate:
            if not self.data_exceeded:
                self.data_exceeded = True
                warning = self._text("data", "iopub_data_rate_limit", self.data_rate, "bytes/sec")
        elif self.data_exceeded and data_rate < 0.8 * self.data_rate:
            self.data_exceeded = False
        if self.msgs_exceeded or self.data_exceeded:
            self._count -= 1  # not sent: it does not count
            self._bytes -= size
            queue.pop()
            return False, warning
        return True, warning

    def _text(self, what: str, option: str, limit: float, unit: str) -> str:
        flag = "--" + option.replace("_", "-")
        return (f"IOPub {what} rate exceeded.\n"
                "The gateway will temporarily stop sending output\n"
                "to the client in order to avoid crashing it.\n"
                f"To change this limit, set {flag} (or {option.upper()} / KG_{option.upper()}).\n\n"
                "Current values:\n"
                f"{option}={limit} ({unit})\n"
                f"rate_limit_window={self.window} (secs)\n")


def warning_message(text: str, parent, session: str) -> KernelMessage:
    """An iopub ``stream`` message on stderr answering ``parent`` (raw parent header bytes)."""
    header = make_header("stream", session)
    parts = [dumps(header), bytes(parent), b"{}", dumps({"name": "stderr", "text": text})]
    return KernelMessage("iopub", b"", parts, header["msg_id"], "stream", None)

