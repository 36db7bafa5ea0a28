"""Channel objects with the interface jupyter_client's async client expects of its ZMQ channels.

``KernelClient`` (``get_shell_msg``, ``_async_recv_reply``, ``wait_for_ready``)
and tools like nbclient only use ``get_msg(timeout)`` (raising ``queue.Empty``
on timeout), ``get_msgs()``, ``msg_ready()``, ``send(msg)``, ``start()``,
``stop()`` and ``is_alive()``; here each channel is a queue fed by the shared
:class:`jkg.client.connection.KernelConnection`.  Once the connection has failed
for good, a channel still hands out what it already received, then raises the
failure (``KernelDied``, ``GatewayAuthError``, ...) instead of timing out.

There is no heartbeat channel over a gateway; :class:`GatewayHBChannel` reports
"beating" while the WebSocket connection has not failed.
"""
from __future__ import annotations

import time
from collections import deque
from queue import Empty

from jupyter_client.channelsabc import ChannelABC, HBChannelABC

from .connection import KernelConnection

__all__ = ["GatewayChannel", "GatewayHBChannel"]


class _Switch:
    """start/stop/is_alive as jupyter_client's channel ABCs expect; the WebSocket does the work."""

    _running = False

    def start(self) -> None:
        self._running = True

    def stop(self) -> None:
        self._running = False

    def is_alive(self) -> bool:
        return self._running


class GatewayChannel(_Switch):
    """One of shell, iopub, stdin, control."""

    def __init__(self, name: str, connection: KernelConnection):
        self.name = name
        self._connection = connection
        self._messages: deque[dict] = deque()
        self._running = False
        connection.add_sink(name, self._messages.append)

    # -- ChannelABC ----------------------------------------------------------------------
    def close(self) -> None:
        self.stop()

    # -- messages ------------------------------------------------------------------------
    def take_nowait(self) -> dict | None:
        """The next message, ``None`` when there is none yet, or the connection's failure raised."""
        if self._messages:
            return self._messages.popleft()
        if self._connection.failure is not None:
            raise self._connection.failure
        return None

    async def get_msg(self, timeout: float | None = None) -> dict:
        """The next message; ``queue.Empty`` after ``timeout`` seconds (``None``: wait forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            msg = self.take_nowait()
            if msg is not None:
                return msg
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise Empty
            await self._connection.wait_activity(remaining)

    async def get_msgs(self) -> list[dict]:
        """Every message already received, without waiting."""
        msgs = list(self._messages)
        self._messages.clear()
        return msgs

    async def msg_ready(self) -> bool:
        return bool(self._messages)

    def send(self, msg: dict) -> None:
        """Queue ``msg`` for the kernel (sent unsigned: the gateway signs it)."""
        self._connection.send(self.name, msg)


class GatewayHBChannel(_Switch):
    """Stands in for the heartbeat, which gateways do not expose."""

    time_to_dead = 1.0

    def __init__(self, connection: KernelConnection):
        self._connection = connection
        self._running = False
        self._paused = False

    def pause(self) -> None:
        self._paused = True

    def unpause(self) -> None:
        self._paused = False

    def is_beating(self) -> bool:
        return self._running and self._connection.failure is None

    def close(self) -> None:
        self.stop()


ChannelABC.register(GatewayChannel)
HBChannelABC.register(GatewayHBChannel)
