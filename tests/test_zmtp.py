"""jkg's ZMTP engine against libzmq: frames, transports, reconnection, the wire helpers.

libzmq (through pyzmq) plays the kernel: if jkg's own ZMTP client gets a frame
wrong, libzmq refuses it or delivers something else.  These run in-process on
pytest-twisted's asyncio reactor, with real sockets on 127.0.0.1; every wait is
bounded.
"""
import socket
import struct
import time

import pytest_twisted
import zmq
from twisted.internet import reactor
from twisted.internet.task import deferLater

from jkg.kernels import zmtp_wire
from jkg.kernels.zmtp import ZmtpConnection
from zmtp_support import free_port, recv_zmq, until

BIG = bytes(range(256)) * (3 * 1024 * 1024 // 256 + 7)  # > 3 MB, received into its own buffer


@pytest_twisted.ensureDeferred
async def test_dealer_and_libzmq_router_exchange_frames_exactly(zctx):
    context, ours = zctx
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    got = []
    ready = []
    dealer = ZmtpConnection(ours, b"DEALER", f"tcp://127.0.0.1:{port}", got.append, identity=b"jkg-id",
                            on_ready=lambda: ready.append(True))
    frames = [b"", b"small", BIG, b"\x00" * 300, "é🎉".encode(), b"last"]
    dealer.send(frames)  # may be queued: the handshake is not done yet
    identity, *received = await recv_zmq(router)
    assert identity == b"jkg-id" and received == frames
    assert ready == [True]

    router.send_multipart([identity, b"reply", BIG[:70000], b""])
    await until(lambda: got, "the reply")
    assert [bytes(part) for part in got[0]] == [b"reply", BIG[:70000], b""]
    # a large part arrives as a view of a buffer of its own, not a copy
    assert isinstance(got[0][1], memoryview)
    dealer.close()
    router.close(linger=0)


@pytest_twisted.ensureDeferred
async def test_ipc_transport(zctx, tmp_path):
    context, ours = zctx
    router = context.socket(zmq.ROUTER)
    path = str(tmp_path / "kernel-5555")
    router.bind(f"ipc://{path}")
    got = []
    dealer = ZmtpConnection(ours, b"DEALER", f"ipc://{path}", got.append, identity=b"ipc")
    dealer.send([b"over", b"unix"])
    assert await recv_zmq(router) == [b"ipc", b"over", b"unix"]
    router.send_multipart([b"ipc", b"back"])
    await until(lambda: got, "the answer")
    assert got == [[b"back"]]
    dealer.close()
    router.close(linger=0)


@pytest_twisted.ensureDeferred
async def test_sub_gets_every_message_of_a_libzmq_pub_in_order(zctx):
    context, ours = zctx
    pub = context.socket(zmq.XPUB)  # as ipykernel's iopub
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    got = []
    sub = ZmtpConnection(ours, b"SUB", f"tcp://127.0.0.1:{port}", got.append, subscribe=True)
    assert (await recv_zmq(pub)) == [b"\x01"]  # subscribed to everything
    sent = []
    for n in range(300):
        parts = [b"topic", str(n).encode(), BIG[: (n % 7) * 40000]]
        sent.append(parts)
        pub.send_multipart(parts)
    await until(lambda: len(got) == len(sent), "300 messages")
    assert [[bytes(p) for p in message] for message in got] == sent
    sub.close()
    pub.close(linger=0)


@pytest_twisted.ensureDeferred
async def test_messages_sent_before_the_kernel_listens_wait_and_go_out(zctx):
    context, ours = zctx
    port = free_port()
    dealer = ZmtpConnection(ours, b"DEALER", f"tcp://127.0.0.1:{port}", lambda frames: None, identity=b"early")
    dealer.send([b"one"])
    dealer.send([b"two", b"parts"])
    await deferLater(reactor, 0.1, lambda: None)  # a few refused connection attempts
    router = context.socket(zmq.ROUTER)
    router.bind(f"tcp://127.0.0.1:{port}")
    assert await recv_zmq(router) == [b"early", b"one"]
    assert await recv_zmq(router) == [b"early", b"two", b"parts"]
    dealer.close()
    router.close(linger=0)


@pytest_twisted.ensureDeferred
async def test_a_peer_that_is_not_zmtp_is_dropped_and_tried_again(zctx):
    _, ours = zctx
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    accepted = []

    def accept_and_babble():
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"x" * 100)
        accepted.append(conn)

    got = []
    dealer = ZmtpConnection(ours, b"DEALER", f"tcp://127.0.0.1:{server.getsockname()[1]}", got.append)

    async def two_attempts():
        deadline = time.monotonic() + 20
        while len(accepted) < 2:
            assert time.monotonic() < deadline, "no second attempt"
            accept_and_babble()
            await deferLater(reactor, 0.01, lambda: None)

    await two_attempts()
    assert got == [] and not dealer.ready
    dealer.close()
    for conn in accepted:
        conn.close()
    server.close()



def test_zmtp_frame_headers():
    assert zmtp_wire.frame_header(0, 0) == b"\x00\x00"
    assert zmtp_wire.frame_header(255, zmtp_wire.MORE) == b"\x01\xff"
    assert zmtp_wire.frame_header(256, 0) == b"\x02" + struct.pack(">Q", 256)
    ready = zmtp_wire.ready_command(b"DEALER", b"id")
    assert ready[0] == zmtp_wire.COMMAND and ready[2:8] == b"\x05READY"
    assert zmtp_wire.parse_properties(ready[8:]) == {"socket-type": b"DEALER", "identity": b"id"}


def test_buffer_pool_reuses_a_buffer_only_when_no_view_is_alive():
    pool = zmtp_wire.BufferPool(keep=2)
    view = pool.get(1_000_000)[:1_000_000].toreadonly()  # as the reader hands a large frame on
    part = view[10:20]  # a frame made of it
    first = view.obj
    del view
    assert pool.get(1_000_000).obj is not first  # still in use: a view of it lives
    del part
    again = pool.get(900_000)
    assert again.obj is first and len(first) == 1_048_576  # free again, and its size unchanged
    assert pool.get(900_000).obj is not first  # lent again, until ``again`` and its views are gone
