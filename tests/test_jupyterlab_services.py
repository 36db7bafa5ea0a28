"""End to end: the real @jupyterlab/services client drives jkg from Node.

``tests/js/services_client.mjs`` uses the library exactly as a Node
application would -- ``ServerConnection.makeSettings`` with ``ws`` as the
WebSocket, ``KernelManager``/``KernelConnection``, ``KernelAPI`` and
``KernelSpecAPI`` -- against a real ``twistd jkg`` on a loopback port, and
prints one JSON line per step.  The script runs once per gateway in a module
fixture; each step is then asserted by its own test.  It runs against a
token-protected gateway (REST ``Authorization: token``, WebSocket
``?token=``) and against one without a token.

The exact library version is pinned in ``tests/js/package.json`` and
``package-lock.json``; ``npm ci`` installs it when ``node_modules`` is missing
or holds another version.  Only a machine without ``node``/``npm`` skips.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from support import GatewayProcess, children_of, pid_alive

JS_DIR = Path(__file__).parent / "js"
SCRIPT = JS_DIR / "services_client.mjs"
NODE = shutil.which("node")
NPM = shutil.which("npm")
CLIENT_TIMEOUT = 120.0
NPM_TIMEOUT = 600.0
V1 = "v1.kernel.websocket.jupyter.org"
BUFFER = [0, 1, 2, 255]

pytestmark = pytest.mark.skipif(not (NODE and NPM), reason="node and npm are needed to run @jupyterlab/services "
                                                           "(neither is installed on this machine)")


# ------------------------------------------------------------------------------------------- helpers


def _pinned_version() -> str:
    return json.loads((JS_DIR / "package.json").read_text())["dependencies"]["@jupyterlab/services"]


def _installed_version() -> str | None:
    installed = JS_DIR / "node_modules" / "@jupyterlab" / "services" / "package.json"
    try:
        return json.loads(installed.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def ensure_node_modules() -> None:
    """``npm ci`` from the committed lock file unless the pinned version is already installed."""
    if _installed_version() == _pinned_version():
        return
    result = subprocess.run([NPM, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=JS_DIR,
                            capture_output=True, text=True, timeout=NPM_TIMEOUT, stdin=subprocess.DEVNULL)
    if result.returncode != 0 or _installed_version() != _pinned_version():
        pytest.fail(f"npm ci in {JS_DIR} failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")


class ChildWatcher:
    """Samples the gateway's child processes (its kernels) until stopped."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.pid = pid
        self.interval = interval
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.seen |= children_of(self.pid)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.seen |= children_of(self.pid)
        self._stop.set()
        self._thread.join(5)


def _gateway_env() -> dict:
    """This environment without settings that would change the gateway under test."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("KG_", "JKG_", "KERNEL_"))}


def run_client(token: str) -> SimpleNamespace:
    """Start a gateway, run the Node script against it, stop the gateway; return everything observed."""
    ensure_node_modules()
    gateway = GatewayProcess("--list-kernels", "true", token=token)
    gateway.env = {**_gateway_env(), "JUPYTER_RUNTIME_DIR": gateway.runtime_dir}  # its own, as every gateway here
    gateway.start()
    started = time.monotonic()
    try:
        with ChildWatcher(gateway.process.pid) as watcher:
            env = {**os.environ, "JKG_OVERALL_TIMEOUT_MS": str(int((CLIENT_TIMEOUT - 10) * 1000))}
            env.pop("JKG_TOKEN", None)
            cmd = [NODE, str(SCRIPT), "--base-url", gateway.url + "/"]
            if token:
                cmd += ["--token", token]
            try:
                proc = subprocess.run(cmd, cwd=JS_DIR, capture_output=True, text=True, timeout=CLIENT_TIMEOUT,
                                      env=env, stdin=subprocess.DEVNULL)
                returncode, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
            except subprocess.TimeoutExpired as expired:
                returncode = None
                stdout = (expired.stdout or b"").decode(errors="replace") if isinstance(expired.stdout, bytes) \
                    else (expired.stdout or "")
                stderr = f"node was killed after {CLIENT_TIMEOUT} s"
    finally:
        elapsed = time.monotonic() - started
        gateway.stop()
    deadline = time.monotonic() + 10
    while any(pid_alive(pid) for pid in watcher.seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    results = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            results[result["step"]] = result
    return SimpleNamespace(token=token, returncode=returncode, stdout=stdout, stderr=stderr, results=results,
                           seconds=elapsed, gateway_output=gateway.output.decode(errors="replace"),
                           kernels_seen=watcher.seen, survivors=[pid for pid in watcher.seen if pid_alive(pid)])


def explain(run: SimpleNamespace) -> str:
    return (f"node exit {run.returncode}\n--- stdout\n{run.stdout[-6000:]}\n--- stderr\n{run.stderr[-6000:]}"
            f"\n--- gateway\n{run.gateway_output[-6000:]}")


def step(run: SimpleNamespace, name: str) -> dict:
    """One step's result, failing the test if it did not pass."""
    result = run.results.get(name)
    if result is None:
        failed = [r for r in run.results.values() if not r["ok"]]
        where = f"the script failed at {failed[0]['step']!r}: {failed[0]['error']}" if failed else "no failure line"
        pytest.fail(f"step {name!r} was not reached; {where}\n{explain(run)}")
    if not result["ok"]:
        pytest.fail(f"step {name!r} failed: {result['error']}\n{explain(run)}")
    return result


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def token_run():
    return run_client(token=f"jkg-js-{secrets.token_hex(12)}")


@pytest.fixture(scope="module")
def open_run():
    return run_client(token="")


# ------------------------------------------------------------------------------------------- the token run


def test_client_ran_to_completion(token_run):
    assert token_run.returncode == 0, explain(token_run)
    assert step(token_run, "done")
    versions = step(token_run, "versions")
    assert versions["services"] == _pinned_version()
    assert versions["token"] is True


def test_wrong_token_is_refused(token_run):
    assert step(token_run, "auth_rejected")["status"] == 401


def test_kernelspecs(token_run):
    result = step(token_run, "kernelspecs")
    assert "python3" in result["names"]
    assert result["default"] in result["names"]
    assert any(name.startswith("logo-") for name in result["resources"])


def test_start_kernel_and_connect(token_run):
    result = step(token_run, "start")
    assert result["ws_protocol"] == V1
    assert "&token=<token>" in result["ws_url"], "the library puts the token in the WebSocket query"
    assert f"/api/kernels/{result['kernel_id']}/channels?session_id=" in result["ws_url"]
    assert result["implementation"] == "ipython"


def test_execute_stream(token_run):
    assert step(token_run, "execute_stream")["stdout"] == "hello from jkg\n"


def test_execute_result_and_error(token_run):
    result = step(token_run, "execute_result")
    assert result["result"] == "42"
    assert result["error"] == "ZeroDivisionError"


def test_stdin_round_trip(token_run):
    result = step(token_run, "stdin")
    assert result["prompt"] == "name? "
    assert result["stdout"] == "hello jkg-user\n"


def test_comm_binary_buffer_over_v1(token_run):
    result = step(token_run, "comm_v1")
    assert result["buffer"] == BUFFER
    assert result["ws_protocol"] == V1
    assert result["frames"]["text"] == 0


def test_comm_binary_buffer_over_legacy_protocol(token_run):
    result = step(token_run, "comm_legacy")
    assert result["buffer"] == BUFFER
    assert result["ws_protocol"] == "", "no subprotocol offered, none selected"
    assert result["frames"]["text"] > 0 and result["frames"]["binary"] > 0


def test_interrupt(token_run):
    assert step(token_run, "interrupt")["ename"] == "KeyboardInterrupt"


def test_restart_keeps_id_and_reconnects(token_run):
    result = step(token_run, "restart")
    assert result["kernel_id"] == step(token_run, "start")["kernel_id"]
    assert result["stdout"] == "False 5\n", "variables from before the restart are gone"
    assert result["execution_count"] == 1
    assert result["connections"][-1] == "connected"
    assert result["session_id_kept"] is True


def test_rest_restart_is_not_reported_as_auto_restart(token_run):
    result = step(token_run, "restart")
    assert "autorestarting" not in result["statuses"], result["statuses"]
    assert result["new_sockets"] == 1, f"{result['new_sockets']} reconnections for one restart"


def test_shutdown_removes_kernel(token_run):
    result = step(token_run, "shutdown")
    kernel_id = step(token_run, "start")["kernel_id"]
    assert kernel_id not in result["listed"]
    assert result["model_after"] == "not found"


def test_shutdown_lets_other_clients_disconnect_cleanly(token_run):
    result = step(token_run, "shutdown")
    assert result["observer_close_code"] in (1000, 1001), result
    assert result["observer_connection_status"] == "disconnected", result
    assert result["observer_reconnect_sockets"] == 0, result


def test_token_is_not_logged(token_run):
    assert token_run.token not in token_run.gateway_output


def test_no_kernel_survives(token_run):
    assert token_run.kernels_seen, "the watcher never saw the kernel process"
    assert not token_run.survivors, f"kernel processes survived the gateway: {token_run.survivors}"


# ------------------------------------------------------------------------------------------- no token


def test_without_token(open_run):
    assert open_run.returncode == 0, explain(open_run)
    assert step(open_run, "versions")["token"] is False
    assert "auth_rejected" not in open_run.results
    start = step(open_run, "start")
    assert start["ws_protocol"] == V1
    assert "token=" not in start["ws_url"]
    for name in ("kernelspecs", "execute_stream", "execute_result", "stdin", "interrupt", "restart", "shutdown",
                 "done"):
        step(open_run, name)
    assert step(open_run, "comm_v1")["buffer"] == BUFFER
    assert step(open_run, "comm_legacy")["buffer"] == BUFFER
    assert step(open_run, "restart")["stdout"] == "False 5\n"
    assert open_run.kernels_seen, "the watcher never saw the kernel process"
    assert not open_run.survivors, f"kernel processes survived the gateway: {open_run.survivors}"
