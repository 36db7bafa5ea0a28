"""``twistd jkg`` as a process: startup failures, signals, and no orphan kernels."""
import signal
import socket
import subprocess

import pytest
import requests

from support import TWISTD, GatewayProcess, children_of, pid_alive


def run_twistd(*args, timeout=60):
    return subprocess.run([*TWISTD, "-n", "--pidfile=", *args], capture_output=True, timeout=timeout)


def test_busy_port_fails_fast_with_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_twistd("jkg", "--ip", "127.0.0.1", "--port", str(port))
    assert result.returncode != 0
    errors = [line for line in result.stdout.decode().splitlines() + result.stderr.decode().splitlines()
              if "jkg: error" in line]
    assert len(errors) == 1 and "cannot listen" in errors[0] and "Address already in use" in errors[0]
    assert b"Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("args,fragment", [
    (["--port", "http"], "--port"),
    (["--max-kernels", "lots"], "--max-kernels"),
    (["--listen", "carrier-pigeon:1"], "carrier-pigeon"),
    (["--event-loop", "libev"], "--event-loop"),
])
def test_bad_values_fail_with_one_line(args, fragment):
    result = run_twistd("jkg", *args)
    assert result.returncode == 2
    assert result.stderr.decode().strip().count("\n") == 0
    assert fragment in result.stderr.decode() and b"Traceback" not in result.stderr


def test_bad_environment_value_fails():
    import os

    result = subprocess.run([*TWISTD, "-n", "--pidfile=", "jkg"], capture_output=True, timeout=60,
                            env={**os.environ, "KG_PORT": "eighty"})
    assert result.returncode == 2 and b"KG_PORT" in result.stderr


def test_incompatible_reactor_is_refused():
    result = run_twistd("--reactor=select", "jkg", "--port", "0")
    assert result.returncode == 2
    assert b"asyncio reactor" in result.stderr and b"Traceback" not in result.stderr


def test_explicit_asyncio_reactor_works():
    # --reactor=asyncio is given to twistd itself, before the subcommand
    import os

    process = subprocess.Popen([*TWISTD, "-n", "--pidfile=", "--reactor=asyncio", "jkg", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        output = b""
        for _ in range(200):
            line = process.stdout.readline()
            output += line
            if b"GatewaySite starting on" in line or not line:
                break
        assert b"GatewaySite starting on" in output, output
    finally:
        process.terminate()
        process.wait(30)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_every_kernel_down(sig):
    gateway = GatewayProcess().start()
    try:
        ids = [gateway.start_kernel()["id"] for _ in range(3)]
        kernel = gateway.connect(ids[0])
        kernel.execute("import time; time.sleep(60)")  # a busy kernel must go too
        pids = children_of(gateway.process.pid)
        assert len(pids) == 3 and all(pid_alive(pid) for pid in pids)
    finally:
        gateway.stop(sig)
    assert not [pid for pid in pids if pid_alive(pid)]
    # kernels print their own tracebacks when interrupted; the gateway logs none
    assert b"#critical]" not in gateway.output and b"Unhandled" not in gateway.output


def test_plain_command_serves_loopback_8888():
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 8888))
        except OSError:
            pytest.skip("port 8888 is in use on this machine")
    process = subprocess.Popen([*TWISTD, "-n", "--pidfile=", "jkg"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        for _ in range(200):
            line = process.stdout.readline()
            if b"starting on 8888" in line or not line:
                break
        response = requests.get("http://127.0.0.1:8888/api/kernelspecs", timeout=30)
        assert response.status_code == 200 and "python3" in response.json()["kernelspecs"]
    finally:
        process.terminate()
        process.wait(30)


def test_sigkilled_gateway_leaves_no_orphan_kernels():
    gateway = GatewayProcess().start()
    gateway.start_kernel()
    pids = children_of(gateway.process.pid)
    gateway.stop(signal.SIGKILL)
    import time

    deadline = time.monotonic() + 15  # ipykernel notices its parent is gone within about a second
    while [pid for pid in pids if pid_alive(pid)]:
        assert time.monotonic() < deadline, "kernels outlived a SIGKILLed gateway"
        time.sleep(0.1)


def test_systemd_readiness_is_notified_after_listening(tmp_path):
    import socket as socketlib

    path = str(tmp_path / "notify.sock")
    receiver = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(30)
    try:
        with GatewayProcess(env={"NOTIFY_SOCKET": path}) as gateway:
            message = receiver.recv(4096).decode()
            assert "READY=1" in message
            assert gateway.request("GET", "/api").status_code == 200
        assert "STOPPING=1" in receiver.recv(4096).decode()
    finally:
        receiver.close()
