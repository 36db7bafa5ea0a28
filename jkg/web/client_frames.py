"""Client frames the gateway reads itself: whole, final, masked data frames, without autobahn's frame machine.

A client message is almost always one masked, final text or binary frame that
arrived whole.  autobahn's general frame machine costs ~30 us per such frame
here (and its ``dataReceived`` formats a debug line with click colours on
every read, whether or not debug logging is on); reading it here costs ~4 us
(benchmarks/README.md, the client-frame fast path).  Such frames -- checked as
strictly as autobahn checks them -- are unmasked and handed to ``onMessage``;
anything else (control frames, fragments, partial frames, sizes over the
limits, protocol errors) goes to autobahn, which also keeps handling the
connection's life (pings, the closing handshake).

:func:`whole_data_frames` is pure.  The ``autobahn_*`` functions are the only
places in jkg that touch autobahn's internal state: autobahn has no public way
to ask "between frames?", to say "traffic seen" from outside its reader, nor
to refuse a message whose frame has begun.
"""
from __future__ import annotations

from typing import Iterator

from autobahn.websocket.xormasker import create_xor_masker


def unmask(mask: bytes, data: bytes) -> bytes:
    """A client frame's payload, unmasked (RFC 6455 5.3)."""
    size = len(data)
    if size >= 4096:  # autobahn's vectorised masker
        return create_xor_masker(mask, size).process(data)
    key = int.from_bytes((mask * ((size >> 2) + 1))[:size], "little")
    return (int.from_bytes(data, "little") ^ key).to_bytes(size, "little")


def whole_data_frames(data: bytes, max_payload: int) -> Iterator[tuple[bytes, bool, int]]:
    """``(payload, binary, end)`` for each whole, final, masked data frame from the start of ``data``.

    Stops at the first thing that is not one (the caller hands ``data[end:]``
    to autobahn): not final, reserved bits, a control or continuation frame,
    unmasked, a length not in its shortest form, incomplete, or a payload over
    ``max_payload`` (0: no limit).
    """
    size = len(data)
    pos = 0
    while size - pos >= 6:
        first, second = data[pos], data[pos + 1]
        opcode = first & 0x0F
        if first & 0xF0 != 0x80 or opcode not in (1, 2) or not second & 0x80:
            return
        length = second & 0x7F
        start = pos + 6
        if length == 126:
            start += 2
            if size < start:
                return
            length = int.from_bytes(data[pos + 2:pos + 4], "big")
            if length < 126:
                return
        elif length == 127:
            start += 8
            if size < start:
                return
            length = int.from_bytes(data[pos + 2:pos + 10], "big")
            if length < 65536:
                return
        end = start + length
        if end > size or 0 < max_payload < length:
            return
        yield unmask(data[start - 4:start], data[start:end]), opcode == 2, end
        pos = end


def autobahn_between_frames(protocol) -> bool:
    """Whether autobahn holds nothing of a frame or message for ``protocol`` (so the fast path may read).

    Reads autobahn's reader state (``data``, ``current_frame``,
    ``inside_message``): there is no public accessor.
    """
    return not protocol.data and protocol.current_frame is None and not protocol.inside_message


def autobahn_traffic_seen(protocol) -> None:
    """What autobahn's reader does on any incoming traffic: restart the auto-ping timeout, if so configured."""
    if protocol.autoPingTimeoutCall and protocol.autoPingRestartOnAnyTraffic:
        protocol._cancelAutoPingTimeoutCall()


def autobahn_refuse_message(protocol, length: int, allowed: int, reason: str) -> None:
    """Fail the connection with 1009 (message too big) from ``onMessageFrameBegin``, as autobahn does for
    its own size limit: its reader stops keeping the frame's bytes (``sendClose`` would not stop it)."""
    protocol._max_message_size_exceeded(length, allowed, reason)
