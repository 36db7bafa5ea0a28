"""ZMTP 3.0 on the wire: greeting, frames, commands; pure functions and the reader's buffers.

https://rfc.zeromq.org/spec/23/ -- the wire protocol of libzmq >= 4 and every
Jupyter kernel -- with the NULL mechanism, client side only.  Nothing here
touches a socket or knows about Jupyter: :mod:`jkg.kernels.zmtp` drives the
connections, :mod:`jkg.kernels.channels` puts Jupyter messages on them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

#: Frames at least this large are received into a buffer of their own and passed
#: on as a view (never copied); smaller ones are copied out of the read buffer.
LARGE_FRAME = 64 * 1024
#: The read buffer; one ``recv_into`` fills at most this much.
READ_BUFFER = 256 * 1024
#: Bytes read from one connection before other connections get a turn.
READ_BUDGET = 4 * 1024 * 1024
#: Largest frame accepted from a kernel (a corrupt length must not allocate terabytes).
MAX_FRAME = 1 << 34
#: Messages kept for a kernel that is not reachable (yet); older ones are dropped beyond this.
MAX_QUEUED = 10_000
RECONNECT_FIRST = 0.01
RECONNECT_MAX = 1.0
IOV_MAX = 512

GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
MORE, LONG, COMMAND = 1, 2, 4
#: the states of a connection
CONNECTING, GREETING_WAIT, HANDSHAKE, READY, WAITING, CLOSED = range(6)


#: A large frame's buffer starts at most this big and grows as its bytes arrive,
#: so that a length header alone never makes the gateway allocate much.
FIRST_ALLOCATION = 4 * 1024 * 1024
#: What one frame costs of a read's budget besides its bytes: a flood of tiny
#: frames must not keep the reactor from other kernels for long.
FRAME_COST = 256
#: Frames handled in one go; the rest of the read buffer waits for the next reactor turn.
FRAME_SLICE = 2048


class ProtocolError(Exception):
    """The peer does not speak ZMTP 3 with the NULL mechanism as expected."""


@dataclass(frozen=True)
class ReadLimits:
    """What one kernel connection may hold: a kernel is a tenant's code, every byte hostile.

    A connection holds at most its read buffer plus one message in progress,
    and that message is bounded in bytes and frames; what waits to be sent to
    a kernel that does not read (or is not reachable yet) is bounded by
    ``send_buffer`` plus one message.
    """

    max_frame: int = MAX_FRAME
    max_message: int = MAX_FRAME
    max_frames: int = 1024
    #: bytes waiting to go to one connection (kernel not reading, or not reachable yet)
    send_buffer: int = MAX_FRAME


def frame_refusal(limits: ReadLimits, size: int, frames: int, message_bytes: int) -> str | None:
    """Why a frame of ``size`` bytes may not follow ``frames`` frames of ``message_bytes`` bytes, or ``None``.

    Checked on the frame's header, before any of its bytes are stored.
    """
    if size > limits.max_frame:
        return f"frame of {size} bytes (the limit is {limits.max_frame})"
    if frames >= limits.max_frames:
        return f"message of more than {limits.max_frames} frames"
    if message_bytes + size > limits.max_message:
        return f"message of more than {limits.max_message} bytes"
    return None


def frame_header(size: int, flags: int) -> bytes:
    if size < 256:
        return bytes((flags, size))
    return bytes((flags | LONG,)) + size.to_bytes(8, "big")


def command(name: bytes, body: bytes) -> bytes:
    data = bytes((len(name),)) + name + body
    return frame_header(len(data), COMMAND) + data


def ready_command(socket_type: bytes, identity: bytes | None) -> bytes:
    props = [(b"Socket-Type", socket_type)]
    if identity is not None:
        props.append((b"Identity", identity))
    body = b"".join(bytes((len(name),)) + name + len(value).to_bytes(4, "big") + value for name, value in props)
    return command(b"READY", body)


def parse_properties(data: bytes) -> dict:
    props, pos = {}, 0
    while pos < len(data):
        size = data[pos]
        name = data[pos + 1:pos + 1 + size]
        pos += 1 + size
        length = int.from_bytes(data[pos:pos + 4], "big")
        props[name.decode("ascii", "replace").lower()] = data[pos + 4:pos + 4 + length]
        pos += 4 + length
        if pos > len(data):
            raise ProtocolError("truncated READY properties")
    return props


def encode_message(frames: Sequence) -> list:
    """The pieces (headers and the frames themselves, never copied) of one multipart message."""
    pieces = []
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        pieces.append(frame_header(len(frame), MORE if index < last else 0))
        pieces.append(frame)
    return pieces


def check_greeting(greeting: bytes) -> None:
    """:raises ProtocolError: unless ``greeting`` (64 bytes) is a ZMTP 3 peer's with the NULL mechanism."""
    if greeting[0] != 0xFF or greeting[9] != 0x7F:
        raise ProtocolError("not a ZMTP peer")
    if greeting[10] < 3:
        raise ProtocolError(f"ZMTP {greeting[10]}.x peer; ZMTP 3 is needed")
    if greeting[12:32].rstrip(b"\x00") != b"NULL":
        raise ProtocolError(f"security mechanism {greeting[12:32].rstrip(bytes(1))!r}; NULL is needed")


class BufferPool:
    """Buffers for large frames, lent as views and reused once no view of them is alive.

    A large frame is received into a buffer of its own and handed on as a
    view; a fresh buffer for each would cost page faults and zero-filling on
    every large message.  :meth:`get` lends a view of a pooled buffer whose
    earlier views are all gone (the message and every frame made of it).  At
    most ``keep`` buffers and ``max_bytes`` are kept.
    """

    GRAIN = 64 * 1024

    def __init__(self, keep: int = 4, max_bytes: int = 16 * 1024 * 1024):
        self.keep = keep
        self.max_bytes = max_bytes
        self._buffers: list[bytearray] = []

    def get(self, size: int) -> memoryview:
        """A writable view of at least ``size`` bytes that no other view shares.

        The buffer is lent for as long as this view, or any view made of it, lives.
        """
        buffers = self._buffers
        for buffer in buffers:
            if size <= len(buffer) <= 2 * size and _unviewed(buffer):
                return memoryview(buffer)
        buffer = bytearray(-(-size // self.GRAIN) * self.GRAIN)
        if len(buffers) < self.keep and sum(map(len, buffers)) + len(buffer) <= self.max_bytes:
            buffers.append(buffer)
        return memoryview(buffer)


def _unviewed(buffer: bytearray) -> bool:
    """Whether no view of ``buffer`` is alive.

    A bytearray refuses to change its size while any view of it is exported
    (``BufferError``: the buffer protocol's rule), so trying is the question
    asked in the language's terms -- not a reference count, which is CPython's
    bookkeeping.  The byte appended is removed at once; the first time may
    reallocate, never again (the removal keeps the room).
    """
    try:
        buffer.append(0)
    except BufferError:
        return False
    del buffer[-1]
    return True

