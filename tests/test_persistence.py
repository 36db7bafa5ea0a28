"""Kernels that survive a gateway restart: the state database, keep-on-exit, SIGKILL, reattach."""
import os
import signal
import stat
import subprocess
import time

import pytest
import websocket

from support import TWISTD, GatewayProcess, interrupted, pid_alive, stdout_of


def kernel_pid(gateway, kernel_id, session_id=None):
    with gateway.connect(kernel_id, session_id=session_id) as client:
        return int(stdout_of(client.run("import os; print(os.getpid())")))


def wait_reattached(gateway, kernel_id):
    """Return once ``gateway`` lists the kernel (reattaching runs after the gateway listens)."""
    deadline = time.monotonic() + 30
    while kernel_id not in [k["id"] for k in gateway.request("GET", "/api/kernels").json()]:
        assert time.monotonic() < deadline, gateway.output.decode(errors="replace")[-3000:]
        time.sleep(0.2)


@pytest.fixture
def state_db(tmp_path):
    return str(tmp_path / "state.sqlite")


def test_sigterm_without_keep_shuts_down_and_forgets(state_db):
    with GatewayProcess("--state-db", state_db) as gateway:
        kernel = gateway.start_kernel()
        pid = kernel_pid(gateway, kernel["id"])
    assert not pid_alive(pid)
    assert stat.S_IMODE(os.stat(state_db).st_mode) == 0o600
    with GatewayProcess("--state-db", state_db) as gateway:
        time.sleep(0.5)
        assert gateway.request("GET", "/api/kernels").json() == []


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_kernels_survive_and_are_reattached(state_db, stop_signal):
    first = GatewayProcess("--state-db", state_db, "--keep-kernels-on-exit", token="tok").start()
    pids = []
    try:
        keep = first.start_kernel()
        doomed = first.start_kernel()
        with first.connect(keep["id"], session_id="s1") as client:
            client.run("memory = 'kept across gateways'")
        keep_pid = kernel_pid(first, keep["id"])
        doomed_pid = kernel_pid(first, doomed["id"])
        pids = [keep_pid, doomed_pid]
        ws = first.connect(keep["id"], session_id="s1")
    finally:
        first.stop(stop_signal)
    assert pid_alive(keep_pid) and pid_alive(doomed_pid)
    if stop_signal == signal.SIGTERM:  # told to come back (4503), not that the kernel is gone (1000)
        ws.ws.settimeout(10)
        opcode, data = ws.ws.recv_data(control_frame=True)
        while opcode != websocket.ABNF.OPCODE_CLOSE:
            opcode, data = ws.ws.recv_data(control_frame=True)
        assert int.from_bytes(data[:2], "big") == 4503
    os.kill(doomed_pid, signal.SIGKILL)
    time.sleep(0.2)

    second = GatewayProcess("--state-db", state_db, token="tok").start()
    try:
        wait_reattached(second, keep["id"])
        ids = [k["id"] for k in second.request("GET", "/api/kernels").json()]
        assert ids == [keep["id"]]  # the dead one is forgotten
        with second.connect(keep["id"], session_id="s1") as client:
            assert stdout_of(client.run("print(memory, __import__('os').getpid())")) == \
                f"kept across gateways {keep_pid}\n"
            msg_id = client.start_sleep(30)
            assert second.request("POST", f"/api/kernels/{keep['id']}/interrupt").status_code == 204
            answer = client.collect(msg_id, timeout=20)
            assert interrupted(answer), [m["msg_type"] for m in answer]
        restarted = second.request("POST", f"/api/kernels/{keep['id']}/restart")
        assert restarted.status_code == 200, restarted.text
        new_pid = kernel_pid(second, keep["id"])
        assert new_pid != keep_pid and not pid_alive(keep_pid)
        pids.append(new_pid)
    finally:
        second.stop()
    assert not [pid for pid in pids if pid_alive(pid)]


SPILL = """
import os, threading, time
def _spill():
    time.sleep(1)  # the gateway has gone by then
    for _ in range(6):
        os.write(2, b"e" * 50000)  # 300 KB: more than the pipes on the way hold
    os.write(2, b"spilled while no gateway ran\\n")
spill = threading.Thread(target=_spill)
spill.start()
"""


def test_a_kept_kernel_writes_to_stderr_while_no_gateway_runs(state_db):
    first = GatewayProcess("--state-db", state_db, "--keep-kernels-on-exit", token="tok").start()
    try:
        kernel = first.start_kernel()
        pid = kernel_pid(first, kernel["id"])
        with first.connect(kernel["id"]) as client:
            client.run(SPILL)
    finally:
        first.stop(signal.SIGTERM)
    time.sleep(2)

    second = GatewayProcess("--state-db", state_db, token="tok").start()
    try:
        wait_reattached(second, kernel["id"])
        with second.connect(kernel["id"]) as client:
            # the writer waited for a reader, and was not cut off (EPIPE ends ipykernel's fd 2 forwarding)
            # (300 KB: it got through only if the second gateway reads the pipe)
            assert stdout_of(client.run("spill.join(20); print(spill.is_alive())", timeout=40)) == "False\n"
            again = client.run("import os\nfor _ in range(6): os.write(2, b'e' * 50000)\nprint('wrote')",
                               timeout=30)
            assert stdout_of(again) == "wrote\n"
    finally:
        second.stop()
    assert not pid_alive(pid)


def test_two_gateways_cannot_share_a_state_database(state_db):
    with GatewayProcess("--state-db", state_db):
        result = subprocess.run([*TWISTD, "-n", "--pidfile=", "jkg", "--port", "0", "--state-db", state_db],
                                capture_output=True, timeout=60)
        assert result.returncode == 2
        assert b"in use by another jkg" in result.stderr


def test_state_db_can_be_disabled(tmp_path):
    with GatewayProcess("--state-db", "none") as gateway:
        gateway.start_kernel()
        assert not any(name.endswith(".sqlite") for name in os.listdir(gateway.runtime_dir))
