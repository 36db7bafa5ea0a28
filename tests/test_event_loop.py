"""``--event-loop``: the reactor on uvloop by default, asyncio's own loop on request, and clear words otherwise."""
import asyncio
import os
import subprocess
import threading
import time

import pytest
import uvloop

from jkg.event_loop import EventLoopError, describe, new_loop, resolve
from support import TWISTD, GatewayProcess


def _missing():
    raise ImportError("No module named 'uvloop'")


def test_auto_is_uvloop_when_it_imports_and_asyncio_when_it_does_not():
    assert resolve("auto") == "uvloop"
    assert resolve("auto", import_uvloop=_missing) == "asyncio"
    assert resolve("asyncio", import_uvloop=_missing) == "asyncio"


def test_an_explicit_uvloop_that_cannot_be_imported_is_an_error_naming_the_way_out():
    with pytest.raises(EventLoopError, match="uvloop cannot be imported.*--event-loop asyncio"):
        resolve("uvloop", import_uvloop=_missing)


@pytest.mark.parametrize("name,kind", [("asyncio", asyncio.BaseEventLoop), ("uvloop", uvloop.Loop)])
def test_new_loops_are_of_the_kind_named_and_described_so(name, kind):
    loop = new_loop(name)
    try:
        assert isinstance(loop, kind)
        assert describe(loop) == name
    finally:
        loop.close()


def _startup_loop_lines(gateway: GatewayProcess) -> list[str]:
    return [line.split("] ", 1)[1] for line in gateway.output.decode(errors="replace").splitlines()
            if "[jkg.startup#" in line and "event loop" in line]


@pytest.mark.parametrize("args,expected", [((), "uvloop"), (("--event-loop", "asyncio"), "asyncio")])
def test_the_gateway_runs_kernels_on_the_loop_it_names(args, expected):
    with GatewayProcess(*args) as gateway:
        kernel = gateway.connect(gateway.start_kernel()["id"], v1=True)
        try:
            outputs = [m["content"]["text"] for m in kernel.run("print(6 * 7)") if m["msg_type"] == "stream"]
        finally:
            kernel.close()
        assert outputs == ["42\n"]
        assert _startup_loop_lines(gateway) == [f"event loop: {expected}"]


def test_without_uvloop_the_default_falls_back_and_an_explicit_uvloop_fails_in_one_line(tmp_path):
    # a uvloop package that cannot be imported, first on the path: as on a machine without it
    (tmp_path / "uvloop").mkdir()
    (tmp_path / "uvloop" / "__init__.py").write_text("raise ImportError('uvloop is not here')\n")
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    with GatewayProcess(env={"PYTHONPATH": path}) as gateway:
        assert gateway.request("GET", "/api").status_code == 200
        assert _startup_loop_lines(gateway) == ["event loop: asyncio"]
    result = subprocess.run([*TWISTD, "-n", "--pidfile=", "jkg", "--port", "0", "--event-loop", "uvloop"],
                            capture_output=True, timeout=60, env={**os.environ, "PYTHONPATH": path})
    assert result.returncode == 2
    assert result.stderr.decode().strip() == (
        "jkg: error: --event-loop uvloop: uvloop cannot be imported (uvloop is not here); "
        "install it (pip install uvloop) or use --event-loop asyncio")


def test_a_reactor_installed_before_jkg_keeps_its_loop_and_an_explicit_choice_is_warned_about():
    process = subprocess.Popen([*TWISTD, "-n", "--pidfile=", "--reactor=asyncio", "jkg", "--ip", "127.0.0.1",
                                "--port", "0", "--event-loop", "uvloop"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []

    def read():
        for raw in iter(process.stdout.readline, b""):
            line = raw.decode(errors="replace")
            if "[jkg.startup#" in line and ("event loop" in line or "--event-loop" in line):
                lines.append(line.split("] ", 1)[1].strip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while len(lines) < 2 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(30)
        reader.join(5)
    assert lines == ["event loop: asyncio",
                     "--event-loop uvloop not applied: the reactor was installed before jkg "
                     "(twistd --reactor) and runs on asyncio"]
