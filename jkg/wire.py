"""Conversion between kernel messages "in parts" and Jupyter kernel WebSocket frames.

A kernel message in parts is a channel plus ``[header, parent_header, metadata, content,
*buffers]``: the JSON bytes exactly as the kernel's ZeroMQ frames carried them, then raw
buffers.  A gateway mostly re-frames messages, so this module works on bytes and decodes
only what it must: v1 frames carry the parts verbatim (a length table plus a join; only the
client's header is parsed, for routing), and legacy text frames are assembled by splicing
the part bytes into a fixed JSON skeleton.  Legacy client frames must be fully parsed (that
is the format); their four objects are then packed compactly.

Client input is untrusted: the decoders raise :class:`WireError`, and only that, for any
malformed frame, so callers need one ``except`` clause.  Layouts follow jupyter_server's
``services/kernels/connection/base.py`` (gateway protocol reference, 4.2-4.4).
"""

from __future__ import annotations

from functools import lru_cache
from itertools import accumulate
from json.encoder import encode_basestring_ascii as _encode_basestring_ascii
from operator import le
from struct import Struct
from struct import error as _struct_error
from typing import Any, NamedTuple, Sequence

from .strict_json import loads_exact, loads_header as _loads_header, pack_json

__all__ = [
    "V1_PROTOCOL", "CHANNELS", "WireError", "UnknownChannel", "IncomingMessage", "encode_v1", "encode_v1_pieces",
    "decode_v1", "encode_legacy", "encode_legacy_pieces", "decode_client_v1",
    "decode_client_legacy_text", "decode_client_legacy_binary", "pack_json", "server_frame_header",
]

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
CHANNELS = frozenset({"shell", "iopub", "stdin", "control"})

_CHANNEL_BYTES = {name: name.encode("ascii") for name in CHANNELS}
_CHANNEL_BY_BYTES = {raw: name for name, raw in _CHANNEL_BYTES.items()}
# Legacy JSON endings; jupyter_server pops "buffers" before serializing binary frames.
_TEXT_TAIL = {n: b',"buffers":[],"channel":"' + b + b'"}' for n, b in _CHANNEL_BYTES.items()}
_BINARY_TAIL = {n: b',"channel":"' + b + b'"}' for n, b in _CHANNEL_BYTES.items()}
_U64 = Struct("<Q")
_U32 = Struct(">I")
_OPTIONAL_OBJECTS = ("parent_header", "metadata", "content")


class WireError(ValueError):
    """A client frame that cannot be a kernel message; str() is a short human reason safe to send to the client."""


class UnknownChannel(WireError):
    """A client message well formed but for a channel that does not exist (ignored, as jupyter_server does)."""


class IncomingMessage(NamedTuple):
    """A client message: ``parts`` are ready to be HMAC-signed and sent, ``header`` is parsed for routing."""

    channel: str
    header: dict
    parts: list[bytes]


@lru_cache(maxsize=64)
def _le_u64s(count: int) -> Struct:
    """``count`` little-endian uint64s; cached since counts repeat (few buffer counts)."""
    return Struct("<%dQ" % count)


@lru_cache(maxsize=64)
def _be_u32s(count: int) -> Struct:
    """``count`` big-endian uint32s, the legacy binary offset table."""
    return Struct(">%dI" % count)


def _quote(value: Any) -> bytes:
    """JSON-encode msg_id/msg_type; ASCII escapes keep odd strings (lone surrogates) encodable."""
    if type(value) is str:
        return _encode_basestring_ascii(value).encode("ascii")
    return pack_json(value)


def _as_bytes(frame: Any, what: str) -> bytes:
    if isinstance(frame, (bytes, bytearray, memoryview)):
        return bytes(frame)
    raise WireError(f"{what} frames must be binary")


def _check_header(header: Any) -> dict:
    if type(header) is not dict:
        raise WireError("header must be a JSON object")
    if type(header.get("msg_id")) is not str:
        raise WireError("header.msg_id must be a string")
    if type(header.get("msg_type")) is not str:
        raise WireError("header.msg_type must be a string")
    return header


def encode_v1_pieces(channel: str, parts: Sequence[bytes]) -> list:
    """:func:`encode_v1` as a list of pieces to be written one after the other (nothing copied).

    The first piece is the offset table and channel name; the others are the parts
    themselves (bytes or other buffers), so a large message can be written with
    scatter-gather I/O instead of being joined.
    """
    n = len(parts)
    if n < 4:
        raise ValueError("a kernel message has at least 4 parts")
    name = _CHANNEL_BYTES.get(channel) or channel.encode("utf-8")
    offsets = accumulate((8 * (n + 3), len(name), *map(len, parts)))
    return [_le_u64s(n + 3).pack(n + 2, *offsets) + name, *parts]


def encode_v1(channel: str, parts: Sequence[bytes]) -> bytes:
    """Frame a kernel message for a ``v1.kernel.websocket.jupyter.org`` socket.

    Layout: little-endian uint64 ``offset_number``, then that many uint64 offsets from the
    frame start (channel, each part, total length).  Parts are copied once, never read.

    :raises ValueError: fewer than four parts (not a kernel message).
    """
    return b"".join(encode_v1_pieces(channel, parts))


def _check_buffer_count(buffers: int, max_buffers: int | None) -> None:
    """Refuse a frame announcing more buffers than allowed, before its offset table is read.

    Millions of empty buffers in one frame cost nothing to send but seconds
    of CPU and gigabytes downstream (each becomes a ZMTP frame to the kernel).
    """
    if max_buffers is not None and buffers > max_buffers:
        raise WireError(f"message of {buffers} buffers (the limit is {max_buffers})")


def decode_v1(frame: bytes, max_buffers: int | None = None) -> tuple[str, list[bytes]]:
    """Split a v1 frame into ``(channel, parts)``, validating the layout strictly.

    The offsets must start right after the table, never go backwards and end at the frame
    end, with a known channel and at least four parts: a corrupt or hostile frame fails
    here rather than as a confusing kernel error.

    :param max_buffers: most buffers (parts after the four JSON ones); ``None``: no limit.
    :raises WireError: for anything that is not a well-formed v1 frame.
    """
    frame = _as_bytes(frame, "v1")
    size = len(frame)
    if size < 8:
        raise WireError("frame too short")
    (count,) = _U64.unpack_from(frame)
    if count < 6:
        raise WireError("frame needs a channel and at least 4 message parts")
    _check_buffer_count(count - 6, max_buffers)
    table_end = 8 * (count + 1)
    if table_end > size:
        raise WireError("offset table truncated")
    offsets = _le_u64s(count).unpack_from(frame, 8)
    if offsets[0] != table_end or offsets[-1] != size or not all(map(le, offsets, offsets[1:])):
        raise WireError("offsets out of order or out of range")
    raw_name = frame[offsets[0]:offsets[1]]
    channel = _CHANNEL_BY_BYTES.get(raw_name)
    if channel is None:
        raise UnknownChannel(f"unknown channel {raw_name[:32].decode('utf-8', 'replace')!r}")
    return channel, [frame[a:b] for a, b in zip(offsets[1:], offsets[2:])]


def encode_legacy(channel: str, parts: Sequence[bytes], msg_id: str, msg_type: str) -> tuple[bytes, bool]:
    """Frame a kernel message for a legacy (no subprotocol) socket; returns ``(payload, is_binary)``.

    Without buffers: the UTF-8 JSON text jupyter_server sends (same keys, same order), made
    by splicing the parts into a skeleton.  With buffers: big-endian uint32 ``nbufs`` (JSON
    + buffers), ``nbufs`` big-endian uint32 offsets, the JSON without ``"buffers"``, the
    buffers.  ``msg_id``/``msg_type`` come from the caller, which parsed the header already.

    :raises ValueError: fewer than four parts, or too large for 32-bit offsets.
    """
    pieces, binary = encode_legacy_pieces(channel, parts, msg_id, msg_type)
    return b"".join(pieces), binary


def encode_legacy_pieces(channel: str, parts: Sequence[bytes], msg_id: str,
                         msg_type: str) -> tuple[list, bool]:
    """:func:`encode_legacy` as ``(pieces, is_binary)``: pieces to write one after the other.

    The parts appear among the pieces as they are (nothing is copied), so a large message
    can be written with scatter-gather I/O instead of being joined.
    """
    if len(parts) < 4:
        raise ValueError("a kernel message has at least 4 parts")
    buffers = parts[4:]
    tails = _BINARY_TAIL if buffers else _TEXT_TAIL
    tail = tails.get(channel)
    if tail is None:
        tail = (b',"buffers":[]' if not buffers else b"") + b',"channel":' + _quote(channel) + b"}"
    pieces = (
        b'{"header":', parts[0], b',"msg_id":', _quote(msg_id), b',"msg_type":', _quote(msg_type),
        b',"parent_header":', parts[1], b',"metadata":', parts[2], b',"content":', parts[3], tail,
    )
    if not buffers:
        return list(pieces), False
    nbufs = 1 + len(buffers)
    offsets = accumulate((4 * (nbufs + 1), sum(map(len, pieces)), *map(len, buffers[:-1])))
    try:
        table = _be_u32s(nbufs + 1).pack(nbufs, *offsets)
    except _struct_error:
        raise ValueError("message too large for the legacy binary format") from None
    return [table, *pieces, *buffers], True


def decode_client_v1(frame: bytes, max_buffers: int | None = None, max_size: int | None = None) -> IncomingMessage:
    """Decode a client v1 frame; only the header is parsed, the other parts pass through.

    The parts are slices of the frame, so the decoded size is the frame's (``max_size`` is
    for the signature shared with the legacy decoders).

    :raises WireError: bad layout, too many buffers, or a header without string
        ``msg_id``/``msg_type``.
    """
    channel, parts = decode_v1(frame, max_buffers)
    try:
        header = _loads_header(parts[0])
    except (ValueError, RecursionError):
        raise WireError("header is not valid UTF-8 JSON") from None
    return IncomingMessage(channel, _check_header(header), parts)


def _from_legacy(msg: Any, buffers: list[bytes], max_size: int | None = None) -> IncomingMessage:
    """Check a parsed legacy message and pack its four objects; as in jupyter_server a missing
    ``channel`` means shell, and missing/null parent_header/metadata/content mean ``{}``."""
    if type(msg) is not dict:
        raise WireError("message must be a JSON object")
    channel = msg.get("channel")
    if channel is None:
        channel = "shell"
    elif type(channel) is not str:
        raise WireError("channel must be a string")
    elif channel not in CHANNELS:
        raise UnknownChannel(f"unknown channel {channel[:32]!r}")
    header = _check_header(msg.get("header"))
    parts = [header]
    for key in _OPTIONAL_OBJECTS:
        value = msg.get(key)
        if value is None:
            value = {}
        elif type(value) is not dict:
            raise WireError(f"{key} must be a JSON object")
        parts.append(value)
    try:
        packed = [pack_json(part) for part in parts]
    except (ValueError, TypeError, RecursionError):
        raise WireError("message cannot be re-encoded as strict JSON") from None
    if max_size is not None and sum(map(len, packed)) > max_size:
        raise WireError(f"message over {max_size} bytes once decoded")
    packed.extend(buffers)
    return IncomingMessage(channel, header, packed)


def _loads_message(data: str | bytes | memoryview) -> Any:
    """Full, exact parse (the dicts are re-packed); refusals become :class:`WireError`."""
    try:
        return loads_exact(data)
    except UnicodeDecodeError:
        raise WireError("message is not valid UTF-8") from None
    except (ValueError, RecursionError):
        raise WireError("message is not valid JSON") from None


def decode_client_legacy_text(payload: str | bytes, max_buffers: int | None = None,
                               max_size: int | None = None) -> IncomingMessage:
    """Decode a legacy text frame (a whole message as JSON); ``"buffers"`` is ignored.

    :param max_size: most bytes of the four JSON parts as re-encoded for the kernel.
    :raises WireError: bad UTF-8/JSON, unknown channel, wrongly typed fields, too large.
    """
    if not isinstance(payload, (str, bytes, bytearray, memoryview)):
        raise WireError("text frame must be str or bytes")
    return _from_legacy(_loads_message(payload), [], max_size)


def split_legacy_binary(frame: bytes, max_buffers: int | None = None) -> tuple[memoryview, list[bytes]]:
    """``(JSON part, buffers)`` of a legacy binary frame (either direction), its layout checked strictly.

    Big-endian uint32 ``nbufs``, ``nbufs`` offsets (the first right after the
    table, never going backwards, within the frame), then the parts.

    :raises WireError: bad layout.
    """
    frame = _as_bytes(frame, "legacy binary")
    size = len(frame)
    if size < 8:
        raise WireError("frame too short")
    (nbufs,) = _U32.unpack_from(frame)
    if nbufs < 1:
        raise WireError("frame has no message part")
    _check_buffer_count(nbufs - 1, max_buffers)
    table_end = 4 * (nbufs + 1)
    if table_end > size:
        raise WireError("offset table truncated")
    offsets = _be_u32s(nbufs).unpack_from(frame, 4)
    if offsets[0] != table_end or offsets[-1] > size or not all(map(le, offsets, offsets[1:])):
        raise WireError("offsets out of order or out of range")
    ends = (*offsets[1:], size)
    return memoryview(frame)[offsets[0]:ends[0]], [frame[a:b] for a, b in zip(offsets[1:], ends[1:])]


def decode_client_legacy_binary(frame: bytes, max_buffers: int | None = None,
                                 max_size: int | None = None) -> IncomingMessage:
    """Decode a legacy binary frame: offset table, JSON message, then the buffers.

    The JSON part is checked as in the text case (a ``"buffers"`` key in it is ignored, as
    jupyter_server overwrites it); the binary buffers become ``parts[4:]``.

    :raises WireError: bad layout, or a bad JSON part.
    """
    data, buffers = split_legacy_binary(frame, max_buffers)
    return _from_legacy(_loads_message(data), buffers, max_size)


_FRAME_SHORT = Struct(">BB")
_FRAME_MEDIUM = Struct(">BBH")
_FRAME_LONG = Struct(">BBQ")


def server_frame_header(length: int, binary: bool) -> bytes:
    """The header of one unfragmented, unmasked server-to-client WebSocket frame.

    Server frames are never masked (RFC 6455 5.1), so the complete frame for a
    message is the same for every client: build it once, write it to many.
    """
    first = 0x82 if binary else 0x81
    if length < 126:
        return _FRAME_SHORT.pack(first, length)
    if length < 65536:
        return _FRAME_MEDIUM.pack(first, 126, length)
    return _FRAME_LONG.pack(first, 127, length)
