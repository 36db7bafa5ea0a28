"""Tests for :mod:`jkg.wire`.

jupyter_server's own (de)serializers and jupyter_client's Session serve as oracles: the
gateway must put exactly what jupyter_server would on the wire, and read what it reads.
"""

from __future__ import annotations

import json
import math
import struct
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jkg import strict_json, wire
from jkg.wire import (
    CHANNELS,
    V1_PROTOCOL,
    IncomingMessage,
    WireError,
    decode_client_legacy_binary,
    decode_client_legacy_text,
    decode_client_v1,
    decode_v1,
    encode_legacy,
    encode_v1,
    pack_json,
)

try:
    from jupyter_client.jsonutil import extract_dates, json_default
    from jupyter_client.session import Session
    from jupyter_server.services.kernels.connection.base import (
        deserialize_binary_message,
        deserialize_msg_from_ws_v1,
        serialize_binary_message,
        serialize_msg_to_ws_v1,
    )
    from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
except ImportError:  # pragma: no cover
    Session = None

oracle = pytest.mark.skipif(Session is None, reason="jupyter_server not installed")
# database=None: no example database shared with concurrent runs in this tree.
fast = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

DATE = "2024-05-01T12:34:56.789012Z"
TRICKY_ID = 'id "quoted" \\back\\slash\\ é 🎉 \u2028 \x01'


# ---------------------------------------------------------------- helpers / strategies


def kernel_pack(obj) -> bytes:
    """What a kernel's Session puts on ZeroMQ (json_packer: spaces, non-ASCII kept)."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False).encode("utf-8")


def header(msg_id="abc", msg_type="execute_request", **extra):
    return {"msg_id": msg_id, "msg_type": msg_type, "username": "u", "session": "s",
            "date": DATE, "version": "5.3", **extra}


def kernel_parts(h, parent=None, metadata=None, content=None, buffers=()):
    return [kernel_pack(h), kernel_pack(parent or {}), kernel_pack(metadata or {}),
            kernel_pack(content or {}), *buffers]


def expect_wire_error_or_message(decoder, data):
    """Garbage must either decode to a sane message or raise WireError, nothing else."""
    try:
        result = decoder(data)
    except WireError as exc:
        assert str(exc) and len(str(exc)) < 200
        return None
    if isinstance(result, IncomingMessage):
        assert result.channel in CHANNELS
        assert isinstance(result.header["msg_id"], str)
        assert isinstance(result.header["msg_type"], str)
        assert len(result.parts) >= 4 and all(isinstance(p, bytes) for p in result.parts)
    return result


def json_strategies(integers):
    scalars = (st.none() | st.booleans() | integers | st.text(max_size=20)
               | st.floats(allow_nan=False, allow_infinity=False))
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )
    objects = st.dictionaries(st.text(max_size=8), values, max_size=5)
    hdrs = st.builds(
        lambda i, t, extra: {**extra, "msg_id": i, "msg_type": t, "date": DATE, "version": "5.3"},
        st.text(max_size=30), st.text(min_size=1, max_size=20), objects,
    )
    return values, objects, hdrs


# Unbounded ints for our own round trips (they must stay exact); 64-bit ints for oracle
# tests, because jupyter_client's Session unpacks with orjson, which turns bigger ints into
# floats (a jupyter_server lossiness the gateway does not copy).
json_values, json_objects, headers = json_strategies(st.integers())
_, oracle_objects, oracle_headers = json_strategies(st.integers(-(2**63), 2**64 - 1))
buffer_lists = st.lists(st.binary(max_size=64), max_size=4)
channels = st.sampled_from(sorted(CHANNELS))
any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=200)


# ---------------------------------------------------------------- constants / pack_json


def test_constants():
    assert V1_PROTOCOL == "v1.kernel.websocket.jupyter.org"
    assert CHANNELS == {"shell", "iopub", "stdin", "control"}
    assert issubclass(WireError, ValueError)


def test_pack_json_is_compact_utf8_and_strict():
    assert pack_json({"a": [1, "é🎉"], "b": None}) == '{"a":[1,"é🎉"],"b":null}'.encode()
    assert pack_json({"big": 2**70}) == b'{"big":1180591620717411303424}'
    assert pack_json({1: 2}) == b'{"1":2}'  # like json, whichever backend
    for bad in (math.nan, math.inf, {"x": [None, -math.inf]}):
        with pytest.raises(ValueError):
            pack_json(bad)
    with pytest.raises(ValueError):
        pack_json("\ud800")
    with pytest.raises(TypeError):
        pack_json({"x": object()})


@given(json_values)
@fast
def test_pack_json_matches_stdlib_semantics(value):
    packed = pack_json(value)
    assert json.loads(packed) == value == json.loads(strict_json.pack_stdlib(value))
    assert packed == pack_json(json.loads(packed))  # stable, so round trips are byte-exact


# ---------------------------------------------------------------- v1


def test_v1_worked_example_offsets():
    h, p, m, c = b'{"msg_id":"1","msg_type":"x"}', b"{}", b'{"k":1}', b'{"code":"1+1"}'
    frame = encode_v1("shell", [h, p, m, c])
    offsets = struct.unpack_from("<7Q", frame)
    assert offsets[0] == 6
    lh, lp, lm, lc = map(len, (h, p, m, c))
    assert list(offsets[1:]) == [56, 61, 61 + lh, 61 + lh + lp, 61 + lh + lp + lm, 61 + lh + lp + lm + lc]
    assert len(frame) == 61 + lh + lp + lm + lc
    assert frame[56:61] == b"shell" and frame[61:] == h + p + m + c


@pytest.mark.parametrize("nbufs", [0, 1, 3])
def test_v1_round_trip_with_buffers(nbufs):
    bufs = [b"", b"\x00\xff" * 10, b"x"][:nbufs] if nbufs < 3 else [b"", b"\x00\xff", b""]
    parts = kernel_parts(header(TRICKY_ID), header("parent"), {"m": "é"}, {"data": "🎉"}, bufs)
    frame = encode_v1("iopub", parts)
    (count,) = struct.unpack_from("<Q", frame)
    assert count == 6 + nbufs and struct.unpack_from("<Q", frame, 8)[0] == 8 * (7 + nbufs)
    assert decode_v1(frame) == ("iopub", parts)
    msg = decode_client_v1(frame)
    assert msg == ("iopub", header(TRICKY_ID), parts)
    assert msg.header["msg_id"] == TRICKY_ID


def test_v1_large_content_is_passed_through():
    content = kernel_pack({"data": {"text/plain": "é" * 2_000_000}})
    parts = [kernel_pack(header()), b"{}", b"{}", content, b"\x01" * 3_000_000]
    channel, out = decode_v1(encode_v1("iopub", parts))
    assert channel == "iopub" and out == parts


def test_v1_accepts_bytearray_and_memoryview():
    frame = encode_v1("control", kernel_parts(header()))
    assert decode_client_v1(bytearray(frame)) == decode_client_v1(memoryview(frame))
    assert decode_client_v1(frame).channel == "control"


@pytest.mark.parametrize("bad_channel", ["hb", "foo", "", "Shell", "shell\x00", "é"])
def test_v1_unknown_channel(bad_channel):
    frame = encode_v1(bad_channel, kernel_parts(header()))
    with pytest.raises(WireError, match="unknown channel"):
        decode_v1(frame)


@pytest.mark.parametrize("header_bytes, reason", [
    (b"", "JSON"), (b"{", "JSON"), (b"\xff\xfe{}", "JSON"), (b"[]", "object"),
    (b'{"msg_type":"x"}', "msg_id"), (b'{"msg_id":1,"msg_type":"x"}', "msg_id"),
    (b'{"msg_id":"1"}', "msg_type"), (b'{"msg_id":"1","msg_type":null}', "msg_type"),
])
def test_v1_bad_header(header_bytes, reason):
    frame = encode_v1("shell", [header_bytes, b"{}", b"{}", b"{}"])
    assert decode_v1(frame)[1][0] == header_bytes  # layout is fine, only the header is bad
    with pytest.raises(WireError, match=reason):
        decode_client_v1(frame)


def test_v1_header_parse_is_exact():
    """orjson is only an accelerator: what it would get wrong or refuse goes to json."""
    raw = b'{"msg_id":"\\ud800","msg_type":"x","n":123456789012345678901,"m":-9223372036854775809}'
    msg = decode_client_v1(encode_v1("shell", [raw, b"{}", b"{}", b"{}"]))
    assert msg.header == json.loads(raw) and msg.header["n"] == 123456789012345678901
    assert msg.parts[0] is raw or msg.parts[0] == raw


def test_v1_other_parts_are_not_parsed():
    frame = encode_v1("shell", [kernel_pack(header()), b"not json", b"\xff", b"", b"buf"])
    assert decode_client_v1(frame).parts[1:] == [b"not json", b"\xff", b"", b"buf"]


def _v1(offsets, body=b"", count=None):
    count = len(offsets) if count is None else count
    return struct.pack("<Q", count) + struct.pack("<%dQ" % len(offsets), *offsets) + body


@pytest.mark.parametrize("frame", [
    b"", b"\x06", b"\x06\x00\x00\x00\x00\x00\x00",  # too short
    _v1([]), _v1([8]), _v1([40, 45, 45, 45, 45], b"shell"),  # fewer than 4 parts
    _v1([56, 61, 61, 61, 61, 61], b"shell", count=2**64 - 1),  # absurd count
    _v1([56, 61, 61, 61, 61, 61], b"shell", count=7),  # table runs past the end
    _v1([56, 61, 61, 61, 61, 62], b"shell"),  # last offset past the end
    _v1([56, 61, 61, 61, 61, 60], b"shell"),  # last offset short of the end
    _v1([57, 61, 61, 61, 61, 61], b"shell"),  # channel does not start after the table
    _v1([56, 61, 62, 61, 61, 62], b"shell!"),  # going backwards
    _v1([56, 61, 61, 61, 61, 2**64 - 1], b"shell"),
])
def test_v1_bad_layout(frame):
    with pytest.raises(WireError):
        decode_v1(frame)
    with pytest.raises(WireError):
        decode_client_v1(frame)


@pytest.mark.parametrize("frame", ["text frame", None, 42, ["x"]])
def test_binary_decoders_reject_non_bytes(frame):
    for decoder in (decode_v1, decode_client_v1, decode_client_legacy_binary):
        with pytest.raises(WireError, match="binary"):
            decoder(frame)


def test_v1_every_truncation_fails():
    frame = encode_v1("shell", kernel_parts(header(), buffers=[b"abc"]))
    for cut in range(len(frame)):
        with pytest.raises(WireError):
            decode_v1(frame[:cut])


def test_encoders_need_four_parts():
    with pytest.raises(ValueError):
        encode_v1("shell", [b"{}", b"{}", b"{}"])
    with pytest.raises(ValueError):
        encode_legacy("shell", [b"{}"], "a", "b")


@given(channels, st.lists(st.binary(max_size=40), min_size=4, max_size=9))
@fast
def test_v1_round_trip_property(channel, parts):
    frame = encode_v1(channel, parts)
    assert decode_v1(frame) == (channel, parts)
    assert len(frame) == 8 * (len(parts) + 3) + len(channel) + sum(map(len, parts))


@given(channels, headers, json_objects, json_objects, json_objects, buffer_lists)
@fast
def test_v1_client_round_trip_property(channel, h, p, m, c, bufs):
    parts = kernel_parts(h, p, m, c, bufs)
    msg = decode_client_v1(encode_v1(channel, parts))
    assert msg == (channel, h, parts)


# ---------------------------------------------------------------- legacy, kernel -> client


def expected_legacy_dict(channel, h, p, m, c, buffers=True):
    d = {"header": h, "msg_id": h["msg_id"], "msg_type": h["msg_type"], "parent_header": p,
         "metadata": m, "content": c}
    if buffers:
        d["buffers"] = []
    d["channel"] = channel
    return d


def test_legacy_text_payload():
    h, p = header(TRICKY_ID, "stream"), header("parent", "execute_request")
    m, c = {"x": "é"}, {"name": "stdout", "text": 'say "hi" \\ 🎉\n'}
    payload, is_binary = encode_legacy("iopub", kernel_parts(h, p, m, c), TRICKY_ID, "stream")
    assert is_binary is False and isinstance(payload, bytes)
    decoded = json.loads(payload.decode("utf-8"))
    assert decoded == expected_legacy_dict("iopub", h, p, m, c)
    assert list(decoded) == ["header", "msg_id", "msg_type", "parent_header", "metadata",
                             "content", "buffers", "channel"]
    # the content bytes are spliced in verbatim
    assert kernel_pack(c) in payload


@pytest.mark.parametrize("nbufs", [1, 3])
def test_legacy_binary_layout_and_round_trip(nbufs):
    bufs = [b"\x00\x01\x02", b"", b"\xff" * 7][:nbufs]
    h, c = header(TRICKY_ID, "comm_msg"), {"data": {"é": [1, 2.5, None]}}
    parts = kernel_parts(h, {}, {}, c, bufs)
    frame, is_binary = encode_legacy("shell", parts, TRICKY_ID, "comm_msg")
    assert is_binary is True
    count = struct.unpack_from(">I", frame)[0]
    assert count == 1 + nbufs
    offsets = struct.unpack_from(">%dI" % count, frame, 4)
    assert offsets[0] == 4 * (count + 1)
    ends = [*offsets[1:], len(frame)]
    message = json.loads(frame[offsets[0]:ends[0]])
    expected = expected_legacy_dict("shell", h, {}, {}, c, buffers=False)
    assert message == expected and list(message) == list(expected)
    assert [frame[a:b] for a, b in zip(offsets[1:], ends[1:])] == bufs
    # and our own client-side decoder reads it back, byte-exact for canonically packed parts
    canonical = [pack_json(h), b"{}", b"{}", pack_json(c), *bufs]
    frame2, _ = encode_legacy("shell", canonical, TRICKY_ID, "comm_msg")
    assert decode_client_legacy_binary(frame2) == ("shell", h, canonical)


def test_legacy_binary_worked_example():
    h = b'{"msg_id":"1","msg_type":"x"}'
    frame, _ = encode_legacy("iopub", [h, b"{}", b"{}", b"{}", b"BUFFER"], "1", "x")
    json_size = len(frame) - 12 - 6
    assert struct.unpack_from(">3I", frame) == (2, 12, 12 + json_size)
    assert frame.endswith(b'"channel":"iopub"}BUFFER')


def test_legacy_large_content():
    c = {"data": {"text/plain": "x🎉" * 1_000_000}}
    parts = kernel_parts(header(), {}, {}, c)
    payload, is_binary = encode_legacy("iopub", parts, "abc", "execute_request")
    assert not is_binary and json.loads(payload)["content"] == c
    buf = b"\x00" * 4_000_000
    frame, is_binary = encode_legacy("iopub", parts + [buf], "abc", "execute_request")
    assert is_binary and frame.endswith(buf)
    assert decode_client_legacy_binary(frame).parts[4] == buf


def test_legacy_escapes_odd_msg_id_and_channel():
    weird = 'a"\\\ud800'
    payload, _ = encode_legacy("weird\"chan", [b"{}", b"{}", b"{}", b"{}"], weird, weird)
    decoded = json.loads(payload)
    assert decoded["msg_id"] == decoded["msg_type"] == weird
    assert decoded["channel"] == 'weird"chan'


@given(channels, headers, json_objects, json_objects, json_objects, buffer_lists)
@fast
def test_legacy_round_trip_property(channel, h, p, m, c, bufs):
    parts = [pack_json(h), pack_json(p), pack_json(m), pack_json(c), *bufs]
    payload, is_binary = encode_legacy(channel, parts, h["msg_id"], h["msg_type"])
    assert is_binary == bool(bufs)
    if is_binary:
        back = decode_client_legacy_binary(payload)
    else:
        assert json.loads(payload) == expected_legacy_dict(channel, h, p, m, c)
        back = decode_client_legacy_text(payload)
        assert decode_client_legacy_text(payload.decode("utf-8")) == back
    assert back == (channel, h, parts)  # byte-exact


# ---------------------------------------------------------------- legacy, client -> kernel


def test_legacy_text_client_defaults():
    msg = decode_client_legacy_text('{"header":{"msg_id":"1","msg_type":"kernel_info_request"}}')
    assert msg.channel == "shell"  # what jupyter_server assumes
    assert msg.parts == [b'{"msg_id":"1","msg_type":"kernel_info_request"}', b"{}", b"{}", b"{}"]
    nulls = decode_client_legacy_text(json.dumps(
        {"channel": None, "header": header(), "parent_header": None, "content": None,
         "buffers": ["ignored"]}))
    assert nulls.channel == "shell" and nulls.parts[1:] == [b"{}", b"{}", b"{}"]


def test_legacy_text_client_packs_compactly():
    h = header(TRICKY_ID)
    text = json.dumps({"channel": "control", "header": h, "parent_header": {},
                       "metadata": {"a": 1}, "content": {"code": "print('é 🎉')"}}, indent=2)
    msg = decode_client_legacy_text(text.encode("utf-8"))
    assert msg.channel == "control" and msg.header == h
    assert msg.parts[2:] == [b'{"a":1}', "{\"code\":\"print('é 🎉')\"}".encode()]


@pytest.mark.parametrize("payload, reason", [
    (b"\xff{}", "UTF-8"), ("", "JSON"), ("{", "JSON"), ("[1]", "object"), ("null", "object"),
    ('{"channel":"hb","header":{"msg_id":"1","msg_type":"x"}}', "channel"),
    ('{"channel":"foo","header":{"msg_id":"1","msg_type":"x"}}', "channel"),
    ('{"channel":["shell"],"header":{"msg_id":"1","msg_type":"x"}}', "channel"),
    ('{"channel":"shell"}', "header"), ('{"header":[]}', "header"),
    ('{"header":{"msg_id":1,"msg_type":"x"}}', "msg_id"),
    ('{"header":{"msg_id":"1","msg_type":{}}}', "msg_type"),
    ('{"header":{"msg_id":"1","msg_type":"x"},"content":[]}', "content"),
    ('{"header":{"msg_id":"1","msg_type":"x"},"parent_header":"p"}', "parent_header"),
    ('{"header":{"msg_id":"1","msg_type":"x"},"metadata":0}', "metadata"),
    ('{"header":{"msg_id":"1","msg_type":"x"},"content":{"v":NaN}}', "JSON"),
    ('{"header":{"msg_id":"1","msg_type":"x"},"content":{"v":1e999}}', "JSON"),
    ('{"header":{"msg_id":"\\ud800","msg_type":"x"}}', "JSON"),
    ("[" * 100_000 + "]" * 100_000, "JSON"),
    ('{"header":{"msg_id":"1","msg_type":"x"},"content":{"a":' + "[" * 5000 + "]" * 5000 + "}}",
     "JSON"),
    (42, "str"),
], ids=lambda v: repr(v)[:40] if not isinstance(v, str) or len(v) < 200 else "deep")
def test_legacy_text_client_errors(payload, reason):
    with pytest.raises(WireError, match=reason):
        decode_client_legacy_text(payload)


def _legacy_bin(offsets, body=b"", count=None):
    count = len(offsets) if count is None else count
    return struct.pack(">I", count) + struct.pack(">%dI" % len(offsets), *offsets) + body


@pytest.mark.parametrize("frame", [
    b"", b"\x00\x00\x00", b"\x00\x00\x00\x00\x00\x00\x00\x08",  # short / nbufs 0
    _legacy_bin([8], b"", count=0xFFFFFFFF),  # absurd nbufs
    _legacy_bin([8, 9], b"{", count=3),  # table truncated
    _legacy_bin([9], b" {}"), _legacy_bin([12, 11], b"{}"), _legacy_bin([12, 15], b"{}"),
    _legacy_bin([8], b'{"header":{"msg_id":"1","msg_type":"x"},"channel":"hb"}'),
    _legacy_bin([8], b'\xff{"header":{"msg_id":"1","msg_type":"x"}}'),
    _legacy_bin([8], b'{"header":{"msg_id":"1"}}'),
])
def test_legacy_binary_client_errors(frame):
    with pytest.raises(WireError):
        decode_client_legacy_binary(frame)


def test_legacy_binary_client_ignores_json_buffers_key():
    body = b'{"header":{"msg_id":"1","msg_type":"x"},"buffers":[1,2],"channel":"stdin"}'
    frame = _legacy_bin([12, 12 + len(body)], body + b"BUF")
    assert decode_client_legacy_binary(frame) == (
        "stdin", {"msg_id": "1", "msg_type": "x"},
        [b'{"msg_id":"1","msg_type":"x"}', b"{}", b"{}", b"{}", b"BUF"])


def test_legacy_binary_truncated_before_buffers_fails():
    frame, _ = encode_legacy("shell", [pack_json(header()), b"{}", b"{}", b"{}", b"XY", b"Z"],
                             "abc", "execute_request")
    json_end = struct.unpack_from(">4I", frame)[2]
    for cut in range(json_end):
        with pytest.raises(WireError):
            decode_client_legacy_binary(frame[:cut])


# ---------------------------------------------------------------- garbage in, WireError out


ALL_DECODERS = [decode_v1, decode_client_v1, decode_client_legacy_binary, decode_client_legacy_text]


@given(st.binary(max_size=300))
@fast
def test_random_bytes_only_raise_wire_error(data):
    for decoder in ALL_DECODERS:
        expect_wire_error_or_message(decoder, data)


@given(any_text)
@fast
def test_random_text_only_raises_wire_error(text):
    expect_wire_error_or_message(decode_client_legacy_text, text)
    expect_wire_error_or_message(decode_client_legacy_text, text.encode("utf-8", "surrogatepass"))


@given(json_values, st.sampled_from(["channel", "header", "content", "metadata", "parent_header"]))
@fast
def test_random_json_fields_only_raise_wire_error(value, key):
    msg = {"header": header(), key: value}
    for payload in (json.dumps(msg), _legacy_bin([8], json.dumps(msg).encode())):
        decoder = decode_client_legacy_text if isinstance(payload, str) else decode_client_legacy_binary
        expect_wire_error_or_message(decoder, payload)


@given(st.data(), channels, buffer_lists)
@fast
def test_mutated_frames_only_raise_wire_error(data, channel, bufs):
    parts = kernel_parts(header(), buffers=bufs)
    frames = [encode_v1(channel, parts), encode_legacy(channel, parts + [b"b"], "abc", "x")[0]]
    for frame in frames:
        mutated = bytearray(frame)
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(mutated) - 1))
            mutated[i] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(mutated)))
        for candidate in (bytes(mutated), bytes(mutated[:cut])):
            for decoder in ALL_DECODERS:
                expect_wire_error_or_message(decoder, candidate)


# ---------------------------------------------------------------- jupyter_server as the oracle


def session_parts(msg_type="execute_reply", content=None, parent=None, buffers=()):
    """Parts as a real kernel Session would send them (header dates in Session's format)."""
    session = Session(key=b"", session="kernel-session")
    msg = session.msg(msg_type, content=content or {}, parent=parent, metadata={"é": 1})
    msg["header"]["msg_id"] = TRICKY_ID
    wire_list = session.serialize(msg)  # [DELIM, signature, h, p, m, c]
    return wire_list[2:] + list(buffers)


def js_reserialize(channel, parts):
    """jupyter_server's legacy kernel->client path (ZMQChannelsWebsocketConnection._reserialize_reply)."""
    fake = SimpleNamespace(session=Session(key=b""))
    return ZMQChannelsWebsocketConnection._reserialize_reply(
        fake, [b"<IDS|MSG>", b"", *parts], channel=channel)


@oracle
@pytest.mark.parametrize("nbufs", [0, 1, 3])
@pytest.mark.parametrize("channel", sorted(CHANNELS))
def test_oracle_v1_matches_jupyter_server(channel, nbufs):
    parts = session_parts(buffers=[b"", b"\x00buf", b"\xff" * 100][:nbufs])
    frame = encode_v1(channel, parts)
    assert frame == serialize_msg_to_ws_v1(parts, channel)
    assert deserialize_msg_from_ws_v1(frame) == (channel, parts)
    assert decode_v1(serialize_msg_to_ws_v1(parts, channel)) == (channel, parts)


@oracle
@given(channels, oracle_headers, oracle_objects, oracle_objects, oracle_objects, buffer_lists)
@fast
def test_oracle_v1_property(channel, h, p, m, c, bufs):
    parts = kernel_parts(h, p, m, c, bufs)
    assert encode_v1(channel, parts) == serialize_msg_to_ws_v1(parts, channel)


@oracle
@pytest.mark.parametrize("nbufs", [0, 1, 3])
def test_oracle_legacy_outgoing_matches_jupyter_server(nbufs):
    parent = Session(key=b"").msg("execute_request", content={"code": "'\"é🎉"})
    parts = session_parts("stream", {"name": "stdout", "text": "é🎉\\\"\n"}, parent,
                          [b"", b"\x00buf", b"\xff" * 100][:nbufs])
    h = json.loads(parts[0])
    ours, is_binary = encode_legacy("iopub", parts, h["msg_id"], h["msg_type"])
    theirs = js_reserialize("iopub", parts)
    if nbufs == 0:
        assert not is_binary and isinstance(theirs, str)
        assert json.loads(ours.decode("utf-8")) == json.loads(theirs)
    else:
        assert is_binary and isinstance(theirs, bytes)
        assert deserialize_binary_message(ours) == deserialize_binary_message(theirs)
        assert deserialize_binary_message(ours)["buffers"] == parts[4:]


@oracle
@given(channels, oracle_headers, oracle_objects, oracle_objects, oracle_objects, buffer_lists)
@fast
def test_oracle_legacy_outgoing_property(channel, h, p, m, c, bufs):
    parts = kernel_parts(h, p, m, c, bufs)
    ours, is_binary = encode_legacy(channel, parts, h["msg_id"], h["msg_type"])
    theirs = js_reserialize(channel, parts)
    if is_binary:
        assert deserialize_binary_message(ours) == deserialize_binary_message(theirs)
    else:
        assert json.loads(ours) == json.loads(theirs)


def _semantic(parts):
    """Compare parts the way the kernel would read them (dates parsed, as jupyter_server does)."""
    h, p, m, c = (json.loads(x) for x in parts[:4])
    return [extract_dates(h), extract_dates(p), m, c, *parts[4:]]


@oracle
@given(channels, oracle_headers, oracle_objects, oracle_objects, oracle_objects, buffer_lists)
@fast
def test_oracle_legacy_incoming_binary(channel, h, p, m, c, bufs):
    msg = {"header": h, "msg_id": h["msg_id"], "msg_type": h["msg_type"], "parent_header": p,
           "metadata": m, "content": c, "buffers": bufs, "channel": channel}
    frame = serialize_binary_message(msg)  # what jupyter_server (and JupyterLab) send
    ours = decode_client_legacy_binary(frame)
    js_msg = deserialize_binary_message(frame)
    assert ours.channel == js_msg.pop("channel") and ours.header == h
    theirs = Session(key=b"").serialize(js_msg)[2:] + js_msg["buffers"]
    assert _semantic(ours.parts) == _semantic(theirs)


@oracle
@given(st.sampled_from([None, *sorted(CHANNELS)]), oracle_headers, oracle_objects,
       oracle_objects, oracle_objects)
@fast
def test_oracle_legacy_incoming_text(channel, h, p, m, c):
    msg = {"header": h, "parent_header": p, "metadata": m, "content": c}
    if channel is not None:
        msg["channel"] = channel
    text = json.dumps(msg, default=json_default)
    ours = decode_client_legacy_text(text)
    js_msg = json.loads(text)  # jupyter_server: json.loads, pop channel, Session.send
    assert ours.channel == (js_msg.pop("channel", None) or "shell")
    theirs = Session(key=b"").serialize(js_msg)[2:]
    assert _semantic(ours.parts) == _semantic(theirs)


# ---------------------------------------------------------------- the exact json path


def test_stdlib_path_basics():
    """What orjson/msgspec refuse goes to json, which must be compact, strict and exact."""
    assert strict_json.pack_stdlib({"a": "é", "b": [None, 1.5]}) == '{"a":"é","b":[null,1.5]}'.encode()
    with pytest.raises(ValueError):
        strict_json.pack_stdlib(math.nan)
    with pytest.raises(ValueError):
        strict_json.loads_stdlib(b'{"msg_id":"1","msg_type":"x","v":NaN}')
    with pytest.raises(ValueError):
        strict_json.loads_stdlib(b"\xff")
    big = 123456789012345678901234567890
    assert strict_json.loads_stdlib(b'{"big":123456789012345678901234567890}') == {"big": big}


@given(json_objects)
@fast
def test_stdlib_path_agrees(obj):
    assert json.loads(strict_json.pack_stdlib(obj)) == json.loads(pack_json(obj))
    assert strict_json.loads_stdlib(strict_json.pack_stdlib(obj)) == json.loads(pack_json(obj))


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536, 3_000_000])
@pytest.mark.parametrize("binary", [False, True])
def test_server_frame_header_follows_rfc6455(length, binary):
    header = wire.server_frame_header(length, binary)
    assert header[0] == (0x82 if binary else 0x81)  # FIN, no RSV bits, text/binary opcode
    assert header[1] & 0x80 == 0  # servers never mask
    marker = header[1] & 0x7F
    if length < 126:
        assert marker == length and len(header) == 2
    elif length < 65536:
        assert marker == 126 and int.from_bytes(header[2:4], "big") == length
    else:
        assert marker == 127 and int.from_bytes(header[2:10], "big") == length
