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


async def served_connection():
    """A Twisted TCP server transport on 127.0.0.1 and a plain client socket connected to it.

    :returns: ``(listening port, server transport, client socket)``; close the
        client and stop the port when done.
    """
    from twisted.internet.protocol import Factory, Protocol

    accepted = []

    class Server(Protocol):
        def connectionMade(self):  # noqa: N802 - Twisted API
            accepted.append(self.transport)

    port = reactor.listenTCP(0, Factory.forProtocol(Server), interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        await until(lambda: accepted, "the connection")
    except BaseException:
        client.close()
        await port.stopListening()
        raise
    return port, accepted[0], client


async def recv_all(client: socket.socket, total: int, timeout: float = 20.0) -> bytes:
    """Read ``total`` bytes from a plain socket without blocking the reactor (bounded)."""
    client.setblocking(False)
    received = bytearray()

    def read():
        try:
            while len(received) < total:
                chunk = client.recv(1 << 20)
                if not chunk:
                    break
                received.extend(chunk)
        except BlockingIOError:
            pass
        return len(received) == total

    await until(read, "every byte", timeout)
    return bytes(received)


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

