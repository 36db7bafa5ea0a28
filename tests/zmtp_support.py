"""Helpers shared by the tests that put libzmq on the other end of jkg's ZMTP connections."""
from __future__ import annotations

import socket
import time

import zmq
from twisted.internet import reactor
from twisted.internet.task import deferLater


async def until(predicate, what: str, timeout: float = 20.0, step: float = 0.01):
    """Let the reactor run until ``predicate()`` is true (bounded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await deferLater(reactor, step, lambda: None)


async def recv_zmq(sock, timeout: float = 20.0):
    """A multipart message from a pyzmq socket without blocking the reactor."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            assert time.monotonic() < deadline, "timed out waiting for libzmq"
            await deferLater(reactor, 0.01, lambda: None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

