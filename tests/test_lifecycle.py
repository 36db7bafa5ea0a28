"""Kernel lifecycle: warm pool, culling, seed notebooks, start/stop cycles."""
import datetime
import json
import sys
import time

import pytest
import websocket

from jkg.kernels.lifecycle import (PORT_RACE_ATTEMPTS, CullPolicy, env_injection, lost_a_port, parse_pool_sizes,
                                   python_env_update_code)
from support import GatewayProcess, children_of, pid_alive, stdout_of

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def at(seconds):
    return T0 + datetime.timedelta(seconds=seconds)


# -- policy units ---------------------------------------------------------------

def test_cull_policy_follows_jupyter_server():
    policy = CullPolicy(idle_timeout=60)
    assert not policy.should_cull(T0, at(59), 0, "idle")
    assert policy.should_cull(T0, at(61), 0, "idle")
    assert not policy.should_cull(T0, at(600), 1, "idle")  # connected
    assert not policy.should_cull(T0, at(600), 0, "busy")
    assert CullPolicy(60, cull_connected=True).should_cull(T0, at(61), 3, "idle")
    assert CullPolicy(60, cull_busy=True).should_cull(T0, at(61), 0, "busy")
    assert not CullPolicy(0).should_cull(T0, at(10**6), 0, "idle")


def test_pool_sizes():
    assert parse_pool_sizes(["r=2", "python3=4"], 1, "python3") == {"python3": 4, "r": 2}
    assert parse_pool_sizes([], 3, "python3") == {"python3": 3}
    with pytest.raises(ValueError):
        parse_pool_sizes(["python3"], 0, "python3")


def test_env_injection():
    base = {"PATH": "/bin", "KERNEL_GATEWAY": "1"}
    assert env_injection(base, dict(base)) == {}
    assert env_injection(base, {**base, "KERNEL_USERNAME": "ada"}) == {"KERNEL_USERNAME": "ada"}
    assert env_injection(base, {"PATH": "/other", "KERNEL_GATEWAY": "1"}) is None


def test_env_update_code_keeps_hostile_values_as_data():
    hostile = {"KERNEL_X": "'); import os; os.system('echo pwned'); ('", "KERNEL_Y": "\\\n\"\u2028"}
    namespace = {}
    import os

    saved = dict(os.environ)
    try:
        exec(python_env_update_code(hostile), namespace)  # noqa: S102 - the point of the test
        assert os.environ["KERNEL_X"] == hostile["KERNEL_X"] and os.environ["KERNEL_Y"] == hostile["KERNEL_Y"]
    finally:
        os.environ.clear()
        os.environ.update(saved)


# -- end to end -------------------------------------------------------------------

def kernel_pid(gateway, kernel_id):
    with gateway.connect(kernel_id) as client:
        return int(stdout_of(client.run("import os; print(os.getpid())")))


def wait_for(predicate, timeout=30.0, message="condition not reached"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")

    def notebook(name, *cells):
        path = root / name
        path.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
            {"cell_type": "code", "source": cell, "metadata": {}, "outputs": [], "execution_count": None}
            for cell in cells] + [{"cell_type": "markdown", "source": "not code", "metadata": {}}]}))
        return str(path)

    spec = root / "jupyter" / "kernels" / "notpython"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Not Python", "language": "notpython"}))
    return {"good": notebook("good.ipynb", "seeded = 40", ["seeded += ", "2"]),
            "bad": notebook("bad.ipynb", "x = 1", "1 / 0", "never = True"),
            "jupyter_path": str(root / "jupyter")}


def test_warm_pool_hands_out_and_refills(seeds):
    with GatewayProcess("--prespawn-count", "2", "--pool", "notpython=1", "--seed-uri", seeds["good"],
                        env={"JUPYTER_PATH": seeds["jupyter_path"]}) as gateway:
        wait_for(lambda: gateway.output.count(b") ready: ") == 3, message="pool did not fill")
        pooled = children_of(gateway.process.pid)
        assert len(pooled) == 3
        assert gateway.request("GET", "/api/kernels").json() == []  # pooled kernels are nobody's yet

        kernel = gateway.start_kernel(env={"KERNEL_USERNAME": "ada", "KERNEL_LAUNCH_TIMEOUT": "30"})
        pid = kernel_pid(gateway, kernel["id"])
        assert pid in pooled
        with gateway.connect(kernel["id"]) as client:
            out = stdout_of(client.run("import os; print(seeded, os.environ['KERNEL_USERNAME'])"))
        assert out == "42 ada\n"
        wait_for(lambda: gateway.output.count(b") ready: ") == 4, message="pool did not refill")

        # a kernel whose language cannot take env after start: a fresh one, the pooled one stays
        other = gateway.start_kernel(name="notpython", env={"KERNEL_FLAVOUR": "x"})
        assert kernel_pid(gateway, other["id"]) not in pooled
        plain = gateway.start_kernel(name="notpython")
        assert kernel_pid(gateway, plain["id"]) in pooled

        everything = children_of(gateway.process.pid)
    assert not [pid for pid in everything if pid_alive(pid)]


def test_seed_failure_names_the_cell(seeds):
    with GatewayProcess("--seed-uri", seeds["bad"]) as gateway:
        response = gateway.request("POST", "/api/kernels", json={})
        assert response.status_code == 500
        body = response.json()
        assert body["message"].startswith("seed notebook cell 2 failed: ZeroDivisionError")
        wait_for(lambda: not children_of(gateway.process.pid), message="failed seed left a kernel running")
        assert gateway.request("GET", "/api/kernels").json() == []


def test_bad_seed_path_fails_startup():
    import subprocess

    from support import TWISTD

    result = subprocess.run([*TWISTD, "-n", "--pidfile=", "jkg", "--port", "0", "--seed-uri", "/no/such.ipynb"],
                            capture_output=True, timeout=60)
    assert result.returncode == 2 and b"cannot read seed notebook" in result.stderr


def test_idle_kernels_are_culled():
    with GatewayProcess("--cull-idle-timeout", "2", "--cull-interval", "0.5") as gateway:
        idle = gateway.start_kernel()
        watched = gateway.start_kernel()
        client = gateway.connect(watched["id"])
        wait_for(lambda: gateway.request("GET", f"/api/kernels/{idle['id']}").status_code == 404, timeout=20,
                 message="idle kernel was not culled")
        assert gateway.request("GET", f"/api/kernels/{watched['id']}").status_code == 200  # connected
        client.close()
        wait_for(lambda: gateway.request("GET", f"/api/kernels/{watched['id']}").status_code == 404, timeout=20)
        assert gateway.request("GET", "/api/kernels").json() == []


def test_culling_connected_kernels_closes_their_websockets():
    with GatewayProcess("--cull-idle-timeout", "1", "--cull-interval", "0.5", "--cull-connected") as gateway:
        kernel = gateway.start_kernel()
        client = gateway.connect(kernel["id"])
        with pytest.raises((ConnectionError, websocket.WebSocketConnectionClosedException)):
            client.recv(20)
        assert gateway.request("GET", f"/api/kernels/{kernel['id']}").status_code == 404


def test_twenty_start_stop_cycles_leave_nothing_behind():
    with GatewayProcess() as gateway:
        seen = set()
        for _ in range(20):
            kernel = gateway.start_kernel()
            seen |= children_of(gateway.process.pid)
            assert gateway.request("DELETE", f"/api/kernels/{kernel['id']}").status_code == 204
        wait_for(lambda: not [pid for pid in seen if pid_alive(pid)], timeout=30,
                 message="kernel processes survived their DELETE")
        assert len(seen) == 20


# -- a kernel that loses a port to another process before binding it --------------------------------------------

COLLIDING_KERNEL = """
import json, os, socket, subprocess, sys
connection_file, counter, collisions = sys.argv[1], sys.argv[2], int(sys.argv[3])
starts = int(open(counter).read() or 0) + 1 if os.path.exists(counter) else 1
open(counter, "w").write(str(starts))
if starts <= collisions:  # another process takes the shell port first: the real ipykernel fails to bind it
    with open(connection_file) as handle:
        port = json.load(handle)["shell_port"]
    taken = socket.socket()
    taken.bind(("127.0.0.1", port))
    taken.listen()
    sys.exit(subprocess.call([sys.executable, "-m", "ipykernel_launcher", "-f", connection_file]))
os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", "-f", connection_file])
"""


@pytest.fixture
def colliding(tmp_path):
    """Kernelspecs whose first starts lose their shell port: ``once`` (then starts) and ``always``."""
    script = tmp_path / "colliding_kernel.py"
    script.write_text(COLLIDING_KERNEL)
    for name, collisions in (("once", 1), ("always", 99)):
        spec = tmp_path / "jupyter" / "kernels" / name
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, str(script), "{connection_file}", str(tmp_path / f"{name}.starts"),
                     str(collisions)],
            "display_name": name, "language": "python"}))
    return tmp_path


def test_lost_a_port_is_only_a_bind_failure_at_exit():
    said = "zmq.error.ZMQError: Address already in use (addr='tcp://127.0.0.1:47305')"
    assert lost_a_port(True, f"Traceback (most recent call last):\n{said}")
    assert not lost_a_port(False, said)  # a kernel that hangs is not retried
    assert not lost_a_port(True, "ModuleNotFoundError: No module named 'ipykernel'")


def test_a_kernel_that_lost_a_port_is_started_again(colliding):
    with GatewayProcess(env={"JUPYTER_PATH": str(colliding / "jupyter")}) as gateway:
        kernel = gateway.start_kernel(name="once")
        assert (colliding / "once.starts").read_text() == "2"
        with gateway.connect(kernel["id"]) as client:
            assert stdout_of(client.run("print(6 * 7)")) == "42\n"
        assert b"lost a port to another process before binding it" in gateway.output

        response = gateway.request("POST", "/api/kernels", json={"name": "always"})
        assert response.status_code == 500
        assert "Address already in use" in response.json()["message"]
        assert (colliding / "always.starts").read_text() == str(PORT_RACE_ATTEMPTS)
        assert [k["id"] for k in gateway.request("GET", "/api/kernels").json()] == [kernel["id"]]
