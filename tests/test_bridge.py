"""Bridge mode: kernels started outside jkg, served through the same REST and WebSocket API."""
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from jupyter_client.connect import write_connection_file

from jkg.kernels.discovery import ConnectionFileError, kernel_id_for, read_connection_file
from support import GatewayProcess, interrupted, stdout_of


def start_outside_kernel(path):
    """An ipykernel started by hand, as in a container that already runs one."""
    write_connection_file(str(path), ip="127.0.0.1", key=uuid.uuid4().hex.encode())
    process = subprocess.Popen([sys.executable, "-m", "ipykernel_launcher", "-f", str(path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return process


def stop(process):
    if process.poll() is None:
        process.kill()
    process.wait(10)


def wait_listed(gateway, kernel_id, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        kernels = {k["id"]: k for k in gateway.request("GET", "/api/kernels").json()}
        if kernel_id in kernels:
            return kernels[kernel_id]
        assert time.monotonic() < deadline, gateway.output.decode(errors="replace")[-2000:]
        time.sleep(0.2)


def test_connection_files_are_validated(tmp_path):
    bad = tmp_path / "kernel-x.json"
    for content in ['{"ip": "127.0.0.1"}', "[]", "not json",
                    '{"ip": "127.0.0.1", "transport": "udp", "shell_port": 1, "iopub_port": 2, "stdin_port": 3, '
                    '"control_port": 4, "hb_port": 5}']:
        bad.write_text(content)
        with pytest.raises(ConnectionFileError):
            read_connection_file(str(bad))
    good_id = str(uuid.uuid4())
    assert kernel_id_for(f"/run/kernel-{good_id}.json") == good_id
    assert kernel_id_for("/tmp/conn.json") == kernel_id_for("/tmp/conn.json") != kernel_id_for("/tmp/other.json")


def test_existing_kernel_is_served_detached_and_keeps_running(tmp_path):
    path = tmp_path / "conn.json"
    outside = start_outside_kernel(path)
    try:
        with GatewayProcess("--existing", str(path)) as gateway:
            kernel_id = kernel_id_for(str(path))
            model = wait_listed(gateway, kernel_id)
            assert model["execution_state"] == "idle"
            with gateway.connect(kernel_id) as client:
                assert stdout_of(client.run("import os; print(os.getpid())")) == f"{outside.pid}\n"
                msg_id = client.start_sleep(30)
                assert gateway.request("POST", f"/api/kernels/{kernel_id}/interrupt").status_code == 204
                assert interrupted(client.collect(msg_id, timeout=20))
            refused = gateway.request("POST", f"/api/kernels/{kernel_id}/restart")
            assert refused.status_code == 409
            assert "started outside jkg" in refused.json()["message"]
            assert gateway.request("DELETE", f"/api/kernels/{kernel_id}").status_code == 204
            assert gateway.request("GET", f"/api/kernels/{kernel_id}").status_code == 404
            time.sleep(3)  # a rescan must not adopt the detached kernel again
            assert gateway.request("GET", f"/api/kernels/{kernel_id}").status_code == 404
        assert outside.poll() is None  # detached, not killed; the gateway's stop left it too
        log = gateway.output.decode(errors="replace")
        assert f"detached kernel {kernel_id}" in log and f"shut down kernel {kernel_id}" not in log
        assert f"interrupting kernel {kernel_id}" in log
    finally:
        stop(outside)


def test_death_of_an_existing_kernel_is_noticed(tmp_path):
    path = tmp_path / "conn.json"
    outside = start_outside_kernel(path)
    try:
        with GatewayProcess("--existing", str(path)) as gateway:
            kernel_id = kernel_id_for(str(path))
            wait_listed(gateway, kernel_id)
            with gateway.connect(kernel_id) as client:
                client.run("1")
                os.killpg(outside.pid, signal.SIGKILL)
                dead = client.wait_for(lambda m: m["msg_type"] == "status"
                                       and m["content"]["execution_state"] == "dead", timeout=20)
                assert dead
            assert gateway.request("GET", f"/api/kernels/{kernel_id}").json()["execution_state"] == "dead"
    finally:
        stop(outside)


def test_existing_dir_picks_up_and_drops_kernels(tmp_path):
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    with GatewayProcess("--existing-dir", str(runtime), "--own-existing") as gateway:
        kernel_id = str(uuid.uuid4())
        path = runtime / f"kernel-{kernel_id}.json"
        first = start_outside_kernel(path)
        second_id = str(uuid.uuid4())
        second = start_outside_kernel(runtime / f"kernel-{second_id}.json")
        try:
            wait_listed(gateway, kernel_id)
            wait_listed(gateway, second_id)
            with gateway.connect(kernel_id) as client:
                assert stdout_of(client.run("print('found')")) == "found\n"
            # --own-existing: DELETE stops the kernel
            assert gateway.request("DELETE", f"/api/kernels/{second_id}").status_code == 204
            second.wait(15)
            # a kernel whose file disappears is dropped
            first.kill()
            first.wait(10)
            path.unlink()
            deadline = time.monotonic() + 20
            while gateway.request("GET", f"/api/kernels/{kernel_id}").status_code != 404:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        finally:
            stop(first)
            stop(second)


def wait_state(gateway, kernel_id, state, timeout=20):
    deadline = time.monotonic() + timeout
    while gateway.request("GET", f"/api/kernels/{kernel_id}").json()["execution_state"] != state:
        assert time.monotonic() < deadline, f"kernel never became {state}"
        time.sleep(0.1)


def test_a_hung_kernel_is_noticed_through_its_heartbeat(tmp_path):
    path = tmp_path / "conn.json"
    outside = start_outside_kernel(path)
    try:
        with GatewayProcess("--existing", str(path), "--heartbeat-interval", "0.5") as gateway:
            kernel_id = kernel_id_for(str(path))
            wait_listed(gateway, kernel_id)
            own = gateway.start_kernel()
            with gateway.connect(kernel_id) as client:
                os.killpg(outside.pid, signal.SIGSTOP)  # alive, but answering nothing
                try:
                    client.wait_for(lambda m: m["msg_type"] == "status"
                                    and m["content"]["execution_state"] == "dead", timeout=20)
                    wait_state(gateway, kernel_id, "dead")
                finally:
                    os.killpg(outside.pid, signal.SIGCONT)
                wait_state(gateway, kernel_id, "idle")
                assert stdout_of(client.run("print('back')")) == "back\n"
            # kernels jkg started are watched the same way
            with gateway.connect(own["id"]) as client:
                pid = int(stdout_of(client.run("import os; print(os.getpid())")))
            os.kill(pid, signal.SIGSTOP)
            try:
                wait_state(gateway, own["id"], "dead")
            finally:
                os.kill(pid, signal.SIGCONT)
            wait_state(gateway, own["id"], "idle")
    finally:
        stop(outside)


def test_a_bystander_naming_the_connection_file_is_not_taken_for_the_kernel(tmp_path):
    """The pid is confirmed by the ports: a process that only names the file never gets the kernel's signals."""
    import json
    import socket

    from jkg.kernels.discovery import kernel_process

    sockets = [socket.socket() for _ in range(5)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    path = tmp_path / "kernel-bystander.json"
    info = {"transport": "tcp", "ip": "127.0.0.1", "key": "k", "signature_scheme": "hmac-sha256",
            **{f"{name}_port": port for name, port in zip(("shell", "iopub", "stdin", "control", "hb"), ports)}}
    path.write_text(json.dumps(info))
    listener = ("import socket, sys, time\nheld = []\nfor port in sys.argv[2:]:\n"
                "    s = socket.socket(); s.bind(('127.0.0.1', int(port))); s.listen(1); held.append(s)\n"
                "print('ready', flush=True); time.sleep(120)\n")
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(path)])
    try:
        assert kernel_process(str(path), info) is None  # names the file, holds no port
    finally:
        stop(bystander)
    holder = subprocess.Popen([sys.executable, "-c", listener, str(path), *map(str, ports)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"ready"
        assert kernel_process(str(path), info) == holder.pid  # names the file and holds every port
        assert kernel_process(str(path), {**info, "hb_port": 1}) is None  # one port held elsewhere
    finally:
        stop(holder)
