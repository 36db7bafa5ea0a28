"""jkg's ZMTP reader against hostile byte streams: every bound holds, nothing else changes.

The reader is driven synchronously: a fake socket hands it a byte stream in
chunks of any size and a memory reactor stands in for the real one, so
hypothesis can try thousands of streams in a few seconds.  The end-to-end
attacks with a real gateway are in ``test_hostile_kernel.py``.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock

from jkg.kernels import zmtp_wire
from jkg.kernels.errorlog import ProtocolErrorLog
from jkg.kernels.zmtp import ZmtpConnection, make_factory
from jkg.kernels.zmtp_wire import FIRST_ALLOCATION, GREETING_WAIT, ReadLimits, encode_message, ready_command

PEER_HELLO = zmtp_wire.GREETING + ready_command(b"ROUTER", None)


class ChunkSocket:
    """Gives the reader ``data`` in the chunk sizes asked for, then "would block"."""

    def __init__(self, data: bytes, chunks: list[int]):
        self._data = memoryview(data)
        self._chunks = list(chunks)
        self.offered = 0

    def recv_into(self, view) -> int:
        if self.offered >= len(self._data):
            raise BlockingIOError
        size = self._chunks.pop(0) if self._chunks else len(self._data)
        size = max(1, min(size, len(view), len(self._data) - self.offered))
        view[:size] = self._data[self.offered:self.offered + size]
        self.offered += size
        return size

    def send(self, data) -> int:
        return len(data)

    def sendmsg(self, pieces) -> int:
        return sum(len(p) for p in pieces)

    def close(self) -> None:
        pass

    def fileno(self) -> int:
        return -1


def connection(limits: ReadLimits):
    """A DEALER whose socket is a ChunkSocket; returns it, the messages it delivers, and its drops."""
    reactor = MemoryReactorClock()
    context = make_factory(reactor, limits, ProtocolErrorLog(reactor))
    got = []
    conn = ZmtpConnection(context, b"DEALER", "ipc:///nonexistent/jkg-test", got.append)
    lost = []
    original = conn._lost

    def record_lost(why):
        lost.append(str(why))
        original(why)

    conn._lost = record_lost
    return conn, got, lost


def feed(conn, data: bytes, chunks=()) -> ChunkSocket:
    sock = ChunkSocket(data, chunks)
    conn._sock, conn._state = sock, GREETING_WAIT
    for _ in range(100_000):
        while conn._drain_call is not None:  # frames left for a later reactor turn
            conn._reactor.advance(0)
        if conn._sock is None or sock.offered >= len(data):
            break
        conn.doRead()
    return sock


def stream(messages) -> bytes:
    return PEER_HELLO + b"".join(bytes(piece) for frames in messages for piece in encode_message(frames))


def test_a_huge_announced_frame_is_refused_on_its_header():
    conn, got, lost = connection(ReadLimits(max_frame=16 << 20, max_message=16 << 20))
    header = bytes((zmtp_wire.LONG,)) + (1 << 30).to_bytes(8, "big")  # 1 GiB announced
    feed(conn, PEER_HELLO + header + b"x" * 1000)
    assert got == [] and lost and "1073741824 bytes" in lost[0]
    assert conn._big is None  # nothing was allocated for it


def test_a_large_frame_buffer_grows_only_as_its_bytes_arrive():
    conn, got, lost = connection(ReadLimits(max_frame=1 << 30, max_message=1 << 30))
    header = bytes((zmtp_wire.LONG,)) + (512 << 20).to_bytes(8, "big")  # 512 MiB announced, allowed
    feed(conn, PEER_HELLO + header + b"y" * (1 << 20))
    assert not lost and conn._big is not None
    assert len(conn._big) <= FIRST_ALLOCATION  # not 512 MiB
    feed(conn, b"y" * (9 << 20))  # 10 MiB in: the buffer follows at most twice what came
    assert len(conn._big) <= 2 * (10 << 20) and not lost


def test_frames_per_message_are_bounded():
    conn, got, lost = connection(ReadLimits(max_frames=64))
    feed(conn, stream([[b"ok"], [b"a"] * 65, [b"never"]]))
    assert got == [[b"ok"]] and lost and "more than 64 frames" in lost[0]


def test_message_size_is_bounded_across_frames():
    conn, got, lost = connection(ReadLimits(max_frame=100_000, max_message=150_000))
    feed(conn, stream([[b"x" * 90_000], [b"x" * 90_000, b"x" * 90_000]]))
    assert [len(bytes(f)) for f in got[0]] == [90_000] and len(got) == 1
    assert lost and "more than 150000 bytes" in lost[0]


def test_a_flood_of_tiny_frames_yields_the_reactor():
    conn, got, lost = connection(ReadLimits())
    data = stream([[b"z"]] * 300_000)
    sock = ChunkSocket(data, [])
    conn._sock, conn._state = sock, GREETING_WAIT
    conn.doRead()  # one read event handles a slice of frames; the rest waits for a later reactor turn
    assert 0 < len(got) <= zmtp_wire.FRAME_SLICE
    assert conn._drain_call is not None
    for _ in range(1000):
        if conn._drain_call is None and sock.offered >= len(data):
            break
        if conn._drain_call is not None:
            conn._reactor.advance(0)
        else:
            conn.doRead()
    assert len(got) == 300_000  # nothing lost


frame_sizes = st.one_of(st.integers(0, 300), st.sampled_from([255, 256, 65_535, 65_536, 70_000, 200_000]))
messages_strategy = st.lists(st.lists(frame_sizes, min_size=1, max_size=6), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=messages_strategy, chunks=st.lists(st.integers(1, 300_000), max_size=40),
       max_frame=st.sampled_from([300, 70_000, 10 ** 9]), max_frames=st.integers(1, 7),
       max_message=st.sampled_from([500, 150_000, 10 ** 9]))
def test_reader_delivers_exactly_the_messages_within_the_limits(sizes, chunks, max_frame, max_frames,
                                                               max_message):
    limits = ReadLimits(max_frame=max_frame, max_message=max_message, max_frames=max_frames)
    messages = [[bytes([index % 251]) * size for index, size in enumerate(frame_sizes)] for frame_sizes in sizes]
    expected = []
    violated = False
    for frames in messages:
        total = 0
        for count, frame in enumerate(frames):
            if zmtp_wire.frame_refusal(limits, len(frame), count, total):
                violated = True
                break
            total += len(frame)
        if violated:
            break
        expected.append(frames)
    conn, got, lost = connection(limits)
    feed(conn, stream(messages), chunks)
    assert [[bytes(f) for f in m] for m in got] == expected
    assert bool(lost) == violated


class FullSocket(ChunkSocket):
    """A kernel that reads nothing: every send would block, until ``open`` is set."""

    open = False

    def sendmsg(self, pieces) -> int:
        if not self.open:
            raise BlockingIOError
        return sum(len(p) for p in pieces)


def test_what_waits_for_a_kernel_that_does_not_read_is_bounded():
    conn, got, lost = connection(ReadLimits(send_buffer=8 << 20))
    sock = FullSocket(PEER_HELLO, [])
    conn._sock, conn._state = sock, GREETING_WAIT
    conn.doRead()  # handshake done: READY
    assert conn.ready
    for _ in range(100):  # 100 MiB offered to a kernel that reads nothing
        conn.send([b"x" * (1 << 20)])
    assert conn._out_bytes <= (8 << 20) + (1 << 20) + 1024
    sock.open = True
    conn.doWrite()
    assert conn._out_bytes == 0 and not conn._out
    conn.send([b"after"])  # the connection works on once the kernel reads again
    assert conn._out_bytes == 0


def test_what_is_queued_for_an_unreachable_kernel_is_bounded_and_keeps_the_newest():
    conn, _, _ = connection(ReadLimits(send_buffer=8 << 20))
    for index in range(40):
        conn.send([bytes([index]) * (1 << 20)])
    assert conn._queued_bytes <= (8 << 20) + (1 << 20)
    assert bytes(conn._queued[-1][0][:1]) == bytes([39])
