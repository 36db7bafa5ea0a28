"""The client-message decoders' bounds: buffers per message and decoded size, for every framing.

Fast and pure (no gateway): the end-to-end attacks are in ``test_hostile_websocket.py``.
"""
import json
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jkg.wire import (CHANNELS, WireError, decode_client_legacy_binary, decode_client_legacy_text,
                      decode_client_v1, encode_v1)

HEADER = json.dumps({"msg_id": "m", "msg_type": "execute_request"}).encode()


def v1_frame(buffers: int) -> bytes:
    return encode_v1("shell", [HEADER, b"{}", b"{}", b"{}"] + [b""] * buffers)


def legacy_binary(buffers: list[bytes], message: bytes | None = None) -> bytes:
    parts = [message or json.dumps({"header": json.loads(HEADER), "channel": "shell"}).encode(), *buffers]
    offsets, position = [], 4 * (len(parts) + 1)
    for part in parts:
        offsets.append(position)
        position += len(part)
    return struct.pack(f">{len(parts) + 1}I", len(parts), *offsets) + b"".join(parts)


@settings(max_examples=200, deadline=None)
@given(buffers=st.lists(st.binary(max_size=8), max_size=40), limit=st.integers(0, 40),
       channel=st.sampled_from(sorted(CHANNELS)), legacy=st.booleans())
def test_buffers_per_message_are_bounded_exactly(buffers, limit, channel, legacy):
    if legacy:
        frame, decode = legacy_binary(buffers), decode_client_legacy_binary
    else:
        frame, decode = encode_v1(channel, [HEADER, b"{}", b"{}", b"{}", *buffers]), decode_client_v1
    if len(buffers) > limit:
        with pytest.raises(WireError, match="buffers"):
            decode(frame, limit)
    else:
        assert [bytes(b) for b in decode(frame, limit).parts[4:]] == buffers


def test_a_million_empty_buffers_are_refused_before_the_table_is_read():
    # the count alone announces them: the offsets need not even be there
    v1 = struct.pack("<Q", 1_000_006) + b"\0" * 64
    legacy = struct.pack(">I", 1_000_001) + b"\0" * 64
    started = time.monotonic()
    with pytest.raises(WireError, match="1000000 buffers"):
        decode_client_v1(v1, 1024)
    with pytest.raises(WireError, match="1000000 buffers"):
        decode_client_legacy_binary(legacy, 1024)
    assert time.monotonic() - started < 0.05


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200), limit=st.integers(50, 400))
def test_legacy_decoded_size_is_bounded(text, limit):
    payload = json.dumps({"header": json.loads(HEADER), "channel": "shell", "content": {"code": text}})
    try:
        message = decode_client_legacy_text(payload, None, limit)
    except WireError as error:
        assert "once decoded" in str(error)
        assert sum(map(len, decode_client_legacy_text(payload).parts)) > limit
    else:
        assert sum(map(len, message.parts)) <= limit
