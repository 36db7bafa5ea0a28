"""The kernel channels WebSocket end to end: real kernels, real WebSockets, both formats."""
import os
import signal
import time

import pytest
import websocket

from conftest import TOKEN
from support import interrupted, stdout_of

FORMATS = pytest.mark.parametrize("v1", [False, True], ids=["legacy", "v1"])

COMM_ECHO = """
def _echo_target(comm, open_msg):
    @comm.on_msg
    def _echo(msg):
        comm.send(data={"echo": msg["content"]["data"]}, buffers=msg["buffers"])
get_ipython().kernel.comm_manager.register_target("echo", _echo_target)
"""


@pytest.fixture
def kernel(gateway):
    model = gateway.start_kernel()
    yield model
    gateway.request("DELETE", f"/api/kernels/{model['id']}")


@FORMATS
def test_execute_outputs(gateway, kernel, v1):
    with gateway.connect(kernel["id"], v1=v1) as client:
        code = ("from IPython.display import display, HTML\n"
                "print('hello')\n"
                "display(HTML('<b>bold</b>'))\n"
                "6 * 7")
        messages = client.run(code)
        types = [m["msg_type"] for m in messages]
        assert types[0] == "status" and messages[0]["content"]["execution_state"] == "busy"
        assert "execute_input" in types
        assert stdout_of(messages) == "hello\n"
        display = next(m for m in messages if m["msg_type"] == "display_data")
        assert display["content"]["data"]["text/html"] == "<b>bold</b>"
        result = next(m for m in messages if m["msg_type"] == "execute_result")
        assert result["content"]["data"]["text/plain"] == "42"
        reply = next(m for m in messages if m["msg_type"] == "execute_reply")
        assert reply["channel"] == "shell" and reply["content"]["status"] == "ok"

        error = client.run("1 / 0")
        err = next(m for m in error if m["msg_type"] == "error")
        assert err["content"]["ename"] == "ZeroDivisionError"
        assert next(m for m in error if m["msg_type"] == "execute_reply")["content"]["status"] == "error"


@FORMATS
def test_unicode_and_large_output(gateway, kernel, v1):
    with gateway.connect(kernel["id"], v1=v1) as client:
        assert stdout_of(client.run("print('żółw 🐢 \"quoted\" \\\\ done')")) == 'żółw 🐢 "quoted" \\ done\n'
        out = stdout_of(client.run("print('x' * 3_000_000)"))
        assert len(out) == 3_000_001


@FORMATS
def test_stdin_round_trip(gateway, kernel, v1):
    with gateway.connect(kernel["id"], v1=v1) as client:
        msg_id = client.execute("name = input('who? '); print('hi', name)", allow_stdin=True)
        request = client.wait_for(lambda m: m["msg_type"] == "input_request")
        assert request["channel"] == "stdin"
        assert request["content"]["prompt"] == "who? "
        client.send("stdin", "input_reply", {"value": "ada"}, parent=request["header"])
        assert stdout_of(client.collect(msg_id)) == "hi ada\n"


def test_input_request_goes_only_to_the_asking_client(gateway, kernel):
    with gateway.connect(kernel["id"]) as asker, gateway.connect(kernel["id"]) as other:
        msg_id = asker.execute("answer = input('? ')", allow_stdin=True)
        request = asker.wait_for(lambda m: m["msg_type"] == "input_request")
        asker.send("stdin", "input_reply", {"value": "42"}, parent=request["header"])
        asker.collect(msg_id)
        # the other client sees the iopub traffic, but neither the input_request nor the reply
        seen = []
        while True:
            msg = other.recv(10)
            seen.append((msg["channel"], msg["msg_type"]))
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        assert ("stdin", "input_request") not in seen
        assert ("shell", "execute_reply") not in seen
        assert ("iopub", "execute_input") in seen


@FORMATS
def test_comm_with_binary_buffers(gateway, kernel, v1):
    with gateway.connect(kernel["id"], v1=v1) as client:
        client.run(COMM_ECHO)
        comm_id = "c0ffee" + ("v1" if v1 else "legacy")
        client.send("shell", "comm_open", {"comm_id": comm_id, "target_name": "echo", "data": {}})
        payload = bytes([0, 1, 2, 255]) + bytes(range(256))
        client.send("shell", "comm_msg", {"comm_id": comm_id, "data": {"n": 1}}, buffers=[payload, b""])
        echo = client.wait_for(lambda m: m["msg_type"] == "comm_msg")
        assert echo["content"]["comm_id"] == comm_id
        assert echo["content"]["data"] == {"echo": {"n": 1}}
        assert [bytes(b) for b in echo["buffers"]] == [payload, b""]


def test_interrupt_a_running_sleep(gateway, kernel):
    with gateway.connect(kernel["id"]) as client:
        msg_id = client.start_sleep(30)
        started = time.monotonic()
        assert gateway.request("POST", f"/api/kernels/{kernel['id']}/interrupt").status_code == 204
        messages = client.collect(msg_id, timeout=20)
        assert time.monotonic() - started < 10
        assert interrupted(messages), [m["msg_type"] for m in messages]


def test_restart_keeps_id_loses_state_and_tells_clients(gateway, kernel):
    with gateway.connect(kernel["id"]) as client:
        client.run("survivor = 1")
        response = gateway.request("POST", f"/api/kernels/{kernel['id']}/restart")
        assert response.status_code == 200 and response.json()["id"] == kernel["id"]
        # a requested restart says "starting"; "restarting" means a crash (as in jupyter_server)
        status = client.wait_for(lambda m: m["msg_type"] == "status" and m["parent_header"] == {})
        assert status["content"]["execution_state"] == "starting"
        messages = client.run("print('survivor' in globals())")
        assert stdout_of(messages) == "False\n"


def test_a_restarted_kernel_can_write_much_to_stderr(gateway, kernel):
    """Each start of the process gets a pipe the gateway reads: a restarted kernel used to hang after 128 KiB.

    300 KB is more than ipykernel's pipe and the gateway's together hold, so the
    writes end only if the gateway reads the restarted process's pipe.
    """
    assert gateway.request("POST", f"/api/kernels/{kernel['id']}/restart").status_code == 200
    with gateway.connect(kernel["id"]) as client:
        messages = client.run("import os\nfor _ in range(6): os.write(2, b'e' * 50000)\nprint('wrote')", timeout=30)
        assert stdout_of(messages) == "wrote\n"


def test_killed_kernel_is_restarted_automatically(gateway, kernel):
    with gateway.connect(kernel["id"]) as client:
        pid = int(stdout_of(client.run("import os; print(os.getpid())")))
        os.kill(pid, signal.SIGKILL)
        client.wait_for(lambda m: m["msg_type"] == "status" and m["content"]["execution_state"] == "restarting",
                        timeout=20)
        deadline = time.monotonic() + 60
        while gateway.request("GET", f"/api/kernels/{kernel['id']}").json()["execution_state"] != "idle":
            assert time.monotonic() < deadline, "kernel was not restarted"
            time.sleep(0.2)
        new_pid = int(stdout_of(client.run("import os; print(os.getpid())")))
        assert new_pid != pid


def test_two_clients_share_iopub_but_not_replies(gateway, kernel):
    with gateway.connect(kernel["id"]) as first, gateway.connect(kernel["id"], v1=True) as second:
        assert gateway.request("GET", f"/api/kernels/{kernel['id']}").json()["connections"] == 2
        msg_id = first.execute("print('shared')")
        mine = first.collect(msg_id)
        assert stdout_of(mine) == "shared\n"
        theirs = []
        while not any(m["msg_type"] == "status" and m["content"]["execution_state"] == "idle" for m in theirs):
            theirs.append(second.recv(10))
        assert stdout_of(theirs) == "shared\n"
        assert not any(m["msg_type"] == "execute_reply" for m in theirs)


@FORMATS
def test_reconnect_replays_output_missed_while_away(gateway, kernel, v1):
    client = gateway.connect(kernel["id"], session_id="replay-session", v1=v1)
    msg_id = client.execute("import time; time.sleep(1.5); print('while you were away')")
    client.wait_for(lambda m: m["msg_type"] == "execute_input")
    client.close()
    time.sleep(3)
    with gateway.connect(kernel["id"], session_id="replay-session", v1=v1) as back:
        messages = back.collect(msg_id, timeout=10)
        assert stdout_of(messages) == "while you were away\n"


def test_other_session_does_not_get_the_replay(gateway, kernel):
    client = gateway.connect(kernel["id"], session_id="owner")
    msg_id = client.execute("print('private')")
    client.close()
    time.sleep(1.5)
    with gateway.connect(kernel["id"], session_id="intruder") as other:
        with pytest.raises((TimeoutError, websocket.WebSocketTimeoutException)):
            other.wait_for(lambda m: m["parent_header"].get("msg_id") == msg_id, timeout=2)


def test_same_session_replaces_stale_connection(gateway, kernel):
    stale = gateway.connect(kernel["id"], session_id="dup")
    with gateway.connect(kernel["id"], session_id="dup") as fresh:
        with pytest.raises((ConnectionError, websocket.WebSocketConnectionClosedException)):
            stale.recv(10)
        assert stdout_of(fresh.run("print(1)")) == "1\n"


# Every kind of malformed frame is covered in memory (test_message_path); one end to end shows that only
# that client is closed and the kernel serves the others.
@pytest.mark.parametrize("frame,binary", [
    (b"\x00\x00\x00\x09garbage", True),
])
def test_malformed_frames_close_only_that_client(gateway, kernel, frame, binary):
    with gateway.connect(kernel["id"]) as bystander:
        bad = gateway.connect(kernel["id"])
        if binary:
            bad.ws.send_binary(frame)
        else:
            bad.ws.send(frame.decode())
        with pytest.raises((ConnectionError, websocket.WebSocketConnectionClosedException)):
            bad.recv(10)
        assert stdout_of(bystander.run("print('still here')")) == "still here\n"
    assert gateway.request("GET", f"/api/kernels/{kernel['id']}").status_code == 200


def test_a_message_on_an_unknown_channel_is_ignored(gateway, kernel):
    """As in jupyter_server: a warning in the log, and the connection carries on (both formats: in memory)."""
    with gateway.connect(kernel["id"], v1=True) as client:
        client.send("nope", "kernel_info_request", {})
        assert stdout_of(client.run("print('still here')")) == "still here\n"


def test_websocket_auth_and_lookup_happen_before_upgrade(gateway, kernel):
    base = f"{gateway.ws_url}/api/kernels/{kernel['id']}/channels?session_id=s"
    with pytest.raises(websocket.WebSocketBadStatusException) as no_token:
        websocket.create_connection(base, timeout=10)
    assert no_token.value.status_code == 401
    with pytest.raises(websocket.WebSocketBadStatusException) as unknown:
        websocket.create_connection(
            f"{gateway.ws_url}/api/kernels/00000000-0000-0000-0000-000000000000/channels?token={TOKEN}", timeout=10)
    assert unknown.value.status_code == 404
    with pytest.raises(websocket.WebSocketBadStatusException) as bad_protocol:
        websocket.create_connection(base + f"&token={TOKEN}", subprotocols=["mqtt"], timeout=10)
    assert bad_protocol.value.status_code == 400
    ok = websocket.create_connection(base + f"&token={TOKEN}", header=["Authorization: token " + TOKEN],
                                     subprotocols=["mqtt", "v1.kernel.websocket.jupyter.org"], timeout=10)
    assert ok.getsubprotocol() == "v1.kernel.websocket.jupyter.org"
    ok.close()


def test_delete_closes_open_websockets(gateway):
    model = gateway.start_kernel()
    client = gateway.connect(model["id"])
    assert gateway.request("DELETE", f"/api/kernels/{model['id']}").status_code == 204
    with pytest.raises((ConnectionError, websocket.WebSocketConnectionClosedException)):
        client.recv(10)
