"""iopub batches and pacing: what one read brings goes to each client in one go, and a stream is read in batches.

Unit tests drive :class:`jkg.kernels.kernel.ManagedKernel` with fake channels and
the pure :class:`jkg.kernels.pacing.IopubPacer`; the ZMTP hold runs against
libzmq (pyzmq's PUB playing the kernel) on 127.0.0.1; the TCP outbox writes to a
real socket.  The end-to-end tests are in tests/test_iopub_batches.py.
"""
import json

import pytest_twisted
import zmq
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater

from jkg.kernels.kernel import ManagedKernel
from jkg.kernels.messages import KernelMessage
from jkg.kernels.pacing import STREAM_AFTER, IopubPacer
from jkg.kernels.zmtp import ZmtpConnection
from jkg.testing import FakeChannels, FakeLaunchedKernel, RecordingClient
from jkg.web.frames import Frame, FrameCache, encode_v1_frame
from jkg.web.outbox import TCPOutbox
from zmtp_support import recv_all, served_connection, until


def make_kernel():
    return ManagedKernel("k1", "python3", FakeLaunchedKernel(), FakeChannels, Clock(), 1_000_000)


def message(msg_type="display_data", n=0, parent_id="exec-1"):
    header = {"msg_id": f"{msg_type}-{n}", "msg_type": msg_type}
    content = {"execution_state": "idle"} if msg_type == "status" else {"n": n}
    parts = [json.dumps(header).encode(), json.dumps({"msg_id": parent_id}).encode(), b"{}",
             json.dumps(content).encode()]
    return KernelMessage("iopub", b"", parts, header["msg_id"], msg_type, parent_id)


class BatchRecorder(RecordingClient):
    """Remembers each batch it was handed (the very list objects)."""

    def __init__(self, session_id):
        super().__init__(session_id)
        self.batches = []

    def deliver_all(self, messages):
        self.batches.append(messages)
        super().deliver_all(messages)


# ---------------------------------------------------------------- the pacer (pure)


def test_ordinary_executions_are_never_held():
    pacer = IopubPacer(hold=0.004)
    for n in range(100):  # busy, execute_input, idle -- over and over, read one by one or together
        assert pacer.after_read([message("status")]) == 0
        assert pacer.after_read([message("execute_input", n)]) == 0
        assert pacer.after_read([message("status")]) == 0
        assert pacer.after_read([message("status"), message("execute_input", n), message("status")]) == 0


def test_a_stream_is_held_after_enough_outputs_and_freed_when_it_slows_down():
    pacer = IopubPacer(hold=0.01, stream_after=4)
    assert [pacer.after_read([message(n=n)]) for n in range(6)] == [0, 0, 0, 0.01, 0, 0]
    # the 4th output in a row starts holding; a held read that found only one message ends it
    assert pacer.after_read([message(n=n) for n in range(5)]) == 0.01  # 2 + 5 outputs in a row
    assert pacer.after_read([message(n=n) for n in range(7)]) == 0.01  # batches keep it held
    assert pacer.after_read([message(n=1), message("status")]) == 0  # the execution ended


def test_the_channels_hold_iopub_only_while_a_kernel_streams(monkeypatch):
    from jkg.kernels.channels import KernelChannels

    holds = []

    class Iopub:
        def hold_reading(self, seconds):
            holds.append(seconds)

    channels = KernelChannels.__new__(KernelChannels)  # just the read bookkeeping: no sockets
    channels._sockets, channels._batch, channels.closed = {"iopub": Iopub()}, [], False
    channels._pacer, got = IopubPacer(hold=0.005), []
    channels._on_messages = got.append
    for n in range(STREAM_AFTER - 1):
        channels._batch.append(message(n=n))
        channels._iopub_read_done()
    assert holds == [] and len(got) == STREAM_AFTER - 1
    channels._batch.extend([message(n=100), message(n=101)])
    channels._iopub_read_done()
    assert holds == [0.005] and [m.msg_id for m in got[-1]] == ["display_data-100", "display_data-101"]
    channels._batch.append(message("status"))
    channels._iopub_read_done()
    assert holds == [0.005]


# ---------------------------------------------------------------- the kernel: one read, one batch


def test_one_read_goes_to_every_client_as_one_batch_in_order():
    kernel = make_kernel()
    a, b = BatchRecorder("a"), BatchRecorder("b")
    kernel.attach(a)
    kernel.attach(b)
    read = [message(n=n) for n in range(5)]
    kernel.channels.on_messages(read)
    assert len(a.batches) == len(b.batches) == 1
    assert a.batches[0] is b.batches[0]  # the same list: the web layer encodes each message once
    assert [m.msg_id for m in a.delivered] == [m.msg_id for m in read] == [m.msg_id for m in b.delivered]


def test_a_read_without_clients_is_kept_whole_for_replay():
    kernel = make_kernel()
    gone = RecordingClient("s")
    kernel.attach(gone)
    kernel.detach(gone)
    kernel.channels.on_messages([message(n=n) for n in range(3)])
    back = RecordingClient("s")
    kernel.attach(back)
    assert [m.msg_id for m in back.delivered] == [f"display_data-{n}" for n in range(3)]


# ---------------------------------------------------------------- the web side: frames and one write


def test_a_batch_is_encoded_once_per_format_for_all_clients():
    cache = FrameCache()
    calls = []

    def encode(m):
        calls.append(m.msg_id)
        return encode_v1_frame(m)

    batch = [message(n=n) for n in range(3)]
    first = cache.frames(batch, "v1", encode)
    assert cache.frames(batch, "v1", encode) is first
    assert len(calls) == 3
    assert cache.frames([message(n=9)], "v1", encode) is not first  # a new batch
    assert len(calls) == 4


@pytest_twisted.ensureDeferred
async def test_the_tcp_outbox_writes_a_batch_whole_and_in_order_however_much_the_socket_takes():
    port, transport, client = await served_connection()
    try:
        outbox = TCPOutbox(transport, 0)
        await until(lambda: outbox.lent == 0, "the transport's first word")
        small = [Frame([bytes([n]) * 100], True) for n in range(5)]
        big = [Frame([bytes([n]) * 3_000_000], True) for n in range(5, 8)]  # more than the socket takes at once
        assert outbox.send_all(small) is None
        assert outbox.waiting() == 0  # five frames, all taken by one write
        assert outbox.send_all(big) is None and outbox.waiting() > 0
        assert outbox.send_all(small) is None  # queued behind
        frames = small + big + small
        total = sum(frame.size for frame in frames)
        assert outbox.backlog.appended == total
        received = await recv_all(client, total)
        assert received == b"".join(b"".join(bytes(p) for p in frame.pieces) for frame in frames)
    finally:
        client.close()
        await port.stopListening()


# ---------------------------------------------------------------- ZMTP: a held socket, against libzmq


@pytest_twisted.ensureDeferred
async def test_a_held_connection_reads_what_came_meanwhile_in_one_read(zctx):
    context, ours = zctx
    pub = context.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    got, reads = [], []
    sub = ZmtpConnection(ours, b"SUB", f"tcp://127.0.0.1:{port}", got.append, subscribe=True,
                         on_read_done=lambda: reads.append(len(got)))
    try:
        await until(lambda: sub.ready, "the handshake")
        for _ in range(50):  # a PUB drops what it sends before the subscription arrived
            pub.send_multipart([b"probe"])
            await deferLater(reactor, 0.02, lambda: None)
            if got:
                break
        got.clear()
        reads.clear()
        sub.hold_reading(0.3)
        for n in range(20):
            pub.send_multipart([b"topic", str(n).encode()])
        await deferLater(reactor, 0.15, lambda: None)
        assert got == []  # held: it all waits in the socket
        await until(lambda: len(got) == 20, "the held messages")
        assert [int(frames[1]) for frames in got] == list(range(20))
        assert reads == [20]  # one read brought them all
        sub.hold_reading(0.3)
        sub.close()  # a close while held cancels the hold
        await deferLater(reactor, 0.4, lambda: None)
    finally:
        sub.close()
        pub.close(linger=0)
