"""Who watches a kernel connection's socket (``jkg.kernels.readiness``).

Under the asyncio reactor (as ``twistd jkg`` and this suite run) the socket
is watched on the reactor's asyncio loop directly; any other reactor watches
it through ``addReader``/``addWriter``.  Either way the connection works,
stops being watched when paused or closed, and an error that escapes a read
drops the connection, which then reconnects.
"""
from __future__ import annotations

import asyncio
import socket

import pytest_twisted
import zmq
from twisted.internet import reactor
from twisted.internet.testing import MemoryReactor

from jkg.kernels.readiness import running_loop_of
from jkg.kernels.zmtp import ZmtpConnection, make_factory
from zmtp_support import recv_zmq, until


def test_only_a_running_asyncio_reactor_has_a_loop_to_watch_on():
    assert running_loop_of(MemoryReactor()) is None


@pytest_twisted.ensureDeferred
async def test_on_the_asyncio_reactor_the_loop_watches_the_socket_and_forgets_it_when_closed(zctx):
    context, ours = zctx
    loop = asyncio.get_running_loop()
    assert running_loop_of(reactor) is loop
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    got = []
    dealer = ZmtpConnection(ours, b"DEALER", f"tcp://127.0.0.1:{port}", got.append, identity=b"loop")
    dealer.send([b"ping"])
    assert await recv_zmq(router) == [b"loop", b"ping"]
    for n in range(50):
        router.send_multipart([b"loop", str(n).encode()])
    await until(lambda: len(got) == 50, "50 messages")
    assert got == [[str(n).encode()] for n in range(50)]
    assert dealer not in reactor.getReaders()  # Twisted's dispatch is not in the way
    fd = dealer.fileno()

    dealer.pause_reading()
    assert not loop.remove_reader(fd), "a paused connection's socket is still watched"
    router.send_multipart([b"loop", b"while paused"])
    dealer.resume_reading()
    await until(lambda: len(got) == 51, "the message sent while paused")
    assert got[-1] == [b"while paused"]

    dealer.close()
    assert not loop.remove_reader(fd), "a closed connection's socket is still watched"
    assert not loop.remove_writer(fd)
    router.close(linger=0)


def test_another_reactor_watches_the_socket_through_add_reader_and_add_writer():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    fake = MemoryReactor()
    dealer = ZmtpConnection(make_factory(fake), b"DEALER", f"tcp://127.0.0.1:{server.getsockname()[1]}",
                            lambda frames: None)
    try:
        assert dealer in fake.getWriters()  # connecting: the greeting waits for the socket
        peer, _ = server.accept()
        dealer.doWrite()  # what the reactor would call once the socket is writable
        assert dealer in fake.getReaders() and dealer not in fake.getWriters()
        assert peer.recv(10)[:1] == b"\xff"  # the ZMTP greeting went out
        dealer.close()
        assert dealer not in fake.getReaders() and dealer not in fake.getWriters()
        peer.close()
    finally:
        dealer.close()
        server.close()


@pytest_twisted.ensureDeferred
async def test_an_error_escaping_a_read_drops_the_connection_and_it_reconnects(zctx):
    context, ours = zctx
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    got, ready = [], []
    dealer = ZmtpConnection(ours, b"DEALER", f"tcp://127.0.0.1:{port}", got.append,
                            on_ready=lambda: ready.append(True))
    dealer.send([b"hello"])
    first, hello = await recv_zmq(router)
    assert hello == b"hello"
    parse = dealer._parse

    def broken_once():
        dealer._parse = parse
        raise RuntimeError("a bug in the reader")

    dealer._parse = broken_once
    router.send_multipart([first, b"lost with the connection"])
    await until(lambda: len(ready) == 2, "the connection made again")
    dealer.send([b"again"])
    second, again = await recv_zmq(router)
    assert again == b"again" and second != first  # (libzmq names each connection)
    router.send_multipart([second, b"after"])
    await until(lambda: got, "a message on the new connection")
    assert got == [[b"after"]]
    dealer.close()
    router.close(linger=0)
