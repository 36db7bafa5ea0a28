"""Message routing of one kernel, with fake sockets and a fake clock (no processes)."""
import json

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from jkg.errors import BadRequest, KernelLaunchError
from jkg.interfaces import IKernelClient
from jkg.kernels.kernel import MAX_PENDING, ManagedKernel
from jkg.kernels.messages import KernelMessage
from jkg.testing import FakeChannels, FakeLaunchedKernel, RecordingClient
from jkg.wire import IncomingMessage


def make_kernel(replay_limit=1_000_000):
    clock = Clock()
    kernel = ManagedKernel("k1", "python3", FakeLaunchedKernel(), FakeChannels, clock, replay_limit)
    return kernel, clock


def kernel_message(channel, msg_type, parent_id=None, content=None, msg_id=None):
    header = {"msg_id": msg_id or f"{msg_type}-{id(content)}", "msg_type": msg_type}
    parts = [json.dumps(header).encode(), json.dumps({"msg_id": parent_id} if parent_id else {}).encode(),
             b"{}", json.dumps(content or {}).encode()]
    return KernelMessage(channel, b"sig", parts, header["msg_id"], msg_type, parent_id)


def request(msg_id, msg_type="execute_request", channel="shell"):
    header = {"msg_id": msg_id, "msg_type": msg_type}
    return IncomingMessage(channel, header, [json.dumps(header).encode(), b"{}", b"{}", b"{}"])


def test_recording_client_provides_the_interface():
    assert verifyObject(IKernelClient, RecordingClient())


def test_iopub_goes_to_every_client_as_the_same_object():
    kernel, _ = make_kernel()
    a, b = RecordingClient("a"), RecordingClient("b")
    kernel.attach(a)
    kernel.attach(b)
    message = kernel_message("iopub", "stream", content={"name": "stdout", "text": "x"})
    kernel.channels.on_message(message)
    assert a.delivered == [message] and b.delivered == [message]
    assert a.delivered[0] is b.delivered[0]  # (the web layer builds its frames once per message)


def test_replies_go_only_to_the_requesting_session():
    kernel, _ = make_kernel()
    a, b = RecordingClient("a"), RecordingClient("b")
    kernel.attach(a)
    kernel.attach(b)
    kernel.send(a, request("req-1"))
    assert kernel.channels.sent[-1][0] == "shell"
    reply = kernel_message("shell", "execute_reply", parent_id="req-1")
    kernel.channels.on_message(reply)
    assert a.delivered == [reply] and b.delivered == []
    # a second reply to the same request has nobody waiting any more
    kernel.channels.on_message(kernel_message("shell", "execute_reply", parent_id="req-1"))
    assert a.delivered == [reply]


def test_input_request_follows_its_execute_request():
    kernel, _ = make_kernel()
    a, b = RecordingClient("a"), RecordingClient("b")
    kernel.attach(a)
    kernel.attach(b)
    kernel.send(a, request("req-2"))
    for _ in range(2):  # several input() calls in one cell
        kernel.channels.on_message(kernel_message("stdin", "input_request", parent_id="req-2"))
    assert len(a.delivered) == 2 and b.delivered == []


def test_messages_without_reply_are_not_tracked():
    kernel, _ = make_kernel()
    client = RecordingClient("a")
    kernel.attach(client)
    for n in range(100):
        kernel.send(client, request(f"comm-{n}", msg_type="comm_msg"))
    assert kernel._pending == {}


def test_pending_requests_are_bounded():
    kernel, _ = make_kernel()
    client = RecordingClient("a")
    kernel.attach(client)
    for n in range(MAX_PENDING + 50):
        kernel.send(client, request(f"r{n}"))
    assert len(kernel._pending) == MAX_PENDING


def test_clients_cannot_write_iopub():
    kernel, _ = make_kernel()
    client = RecordingClient("a")
    with pytest.raises(BadRequest):
        kernel.send(client, request("x", channel="iopub"))


def test_status_tracks_execution_state():
    kernel, _ = make_kernel()
    kernel.execution_state = "idle"
    kernel.channels.on_message(kernel_message("iopub", "status", content={"execution_state": "busy"}))
    assert kernel.model()["execution_state"] == "busy"


def test_output_while_away_is_replayed_to_the_same_session_only():
    kernel, _ = make_kernel()
    first = RecordingClient("s1")
    kernel.attach(first)
    kernel.send(first, request("req-3"))
    kernel.detach(first)
    stream = kernel_message("iopub", "stream", content={"text": "late"})
    reply = kernel_message("shell", "execute_reply", parent_id="req-3")
    kernel.channels.on_message(stream)
    kernel.channels.on_message(reply)
    back = RecordingClient("s1")
    kernel.attach(back)
    assert back.delivered == [stream, reply]
    # a different session arriving first throws the buffer away
    kernel.detach(back)
    kernel.channels.on_message(kernel_message("iopub", "stream", content={"text": "lost"}))
    other = RecordingClient("s2")
    kernel.attach(other)
    assert other.delivered == []


def test_replay_buffer_is_bounded_and_says_so():
    kernel, _ = make_kernel(replay_limit=2000)
    client = RecordingClient("s")
    kernel.attach(client)
    kernel.detach(client)
    for n in range(100):
        kernel.channels.on_message(kernel_message("iopub", "stream", content={"text": "y" * 100, "n": n}))
    back = RecordingClient("s")
    kernel.attach(back)
    notice = back.delivered[0]
    assert notice.msg_type == "stream" and b"dropped" in notice.parts[3]
    assert 0 < len(back.delivered) < 30
    assert json.loads(back.delivered[-1].parts[3])["n"] == 99


def test_same_session_replaces_the_stale_client():
    kernel, _ = make_kernel()
    stale, fresh = RecordingClient("s"), RecordingClient("s")
    kernel.attach(stale)
    kernel.attach(fresh)
    assert stale.closed is not None and fresh.closed is None
    assert kernel.model()["connections"] == 1
    kernel.detach(stale)  # the stale socket's late close must not detach the fresh one
    assert kernel.model()["connections"] == 1


def test_wait_ready_nudges_until_reply_and_iopub():
    kernel, clock = make_kernel()
    ready = kernel.wait_ready(timeout=10)
    assert len(kernel.channels.sent) == 1
    clock.advance(0.5)
    clock.advance(0.5)
    assert len(kernel.channels.sent) == 3 and not ready.called
    nudge_id = json.loads(kernel.channels.sent[-1][1][0])["msg_id"]
    kernel.channels.on_message(kernel_message("shell", "kernel_info_reply", parent_id=nudge_id))
    clock.advance(0.05)
    assert not ready.called  # no iopub yet: the SUB socket may still be joining
    kernel.channels.on_message(kernel_message("iopub", "status", content={"execution_state": "idle"}))
    clock.advance(0.05)
    assert ready.called
    assert kernel._internal == {}


def test_wait_ready_times_out():
    kernel, clock = make_kernel()
    ready = kernel.wait_ready(timeout=2)
    failures = []
    ready.addErrback(failures.append)
    for _ in range(6):
        clock.advance(0.5)
    assert failures and failures[0].check(KernelLaunchError)
    assert "within 2 s" in failures[0].value.message


def test_wait_ready_fails_fast_when_the_process_dies():
    kernel, clock = make_kernel()
    kernel.launched.alive = False
    ready = kernel.wait_ready(timeout=60)
    failures = []
    ready.addErrback(failures.append)
    for _ in range(4):
        clock.advance(0.5)
    assert failures and "exited" in failures[0].value.message
