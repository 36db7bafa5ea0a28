"""Slow clients, the replay buffer's bounds, iopub flow control and rate limits.

Unit tests drive the kernel's routing and the protocol's bookkeeping with
fakes and a fake clock; the end-to-end tests use a real gateway, real kernels
and real WebSockets on 127.0.0.1 (no timing is asserted: a stalled client is
simply one that never reads).
"""
import json
import struct
import time

import pytest
import websocket
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from jkg.kernels import flow
from jkg.kernels import kernel as kernel_module
from jkg.kernels.kernel import ManagedKernel
from jkg.interfaces import IClientOutbox
from jkg.kernels.messages import KernelMessage
from jkg.testing import FakeChannels, FakeLaunchedKernel, RecordingClient
from jkg.web.frames import Frame
from jkg.web.outbox import Backlog, TransportOutbox
from jkg.web.ratelimit import IOPubRateLimit
from support import GatewayProcess, make_certificate, stdout_of

# ---------------------------------------------------------------- unit: the backlog rule


def test_a_client_that_reads_may_fall_behind_but_not_without_bound():
    backlog = Backlog(1000)
    assert backlog.check(0) is None and backlog.check(1000) is None
    backlog.appended = 10_000
    # over the limit but taking bytes every time: allowed, up to the hard bound
    for waiting in range(1500, 7500, 500):
        backlog.appended += 600  # 600 in, 500 more waiting: 100 taken
        assert backlog.check(waiting) is None
    backlog.appended += 2000
    assert "8000 bytes" in backlog.check(8000)


def test_a_client_that_stops_reading_is_refused_after_another_limit():
    backlog = Backlog(1000)
    backlog.appended = 1500
    assert backlog.check(1500) is None  # nothing taken yet: the mark
    backlog.appended = 2000
    assert backlog.check(2000) is None
    backlog.appended = 2500
    assert backlog.check(2500) == "client too slow: outgoing buffer over 1000 bytes and not read"


def test_no_limit_means_no_refusal():
    backlog = Backlog(0)
    backlog.appended = 10 ** 12
    assert backlog.check(10 ** 12) is None


# ---------------------------------------------------------------- unit: the outbox of TLS (and other) transports


class HTTPChannelStandIn:
    """What twisted.web leaves registered on the transport after the WebSocket upgrade."""

    def stopProducing(self):  # noqa: N802 - Twisted API
        pass


def transport_outbox(limit=1000):
    transport = StringTransport()
    transport.registerProducer(HTTPChannelStandIn(), True)
    drained = []
    outbox = TransportOutbox(transport, limit, lambda: drained.append(outbox.waiting()))
    return outbox, transport, drained


def frame(byte: bytes, size: int) -> Frame:
    return Frame([byte * size], True)


def test_the_transport_outbox_takes_the_producer_slot_and_writes_while_the_transport_has_room():
    outbox, transport, _ = transport_outbox()
    assert verifyObject(IClientOutbox, outbox)
    assert transport.producer is outbox and transport.streaming  # a push producer: TLS would poll a pull one
    first, second = frame(b"a", 600), frame(b"b", 600)
    assert outbox.send(first) is None and outbox.send_all([second]) is None
    assert transport.value() == first.joined() + second.joined()
    assert outbox.waiting() == 0 and outbox.backlog.appended == first.size + second.size


def test_while_the_transport_is_paused_frames_wait_whole_and_in_order_with_control_frames():
    outbox, transport, drained = transport_outbox()
    frames = [frame(bytes([65 + n]), 300) for n in range(3)]
    outbox.send(frames[0])
    outbox.pauseProducing()  # the transport's buffer passed its bufferSize
    outbox.send(frames[1])
    outbox.write_data(b"\x89\x00")  # autobahn's ping
    outbox.send(frames[2])
    assert transport.value() == frames[0].joined()
    assert outbox.waiting() == frames[0].size + frames[1].size + 2 + frames[2].size
    outbox.resumeProducing()  # it sent everything: what waits goes on, and flow control hears of it
    assert transport.value() == frames[0].joined() + frames[1].joined() + b"\x89\x00" + frames[2].joined()
    assert drained == [0] and outbox.waiting() == 0


def test_a_client_whose_transport_stays_paused_is_refused_and_one_that_reads_is_not():
    outbox, transport, _ = transport_outbox(limit=1000)
    outbox.send(frame(b"x", 700))
    outbox.pauseProducing()
    refusals = [outbox.send(frame(b"y", 400)) for _ in range(6)]
    assert refusals[:3] == [None] * 3
    assert refusals[-1] == "client too slow: outgoing buffer over 1000 bytes and not read"
    written = len(transport.value())
    assert outbox.send(frame(b"z", 10)) is not None and len(transport.value()) == written  # nothing written

    reader, transport, _ = transport_outbox(limit=1000)
    for _ in range(20):  # it falls behind by a frame each time, and the transport keeps sending
        reader.pauseProducing()
        assert reader.send(frame(b"y", 400)) is None
        reader.resumeProducing()
    assert len(transport.value()) == 20 * frame(b"y", 400).size


def test_trim_drops_what_waits_and_the_close_frame_goes_after_what_was_handed_over():
    outbox, transport, _ = transport_outbox()
    outbox.send(frame(b"a", 100))
    outbox.pauseProducing()
    outbox.send(frame(b"b", 100))
    outbox.trim()
    outbox.write_data(b"\x88\x02\x0f\xa8")  # the close frame (4008)
    assert outbox.close_when_sent()  # the close frame still waits: the producer stays registered
    assert transport.producer is outbox
    outbox.resumeProducing()
    assert transport.value() == frame(b"a", 100).joined() + b"\x88\x02\x0f\xa8"
    assert transport.producer is None  # handed over: now the transport (TLS) may shut down


def test_closing_with_nothing_waiting_lets_the_transport_close_at_once():
    outbox, transport, _ = transport_outbox()
    outbox.send(frame(b"a", 100))
    assert not outbox.close_when_sent() and transport.producer is None


# ---------------------------------------------------------------- unit: replay of dropped slow sessions


def make_kernel(replay_limit=1_000_000, channels=FakeChannels):
    clock = Clock()
    return ManagedKernel("k1", "python3", FakeLaunchedKernel(), channels, clock, replay_limit), clock


def iopub(n: int, size: int = 100) -> KernelMessage:
    header = {"msg_id": f"m{n}", "msg_type": "stream"}
    parts = [json.dumps(header).encode(), b"{}", b"{}", json.dumps({"n": n, "text": "y" * size}).encode()]
    return KernelMessage("iopub", b"", parts, header["msg_id"], "stream", None)


class SlowClient(RecordingClient):
    """A client the protocol disconnected for reading too slowly."""

    def __init__(self, session_id, limit):
        super().__init__(session_id)
        self.dropped_as_slow = limit


def test_output_of_a_dropped_slow_session_is_kept_while_others_stay():
    kernel, _ = make_kernel()
    fast, slow = RecordingClient("fast"), SlowClient("slow", 700)
    kernel.attach(fast)
    kernel.attach(slow)
    kernel.detach(slow)
    for n in range(20):
        kernel.channels.on_message(iopub(n))
    assert len(fast.delivered) == 20
    back = RecordingClient("slow")
    kernel.attach(back)
    notice = json.loads(back.delivered[0].parts[3])
    assert notice["name"] == "stderr" and "did not read its output fast enough" in notice["text"]
    assert "dropped" in notice["text"]  # 20 messages do not fit in 700 bytes
    kept = back.delivered[1:]
    assert 0 < sum(m.size for m in kept) <= 700  # bounded by the client's buffer limit
    assert json.loads(kept[-1].parts[3])["n"] == 19
    # another session arriving does not take it, and it is gone once replayed
    other = RecordingClient("other")
    kernel.attach(other)
    assert other.delivered == []


def test_slow_replays_are_bounded_by_the_replay_limit_and_in_number():
    kernel, _ = make_kernel(replay_limit=300)
    kernel.attach(RecordingClient("stays"))
    for n in range(kernel_module.MAX_SLOW_REPLAYS + 3):
        client = SlowClient(f"s{n}", 10 ** 9)
        kernel.attach(client)
        kernel.detach(client)
    assert len(kernel._slow_replays) == kernel_module.MAX_SLOW_REPLAYS
    assert all(replay.limit == 300 for replay in kernel._slow_replays.values())


def test_replies_to_a_dropped_slow_session_wait_for_it():
    from jkg.wire import IncomingMessage

    kernel, _ = make_kernel()
    kernel.attach(RecordingClient("stays"))
    slow = SlowClient("slow", 10_000)
    kernel.attach(slow)
    header = {"msg_id": "req", "msg_type": "execute_request"}
    kernel.send(slow, IncomingMessage("shell", header, [json.dumps(header).encode(), b"{}", b"{}", b"{}"]))
    kernel.detach(slow)
    reply = KernelMessage("shell", b"", [b'{"msg_id":"r","msg_type":"execute_reply"}', b'{"msg_id":"req"}',
                                         b"{}", b"{}"], "r", "execute_reply", "req")
    kernel.channels.on_message(reply)
    back = RecordingClient("slow")
    kernel.attach(back)
    assert reply in back.delivered


# ---------------------------------------------------------------- unit: iopub flow control


class PausableChannels(FakeChannels):
    def __init__(self, *args):
        super().__init__(*args)
        self.paused = False
        self.pauses = 0

    def pause_iopub(self):
        self.paused = True
        self.pauses += 1

    def resume_iopub(self):
        self.paused = False


class Reader(RecordingClient):
    """A client whose backlog the test sets: ``waiting`` bytes, ``taken`` so far."""

    def __init__(self, session_id):
        super().__init__(session_id)
        self.waiting = self.taken = 0

    def outgoing(self):
        return self.waiting, self.taken


def test_iopub_is_paused_while_every_reading_client_is_behind():
    kernel, clock = make_kernel(channels=PausableChannels)
    a, b = Reader("a"), Reader("b")
    kernel.attach(a)
    kernel.attach(b)
    a.waiting = flow.FLOW_HIGH + 1
    kernel.channels.on_message(iopub(1))
    assert not kernel.channels.paused  # b keeps up
    b.waiting = flow.FLOW_HIGH + 1
    kernel.channels.on_message(iopub(2))
    assert kernel.channels.paused
    for _ in range(3):  # both still behind, both reading: their writers report each slice taken
        a.taken += 1
        b.taken += 1
        clock.advance(flow.FLOW_STALL / 5)
        kernel.drained(a)
        kernel.drained(b)
    assert kernel.channels.paused
    b.waiting = flow.FLOW_LOW - 1
    assert kernel.channels.paused  # nothing polls: it takes b's writer to say so
    kernel.drained(b)
    assert not kernel.channels.paused
    assert not clock.getDelayedCalls()  # and no timer is left behind


def test_nothing_is_polled_while_iopub_is_paused():
    kernel, clock = make_kernel(channels=PausableChannels)
    reader = Reader("reader")
    kernel.attach(reader)
    reader.waiting = flow.FLOW_HIGH + 1
    kernel.channels.on_message(iopub(1))
    assert kernel.channels.paused
    assert len(clock.getDelayedCalls()) == 1  # one timer: when the reader would turn stalled
    assert clock.getDelayedCalls()[0].getTime() == flow.FLOW_STALL
    reader.taken += 1
    clock.advance(flow.FLOW_STALL / 2)
    kernel.drained(reader)  # it is reading: its stall moves later
    assert [call.getTime() for call in clock.getDelayedCalls()] == [flow.FLOW_STALL * 1.5]
    kernel.detach(reader)  # the last client leaves: nothing to wait for
    assert not kernel.channels.paused and not clock.getDelayedCalls()


def test_a_client_that_reads_nothing_does_not_hold_the_kernel_back():
    kernel, clock = make_kernel(channels=PausableChannels)
    stalled = Reader("stalled")
    kernel.attach(stalled)
    stalled.waiting = flow.FLOW_HIGH + 1
    kernel.channels.on_message(iopub(1))
    assert kernel.channels.paused
    clock.advance(flow.FLOW_STALL / 2)
    assert kernel.channels.paused
    clock.advance(flow.FLOW_STALL / 2)
    assert not kernel.channels.paused  # it took nothing: it no longer counts
    kernel.channels.on_message(iopub(2))
    assert not kernel.channels.paused and kernel.channels.pauses == 1


def test_clients_that_cannot_tell_their_backlog_are_never_held_back():
    kernel, _ = make_kernel(channels=PausableChannels)
    kernel.attach(RecordingClient("plain"))
    kernel.channels.on_message(iopub(1))
    assert not kernel.channels.paused


# ---------------------------------------------------------------- unit: rate limits


class Now:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def status(state):
    message = KernelMessage("iopub", b"", [b"{}", b"{}", b"{}", b"{}"], "s", "status", None)
    message.execution_state = state
    return message


def test_message_rate_limit_warns_once_drops_and_resumes_below_80_percent():
    now = Now()
    limit = IOPubRateLimit(msg_rate=10, data_rate=0, window=1, clock=now)
    results = [limit.admit(iopub(n)) for n in range(15)]
    assert all(send for send, _ in results[:10])
    send, warning = results[10]
    assert not send and warning.startswith("IOPub message rate exceeded")
    assert all(not send and warning is None for send, warning in results[11:])
    # exempt types still pass
    assert limit.admit(KernelMessage("iopub", b"", [b"{}"] * 4, "x", "execute_input", None)) == (True, None)
    now.t += 1.01  # the window has passed: nothing counted any more
    assert limit.admit(iopub(99)) == (True, None)
    assert not limit.msgs_exceeded


def test_data_rate_counts_only_stream_output_and_idle_resets_everything():
    now = Now()
    limit = IOPubRateLimit(msg_rate=0, data_rate=1000, window=1, clock=now)
    display = KernelMessage("iopub", b"", [b"{}", b"{}", b"{}", b"x" * 5000], "d", "display_data", None)
    assert limit.admit(display) == (True, None)  # not stream: no bytes counted
    assert limit.admit(iopub(0, size=850)) == (True, None)
    send, warning = limit.admit(iopub(1, size=2000))
    assert not send and warning.startswith("IOPub data rate exceeded")
    assert limit.admit(iopub(2, size=10)) == (False, None)  # still over 80 % of the limit
    assert limit.admit(status("idle")) == (True, None)
    assert limit.admit(iopub(3, size=10)) == (True, None)


# ---------------------------------------------------------------- end to end


def _close_code(client, limit_frames: int = 10_000, timeout: float = 60.0):
    """Read a client's frames until the close frame; return (code, reason, data frames read)."""
    client.ws.settimeout(timeout)  # each read: a gateway that never closes fails the test, not the run
    count = 0
    for _ in range(limit_frames):
        opcode, data = client.ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = struct.unpack(">H", data[:2])[0] if len(data) >= 2 else None
            return code, data[2:].decode("utf-8", "replace"), count
        if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
            count += 1
    raise AssertionError("no close frame")


LIMIT = 4 * 1024 * 1024
OUTPUTS = 96
CHUNK = 256 * 1024
# paced, so that a reader is never far behind; the stalled client falls behind regardless
FLOOD = (f"import time\nfrom IPython.display import display\n_s = 'x' * {CHUNK}\n"
         f"for i in range({OUTPUTS}):\n    display({{'text/plain': _s}}, raw=True)\n    time.sleep(0.01)\n")


class TLSGatewayProcess(GatewayProcess):
    """A gateway serving HTTPS and WSS with a certificate of a throwaway CA; its clients trust that CA."""

    def __init__(self, directory, *args: str):
        ca = make_certificate(directory, "ca")
        server = make_certificate(directory, "server", issuer=ca, ca=False)
        super().__init__(*args, env={"KG_CERTFILE": str(server[0]), "KG_KEYFILE": str(server[1])})
        self.ca = str(ca[0])

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"wss://127.0.0.1:{self.port}"

    def request(self, method, path, **kwargs):
        return super().request(method, path, verify=self.ca, **kwargs)

    def connect(self, kernel_id, session_id=None, v1=False, **kwargs):
        return super().connect(kernel_id, session_id, v1, sslopt={"ca_certs": self.ca}, **kwargs)


def gateway_over(transport: str, directory, *args: str) -> GatewayProcess:
    return TLSGatewayProcess(directory, *args) if transport == "tls" else GatewayProcess(*args)


@pytest.fixture(scope="module", params=["tcp", "tls"])
def small_buffers(request, tmp_path_factory):
    """Plain TCP clients go through the TCP outbox, TLS ones through the transport outbox."""
    with gateway_over(request.param, tmp_path_factory.mktemp("certs"), "--client-buffer-limit", str(LIMIT)) as gw:
        yield gw


def test_a_stalled_client_is_dropped_and_the_others_get_everything(small_buffers):
    gateway = small_buffers
    kernel = gateway.start_kernel()
    try:
        stalled = gateway.connect(kernel["id"], session_id="stalled", v1=True)  # and never reads
        with gateway.connect(kernel["id"], v1=True) as reader:
            messages = reader.run(FLOOD, timeout=120)
            outputs = [m for m in messages if m["msg_type"] == "display_data"]
            assert len(outputs) == OUTPUTS
            assert all(len(m["content"]["data"]["text/plain"]) == CHUNK for m in outputs)
            assert gateway.request("GET", f"/api/kernels/{kernel['id']}").json()["connections"] == 1
        code, reason, read = _close_code(stalled)
        assert code == 4008 and reason.startswith(f"client too slow: outgoing buffer over {LIMIT} bytes")
        assert read < OUTPUTS  # what was waiting for it was dropped, not sent later
        stalled.close()

        # it comes back: first the notice, then (bounded) what it missed since
        with gateway.connect(kernel["id"], session_id="stalled", v1=True) as back:
            notice = back.recv(30)
            assert notice["msg_type"] == "stream" and notice["content"]["name"] == "stderr"
            assert "did not read its output fast enough" in notice["content"]["text"]
            replayed = []
            while True:
                msg = back.recv(30)
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    break
                replayed.append(msg)
            size = sum(len(m["content"].get("data", {}).get("text/plain", "")) for m in replayed)
            assert size <= LIMIT
            assert stdout_of(back.run("print('still here')")) == "still here\n"
    finally:
        gateway.request("DELETE", f"/api/kernels/{kernel['id']}")


def _ping_until_let_go(gateway, kernel_id: str, pinger, batch: int = 20_000, batches: int = 50) -> int:
    """Ping without reading until the gateway lets go of the connection; how many pings were sent.

    How many that takes depends on the machine: the gateway answers only the
    pings it has read, and tens of MB of them can wait in its socket's receive
    buffer.  A client that started reading before they were answered would
    keep up with the pongs, and rightly never be dropped.
    """
    for done in range(1, batches + 1):
        for _ in range(batch):
            pinger.ws.ping(b"p" * 125)
        if gateway.request("GET", f"/api/kernels/{kernel_id}").json()["connections"] == 0:
            return done * batch
    raise AssertionError(f"still connected after {batch * batches} pings never read")


def test_a_client_that_pings_and_never_reads_the_pongs_is_dropped(small_buffers):
    """Every ping is answered; a client that never reads the answers is bounded like one that never
    reads its output (before, the pongs waited without bound)."""
    gateway = small_buffers
    kernel = gateway.start_kernel()
    try:
        pinger = gateway.connect(kernel["id"], v1=True)
        sent = _ping_until_let_go(gateway, kernel["id"], pinger)
        code, reason, _ = _close_code(pinger, limit_frames=sent + 10)
        assert code == 4008 and reason.startswith("client too slow")
        pinger.close()
        with gateway.connect(kernel["id"]) as other:  # everyone else is served
            assert stdout_of(other.run("print('fine')")) == "fine\n"
    finally:
        gateway.request("DELETE", f"/api/kernels/{kernel['id']}")


def _rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status").read().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory):
    with TLSGatewayProcess(tmp_path_factory.mktemp("certs")) as gateway:
        yield gateway


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_a_slow_reader_alone_holds_the_kernel_back(request, transport):
    """iopub flow control end to end: the kernel makes 96 MB at once, its one client reads ~20 MB/s.

    The kernel's output waits in its sockets from 8 MB behind and flows again as the client's socket
    takes each slice (its writer reports it: nothing polls), so the client gets everything and the
    gateway never holds more than a few MB of it (without flow control: most of the 96 MB).  Over TLS
    the transport says so through the push producer API.
    """
    gateway = request.getfixturevalue("gateway" if transport == "tcp" else "tls_gateway")
    kernel = gateway.start_kernel()
    outputs, size = 96, 1024 * 1024
    pid = gateway.process.pid
    try:
        with gateway.connect(kernel["id"], v1=True) as reader:
            assert stdout_of(reader.run("_s = 'y' * %d" % size)) == ""
            before = peak = _rss_mib(pid)
            msg_id = reader.execute("from IPython.display import display\n"
                                    f"for i in range({outputs}):\n    display({{'text/plain': _s}}, raw=True)\n")
            got = 0
            for _ in range(outputs + 10):
                msg = reader.recv(60)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "display_data":
                    assert len(msg["content"]["data"]["text/plain"]) == size
                    got += 1
                    peak = max(peak, _rss_mib(pid))
                    time.sleep(0.05)  # a slow reader
                elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    break
            assert got == outputs
            assert peak - before < 40, f"the gateway grew by {peak - before:.0f} MiB"
    finally:
        gateway.request("DELETE", f"/api/kernels/{kernel['id']}")


def test_one_print_reaches_many_clients_with_the_same_bytes(gateway):
    kernel = gateway.start_kernel()
    clients = []
    try:
        for n in range(40):
            clients.append(gateway.connect(kernel["id"], v1=bool(n % 2)))
        msg_id = clients[0].execute("print('to everyone')")
        frames = {False: set(), True: set()}
        for client in clients:
            while True:
                opcode, data = client.ws.recv_data()
                raw = bytes(data)
                msg = client.v1 and _v1_message(raw) or (json.loads(raw) if opcode == 1 else None)
                if msg and msg["msg_type"] == "stream" and msg["parent_header"].get("msg_id") == msg_id:
                    frames[client.v1].add(raw)
                    assert msg["content"]["text"] == "to everyone\n"
                    break
        # encoded once per format: every client of a format got the very same bytes
        assert len(frames[False]) == 1 and len(frames[True]) == 1
    finally:
        for client in clients:
            client.close()
        gateway.request("DELETE", f"/api/kernels/{kernel['id']}")


def _v1_message(raw: bytes) -> dict:
    from jkg.wire import decode_v1

    channel, parts = decode_v1(raw)
    return {"channel": channel, "msg_type": json.loads(parts[0])["msg_type"],
            "parent_header": json.loads(parts[1]), "content": json.loads(parts[3])}


def test_iopub_rate_limits_when_enabled():
    with GatewayProcess("--iopub-msg-rate-limit", "50", "--rate-limit-window", "1") as gateway:
        kernel = gateway.start_kernel()
        try:
            with gateway.connect(kernel["id"]) as client:
                code = "from IPython.display import display\nfor i in range(2000):\n    display(i)\n"
                messages = client.run(code, timeout=120)
                warnings = [m for m in messages if m["msg_type"] == "stream"
                            and "IOPub message rate exceeded" in m["content"]["text"]]
                shown = [m for m in messages if m["msg_type"] == "display_data"]
                assert warnings and all(m["content"]["name"] == "stderr" for m in warnings)
                assert len(shown) < 2000
                # the next cell starts afresh (status: idle resets the counters)
                assert stdout_of(client.run("print('after')")) == "after\n"
        finally:
            gateway.request("DELETE", f"/api/kernels/{kernel['id']}")
