"""The message path: a kernel's channel set against libzmq, signatures, and byte-exact forwarding.

libzmq (through pyzmq) plays the kernel: if jkg's own ZMTP client gets a frame
wrong, libzmq refuses it or delivers something else.  These run in-process on
pytest-twisted's asyncio reactor, with real sockets on 127.0.0.1; every wait is
bounded.
"""
import json

import pytest
import pytest_twisted
import zmq
from jupyter_client.session import Session
from twisted.internet import reactor
from twisted.internet.task import deferLater

from jkg.kernels.channels import KernelChannels
from jkg.kernels.signer import Signer
from jkg.kernels.messages import parse_kernel_frames
from zmtp_support import free_port, recv_all, recv_zmq, served_connection, until
from jkg.web.frames import FrameCache, encode_legacy_frame, encode_v1_frame

try:
    from jupyter_server.services.kernels.connection.base import serialize_msg_to_ws_v1
except ImportError:  # pragma: no cover
    serialize_msg_to_ws_v1 = None

BIG = bytes(range(256)) * (3 * 1024 * 1024 // 256 + 7)  # > 3 MB, received into its own buffer


def ws_payload(frame: bytes) -> tuple[int, bytes]:
    """(opcode, payload) of one unmasked server frame."""
    length = frame[1] & 0x7F
    start = 2 if length < 126 else 4 if length == 126 else 10
    return frame[0] & 0x0F, frame[start:]


@pytest_twisted.ensureDeferred
async def test_heartbeat_ping_is_answered_by_an_echo_and_times_out_without_one(zctx):
    context, ours = zctx
    echo = context.socket(zmq.ROUTER)  # ipykernel's heartbeat is a ROUTER echo device
    hb_port = echo.bind_to_random_port("tcp://127.0.0.1")
    info = {"transport": "tcp", "ip": "127.0.0.1", "key": b"k", "signature_scheme": "hmac-sha256",
            "hb_port": hb_port, **{f"{c}_port": free_port() for c in ("shell", "iopub", "stdin", "control")}}
    channels = KernelChannels(ours, info, lambda messages: None)
    answered = channels.ping(20)
    echo.send_multipart(await recv_zmq(echo))
    assert await answered is True
    assert await channels.ping(0.2) is False  # nobody echoes this one
    channels.close()
    echo.close(linger=0)


class FakeKernel:
    """A kernel's four ports, bound by pyzmq, that signs like a kernel."""

    def __init__(self, context, key=b"secret-key"):
        self.session = Session(key=key)
        self.iopub = context.socket(zmq.XPUB)
        self.shell = context.socket(zmq.ROUTER)
        self.info = {"transport": "tcp", "ip": "127.0.0.1", "key": key, "signature_scheme": "hmac-sha256",
                     "iopub_port": self.iopub.bind_to_random_port("tcp://127.0.0.1"),
                     "shell_port": self.shell.bind_to_random_port("tcp://127.0.0.1")}
        self.others = []
        for channel in ("stdin", "control"):
            other = context.socket(zmq.ROUTER)
            self.info[f"{channel}_port"] = other.bind_to_random_port("tcp://127.0.0.1")
            self.others.append(other)

    def frames(self, msg_type, content, buffers=()):
        msg = self.session.msg(msg_type, content)
        msg["buffers"] = list(buffers)
        return self.session.serialize(msg)

    async def connected(self, channels):
        """Wait until ``channels`` finished all four handshakes and subscribed to our iopub."""
        await until(lambda: channels.all_connected, "all four handshakes")
        await recv_zmq(self.iopub)  # the subscription

    def close(self):
        for sock in (self.iopub, self.shell, *self.others):
            sock.close(linger=0)


@pytest_twisted.ensureDeferred
async def test_only_correctly_signed_kernel_messages_get_through(zctx):
    context, ours = zctx
    kernel = FakeKernel(context)
    got = []
    channels = KernelChannels(ours, kernel.info, got.extend)
    await kernel.connected(channels)
    good = kernel.frames("display_data", {"data": {"text/plain": "x" * 100_000}}, [BIG, b""])
    forged = list(good)
    forged[1] = b"0" * 64  # the signature
    kernel.iopub.send_multipart([b"topic", *forged])
    kernel.iopub.send_multipart([b"topic", *good])
    await until(lambda: got, "the signed message")
    await deferLater(reactor, 0.1, lambda: None)
    assert len(got) == 1
    message = got[0]
    assert message.channel == "iopub" and message.msg_type == "display_data"
    assert [bytes(part) for part in message.parts] == [bytes(part) for part in good[2:]]
    channels.close()
    kernel.close()


@pytest_twisted.ensureDeferred
async def test_requests_are_signed_from_their_bytes_and_replies_routed_by_identity(zctx):
    context, ours = zctx
    kernel = FakeKernel(context)
    got = []
    channels = KernelChannels(ours, kernel.info, got.extend)
    parts = [json.dumps({"msg_id": "m1", "msg_type": "kernel_info_request", "session": "s", "username": "u",
                         "date": "2026-01-01T00:00:00Z", "version": "5.3"}).encode(), b"{}", b"{}", b"{}"]
    channels.send("shell", parts)
    identity, *frames = await recv_zmq(kernel.shell)
    assert identity == channels.identity
    _, msg_list = kernel.session.feed_identities(frames)
    request = kernel.session.deserialize(msg_list)  # checks our signature
    assert request["header"]["msg_id"] == "m1"
    reply = kernel.session.msg("kernel_info_reply", {"status": "ok"}, parent=request["header"])
    kernel.shell.send_multipart([identity, *kernel.session.serialize(reply)])
    await until(lambda: got, "the reply")
    assert got[0].channel == "shell" and got[0].parent_id == "m1"
    channels.close()
    kernel.close()


def test_signer_matches_jupyter_clients_session():
    session = Session(key=b"abc")
    parts = [b'{"a": 1}', b"{}", b"{}", "é".encode()]
    assert Signer(b"abc").sign(parts) == session.sign(parts)
    assert Signer(b"abc", "hmac-sha512").sign(parts) == Session(key=b"abc", signature_scheme="hmac-sha512").sign(parts)
    assert Signer(b"").sign(parts) == b""


@pytest.mark.skipif(serialize_msg_to_ws_v1 is None, reason="jupyter_server not installed")
@pytest.mark.parametrize("buffers", [[], [b"\x00\x01", b""], [BIG]])
def test_forwarded_v1_frames_are_what_jupyter_server_sends(buffers):
    """A kernel message goes out byte for byte as jupyter_server's v1 serializer would write it."""
    session = Session(key=b"k")
    msg = session.msg("comm_msg", {"data": {"é": "🎉", "n": 1.5}})
    msg["buffers"] = buffers
    frames = [b"comm-topic", *session.serialize(msg)]
    message = parse_kernel_frames("iopub", frames)
    opcode, payload = ws_payload(b"".join(bytes(p) for p in encode_v1_frame(message).pieces))
    assert opcode == 2
    expected = serialize_msg_to_ws_v1(frames[3:], "iopub")  # jupyter_server relays the raw parts
    assert payload == expected


def test_forwarded_legacy_json_has_jupyter_servers_content():
    session = Session(key=b"k")
    msg = session.msg("stream", {"name": "stdout", "text": 'quote " backslash \\ é 🎉 \u2028'})
    frames = session.serialize(msg)
    message = parse_kernel_frames("iopub", frames)
    opcode, body = ws_payload(b"".join(bytes(p) for p in encode_legacy_frame(message).pieces))
    assert opcode == 1  # one text frame
    sent = json.loads(body)
    deserialized = session.deserialize(session.feed_identities(frames)[1])
    assert sent["content"] == deserialized["content"]
    assert sent["header"]["msg_id"] == sent["msg_id"] == deserialized["header"]["msg_id"]
    assert sent["channel"] == "iopub" and sent["buffers"] == []
    # the kernel's JSON bytes are spliced in as they are, not re-encoded
    assert frames[5] in body and frames[2] in body


def test_a_message_is_encoded_once_per_format_for_all_its_clients():
    session = Session(key=b"k")
    first, second = (parse_kernel_frames("iopub", session.serialize(session.msg("stream", {"text": t})))
                     for t in "ab")
    calls = []

    def encode(message):
        calls.append(message)
        return encode_v1_frame(message)

    cache = FrameCache()
    frames = [cache.frame(first, "v1", encode) for _ in range(3)]
    assert frames[0] is frames[1] is frames[2] and calls == [first]  # three clients, one encoding
    assert cache.frame(first, "legacy", encode_legacy_frame) is not frames[0]  # another format
    assert cache.frame(second, "v1", encode) is not frames[0] and calls == [first, second]
    assert not hasattr(first, "encoded")  # the kernel's message carries no web state



# ---------------------------------------------------------------- client frames: the fast path vs autobahn

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from twisted.internet.error import ConnectionDone  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from jkg.config import GatewayConfig  # noqa: E402
from jkg.testing import FakeKernel as _FakeKernel  # noqa: E402
from jkg.testing import FakeRegistry  # noqa: E402
from jkg import wire  # noqa: E402
from jkg.web import channels as web_channels  # noqa: E402
from jkg.web import client_frames  # noqa: E402


class _Recording(web_channels.ChannelsProtocol):
    def onMessage(self, payload, isBinary):  # noqa: N802,N803
        self.got.append((bytes(payload), isBinary))


def _open_protocol(max_size=0):
    registry = FakeRegistry()
    kernel = _FakeKernel()
    registry.kernels[kernel.id] = kernel
    factory = web_channels.ChannelsFactory(registry, GatewayConfig(max_message_size=max_size, ws_ping_interval=0),
                                           Clock())
    factory.protocol = _Recording
    protocol = factory.build(kernel.id, "session")
    protocol.got = []
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert protocol.state == web_channels._OPEN
    transport.clear()
    return protocol, transport


def client_frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes = b"\x01\x80\xfe\x7f") -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


messages = st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(max_size=300), st.integers(1, 3),
                              st.booleans()), max_size=8)


@settings(max_examples=150, deadline=None, database=None)
@given(messages, st.lists(st.integers(1, 400), max_size=20), st.binary(min_size=4, max_size=4))
def test_client_frames_arrive_whole_however_the_stream_is_cut(msgs, cuts, mask):
    protocol, transport = _open_protocol()
    stream, expected, pings = b"", [], 0
    for opcode, payload, fragments, ping in msgs:
        pieces = [payload[i::fragments] for i in range(fragments)] if fragments > 1 else [payload]
        for index, piece in enumerate(pieces):
            stream += client_frame(opcode if index == 0 else 0, piece, fin=index == len(pieces) - 1, mask=mask)
            if ping and index == 0:
                stream += client_frame(9, b"hi", mask=mask)  # control frames may come between fragments
                pings += 1
        expected.append((b"".join(pieces), opcode == 2))
    pos = 0
    for cut in cuts:
        protocol.dataReceived(stream[pos:pos + cut])
        pos += cut
    protocol.dataReceived(stream[pos:])
    assert protocol.got == expected
    assert transport.value().count(b"\x8a\x02hi") == pings  # autobahn answered every ping


def test_large_and_oversized_client_frames():
    protocol, _ = _open_protocol(max_size=200_000)
    big = bytes(range(256)) * 700  # 179,200 bytes: the 64-bit length form and the vectorised unmasking
    protocol.dataReceived(client_frame(2, big))
    assert protocol.got == [(big, True)]
    protocol.dataReceived(client_frame(2, big + big))  # over the limit: autobahn drops the connection
    assert protocol.got == [(big, True)] and protocol.state != web_channels._OPEN


def test_unmask_matches_the_rfc():
    mask = b"\x37\xfa\x21\x3d"
    for size in (0, 1, 3, 4, 5, 4095, 4096, 10_001):
        data = bytes((i * 7) & 0xFF for i in range(size))
        assert client_frames.unmask(mask, data) == bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def test_the_fast_path_stops_at_the_first_frame_it_does_not_read_itself():
    text, binary = client_frame(1, b"hello"), client_frame(2, b"\x00\x01")
    ping = bytes([0x89, 0x80]) + b"abcd"  # a masked, empty ping: autobahn's
    frames = list(client_frames.whole_data_frames(text + binary + ping + text, 0))
    assert [(payload, is_binary) for payload, is_binary, _ in frames] == [(b"hello", False), (b"\x00\x01", True)]
    assert frames[-1][2] == len(text + binary)
    assert list(client_frames.whole_data_frames(text[:-1], 0)) == []  # incomplete
    assert list(client_frames.whole_data_frames(text, 4)) == []  # over the limit


# ---------------------------------------------------------------- the protocol and its kernel, in memory


def _attached_protocol(subprotocol=None, client_buffer_limit=16 * 1024 * 1024):
    """A real ChannelsProtocol, open on a StringTransport, attached to a FakeKernel."""
    registry = FakeRegistry()
    kernel = _FakeKernel()
    registry.kernels[kernel.id] = kernel
    config = GatewayConfig(ws_ping_interval=0, client_buffer_limit=client_buffer_limit)
    factory = web_channels.ChannelsFactory(registry, config, Clock())
    protocol = factory.build(kernel.id, "session-1", "tenant", lambda: None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    offer = b"Sec-WebSocket-Protocol: " + subprotocol.encode() + b"\r\n" if subprotocol else b""
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + offer
                          + b"\r\n")
    assert protocol.state == web_channels._OPEN
    transport.clear()
    return protocol, transport, kernel


def _legacy(channel: str, msg_id: str) -> bytes:
    return json.dumps({"channel": channel, "header": {"msg_id": msg_id, "msg_type": "kernel_info_request"},
                       "parent_header": {}, "metadata": {}, "content": {}}).encode()


def test_the_protocol_is_built_with_its_context_and_sends_through_the_kernel_it_attached_to():
    protocol, transport, kernel = _attached_protocol()
    assert (protocol.kernel_id, protocol.session_id, protocol.tenant) == (kernel.id, "session-1", "tenant")
    assert protocol.kernel is kernel and kernel.clients == {"session-1": protocol}
    protocol.dataReceived(client_frame(1, _legacy("shell", "m1")))
    assert [(session, message.channel, message.header["msg_id"]) for session, message in kernel.sent] == \
        [("session-1", "shell", "m1")]
    protocol.connectionLost(Failure(ConnectionDone()))
    assert kernel.clients == {}


def _closed_with(data: bytes) -> list:
    """The close codes among a server's frames."""
    codes, pos = [], 0
    while pos < len(data):
        length, start = data[pos + 1] & 0x7F, pos + 2
        if length == 126:
            length, start = int.from_bytes(data[pos + 2:pos + 4], "big"), pos + 4
        elif length == 127:
            length, start = int.from_bytes(data[pos + 2:pos + 10], "big"), pos + 10
        if data[pos] == 0x88:
            codes.append(int.from_bytes(data[start:start + 2], "big"))
        pos = start + length
    return codes


def _stream(n: int, size: int):
    from jkg.kernels.messages import KernelMessage

    header = json.dumps({"msg_id": f"m{n}", "msg_type": "stream"}).encode()
    return KernelMessage("iopub", b"", [header, b"{}", b"{}", json.dumps({"text": "y" * size}).encode()],
                         f"m{n}", "stream", None)


def test_a_close_keeps_its_code_when_the_client_is_behind_and_a_pinger_that_never_reads_gets_4008():
    protocol, transport, _ = _attached_protocol(client_buffer_limit=1000)
    outbox = transport.producer  # the TLS-style outbox (a StringTransport is no TCP socket)
    outbox.pauseProducing()  # the client reads nothing
    protocol.deliver(_stream(1, 1500))
    protocol.deliver(_stream(2, 1500))  # behind by more than the limit, not yet by another one
    protocol.sendClose(1000, "bye")  # would be too much now: the close still goes, with its own code
    outbox.resumeProducing()
    assert _closed_with(transport.value()) == [1000]

    pinger, transport, _ = _attached_protocol(client_buffer_limit=1000)
    transport.producer.pauseProducing()
    for _ in range(30):  # 30 pongs of 127 bytes: over the limit, then over it by another one
        pinger.dataReceived(client_frame(9, b"p" * 125))
    transport.producer.resumeProducing()
    assert _closed_with(transport.value()) == [4008] and pinger.dropped_as_slow == 1000


def test_a_bare_buildprotocol_is_refused():
    factory = web_channels.ChannelsFactory(FakeRegistry(), GatewayConfig(), Clock())
    with pytest.raises(TypeError):
        factory.buildProtocol(None)


@pytest.mark.parametrize("v1", [False, True], ids=["legacy", "v1"])
def test_a_message_on_an_unknown_channel_is_ignored_and_the_connection_stays(v1):
    protocol, transport, kernel = _attached_protocol(wire.V1_PROTOCOL if v1 else None)
    for channel, msg_id in (("nope", "m1"), ("hb", "m2"), ("shell", "m3")):
        if v1:
            header = json.dumps({"msg_id": msg_id, "msg_type": "kernel_info_request"}).encode()
            protocol.dataReceived(client_frame(2, wire.encode_v1(channel, [header, b"{}", b"{}", b"{}"])))
        else:
            protocol.dataReceived(client_frame(1, _legacy(channel, msg_id)))
    assert protocol.state == web_channels._OPEN and transport.value() == b""  # no close frame
    assert [message.header["msg_id"] for _, message in kernel.sent] == ["m3"]


@pytest.mark.parametrize("frame,binary", [
    (b"{not json", False),
    (b'{"channel": "shell"}', False),
    (b'{"channel": "iopub", "header": {"msg_id": "x", "msg_type": "y"}}', False),
    (b"\x00\x00\x00\x09garbage", True),
])
def test_malformed_frames_close_with_4400(frame, binary):
    protocol, transport, kernel = _attached_protocol()
    protocol.dataReceived(client_frame(2 if binary else 1, frame))
    assert transport.value()[:1] == b"\x88" and int.from_bytes(transport.value()[2:4], "big") == 4400
    assert kernel.sent == []


# ---------------------------------------------------------------- the TCP outbox on a real connection


@pytest_twisted.ensureDeferred
async def test_the_tcp_outbox_hears_from_the_transport_when_its_backlog_is_sent():
    """What the socket does not take waits; the transport (through the public producer API) says when
    each slice went out, the outbox sends on and reports it -- nothing polls -- and every byte arrives
    in order."""

    from zope.interface.verify import verifyObject

    from jkg.interfaces import IClientOutbox
    from jkg.web.frames import Frame
    from jkg.web.outbox import TCPOutbox

    port, transport, client = await served_connection()
    try:
        drained = []
        outbox = TCPOutbox(transport, 0, lambda: drained.append(outbox.waiting()))
        assert verifyObject(IClientOutbox, outbox)
        await until(lambda: outbox.lent == 0, "the transport's first word")
        frames = [Frame([bytes([n]) * 1_000_000], True) for n in range(8)]
        for frame in frames:
            assert outbox.send(frame) is None
        total = sum(frame.size for frame in frames)
        assert outbox.waiting() > 0 and outbox.backlog.appended == total  # the client has not read yet
        reports = len(drained)
        received = await recv_all(client, total)
        assert received == b"".join(b"".join(bytes(p) for p in frame.pieces) for frame in frames)
        await until(lambda: outbox.waiting() == 0, "the outbox to hear that all was sent")
        assert len(drained) > reports and drained[-1] == 0
    finally:
        client.close()
        await port.stopListening()


# ---------------------------------------------------------------- signatures: proven once per local connection


def test_which_kernel_addresses_are_local():
    from jkg.kernels.channels import is_local_connection

    assert is_local_connection({"transport": "ipc", "ip": "/run/jkg/kernel-1"})
    assert is_local_connection({"transport": "tcp", "ip": "127.0.0.1"})
    assert is_local_connection({"transport": "tcp", "ip": "127.3.4.5"})
    assert is_local_connection({"transport": "tcp", "ip": "::1"})
    assert not is_local_connection({"transport": "tcp", "ip": "10.0.0.7"})
    assert not is_local_connection({"transport": "tcp", "ip": "0.0.0.0"})
    assert not is_local_connection({"transport": "tcp", "ip": "kernel-host.example"})  # names resolve anywhere
    assert not is_local_connection({"transport": "tcp"})


@pytest_twisted.ensureDeferred
async def test_a_new_connection_must_prove_the_key_again_an_impostor_on_the_port_gets_nothing_through(zctx):
    """The kernel's iopub port is taken over by someone without the key (the kernel died, another process
    bound the port): after the reconnect, none of its messages reaches the kernel's clients."""
    context, ours = zctx
    kernel = FakeKernel(context)
    got = []
    channels = KernelChannels(ours, kernel.info, got.extend)
    try:
        await kernel.connected(channels)
        kernel.iopub.send_multipart([b"t", *kernel.frames("stream", {"name": "stdout", "text": "real"})])
        await until(lambda: got, "the kernel's own message")
        port = kernel.info["iopub_port"]
        kernel.iopub.close(linger=0)
        impostor = context.socket(zmq.XPUB)
        for _ in range(100):  # the port is free again once libzmq let go of it
            try:
                impostor.bind(f"tcp://127.0.0.1:{port}")
                break
            except zmq.ZMQError:
                await deferLater(reactor, 0.05, lambda: None)
        await recv_zmq(impostor, timeout=20)  # our SUB reconnected and subscribed
        forger = Session(key=b"not-the-key")
        for n in range(20):
            msg = forger.msg("stream", {"name": "stdout", "text": f"forged {n}"})
            impostor.send_multipart([b"t", *forger.serialize(msg)])
        await deferLater(reactor, 0.5, lambda: None)
        assert [m.msg_type for m in got] == ["stream"] and len(got) == 1  # nothing forged got through
        impostor.close(linger=0)
    finally:
        channels.close()
        kernel.close()


@pytest_twisted.ensureDeferred
async def test_on_a_remote_connection_every_message_is_checked(zctx):
    context, ours = zctx
    kernel = FakeKernel(context)
    got = []
    channels = KernelChannels(ours, kernel.info, got.extend)
    channels._local = False  # as for a kernel on another host (tests only reach 127.0.0.0/8)
    try:
        await kernel.connected(channels)
        good = kernel.frames("stream", {"name": "stdout", "text": "real"})
        forged = list(kernel.frames("stream", {"name": "stdout", "text": "forged"}))
        forged[1] = b"0" * 64
        for frames in (good, forged, good):
            kernel.iopub.send_multipart([b"t", *frames])
        await until(lambda: len(got) == 2, "the two signed messages")
        await deferLater(reactor, 0.2, lambda: None)
        assert [json.loads(m.parts[3])["text"] for m in got] == ["real", "real"]
    finally:
        channels.close()
        kernel.close()
