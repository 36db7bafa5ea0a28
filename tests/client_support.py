"""Helpers shared by the ``jkg.client`` tests: an event loop per call, a kernel per block, a test notebook.

The async client API runs in a helper thread with its own event loop
(:func:`run_async`), because under pytest-twisted the main thread's asyncio
loop is the reactor's and is running.  :func:`exercise_client` and the
notebook built by :func:`build_notebook` are run against jkg and against the
reference servers alike, so they live here rather than in one test module.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import threading
import time
from pathlib import Path

from conftest import TOKEN

from jkg.client import GatewayKernelManager

REPO = Path(__file__).resolve().parent.parent
READY = 60.0
BLOB = b"\x00\x01\x02\xff"


def run_async(coro_fn, *args, timeout: float = 120.0):
    """Run ``coro_fn(*args)`` to completion on a fresh loop in a thread; re-raise its exception."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = asyncio.run(asyncio.wait_for(coro_fn(*args), timeout))
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout + 30)
    if thread.is_alive():
        raise TimeoutError(f"{coro_fn.__name__} still running after {timeout} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def remote_kernel(url: str, token: str = TOKEN, **options):
    """A started kernel and a ready client; both torn down afterwards."""
    km = GatewayKernelManager(url=url, token=token, **options)
    await km.start_kernel()
    kc = km.client()
    try:
        await kc.wait_for_ready(timeout=READY)
        yield km, kc
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


def stdout_text(messages) -> str:
    return "".join(m["content"]["text"] for m in messages
                   if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")


COMM_CELL = """\
from comm import create_comm
widget = create_comm(target_name="jupyter.widget", metadata={"version": "2.1.0"}, data={
    "state": {"_model_name": "JkgTestModel", "_model_module": "jkg-test",
              "_model_module_version": "1.0.0", "value": 1},
    "buffer_paths": []})
widget.send({"method": "update", "state": {"value": 2, "blob": None}, "buffer_paths": [["blob"]]},
            buffers=[b"\\x00\\x01\\x02\\xff"])
print(widget.comm_id)
"""


def build_notebook():
    """Streams, rich display, an expected error, a widget comm with a binary buffer, and state across cells."""
    import nbformat

    v4 = nbformat.v4
    nb = v4.new_notebook()
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        v4.new_code_cell("import sys\nprint('hello stdout')\nprint('hello stderr', file=sys.stderr)\nanswer = 42"),
        v4.new_code_cell("from IPython.display import HTML, display\ndisplay(HTML('<b>rich</b>'))\n"
                         "{'answer': answer}"),
        v4.new_code_cell("raise ValueError('expected failure')", metadata={"tags": ["raises-exception"]}),
        v4.new_code_cell(COMM_CELL),
        v4.new_code_cell("print(answer + 1)"),
    ]
    return nb


def joined_streams(outputs) -> list[tuple[str, str]]:
    """A cell's stream outputs as a reader sees them: consecutive pieces of one stream joined.

    ipykernel may send one ``print`` as two messages (``"43"``, then ``"\\n"``) when its flush
    falls between the writes, as it does on a busy machine; nbclient keeps them apart.
    """
    joined: list[tuple[str, str]] = []
    for output in outputs:
        if output.output_type == "stream":
            if joined and joined[-1][0] == output.name:
                joined[-1] = (output.name, joined[-1][1] + output.text)
            else:
                joined.append((output.name, output.text))
    return joined


def check_executed(nb):
    streams, rich, error, comm, last = (cell.outputs for cell in nb.cells)
    assert {output.output_type for output in streams} == {"stream"}
    assert joined_streams(streams) == [("stdout", "hello stdout\n"), ("stderr", "hello stderr\n")]
    assert rich[0].output_type == "display_data" and rich[0].data["text/html"] == "<b>rich</b>"
    assert rich[1].output_type == "execute_result" and rich[1].data["text/plain"] == "{'answer': 42}"
    assert error[0].output_type == "error" and error[0].ename == "ValueError"
    assert error[0].evalue == "expected failure"
    comm_id = joined_streams(comm)[0][1].strip()
    widgets = nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    assert widgets[comm_id]["state"]["value"] == 2  # comm_open then comm_msg reached nbclient
    assert widgets[comm_id]["buffers"] == [
        {"data": base64.b64encode(BLOB).decode(), "encoding": "base64", "path": ["blob"]}]
    assert joined_streams(last) == [("stdout", "43\n")]
    assert all(cell.execution_count for cell in nb.cells)


async def execute_notebook(nb):
    import nbclient

    client = nbclient.NotebookClient(nb, kernel_manager_class=GatewayKernelManager, timeout=60,
                                     startup_timeout=READY)
    await client.async_execute()
    return nb


ECHO_TARGET = """\
from comm import get_comm_manager
def _echo(comm, open_msg):
    @comm.on_msg
    def _reply(msg):
        comm.send({"echo": msg["content"]["data"]}, buffers=[bytes(b)[::-1] for b in msg["buffers"]])
    comm.send({"opened": open_msg["content"]["data"]}, buffers=open_msg["buffers"])
get_comm_manager().register_target("jkg_echo", _echo)
"""


async def exercise_client(url: str, ws_protocol: str, token: str = TOKEN):
    """Interactive execution with rich output, a request/reply, and a comm round trip with buffers."""
    async with remote_kernel(url, token=token, ws_protocol=ws_protocol) as (km, kc):
        assert kc.protocol == ("v1" if ws_protocol == "auto" else "legacy")
        assert km.kernel_spec is not None and km.kernel_spec.language == "python"
        seen = []
        reply = await kc.execute_interactive(
            "print('out')\nfrom IPython.display import display, Markdown\ndisplay(Markdown('*md*'))\n6 * 7",
            output_hook=seen.append, timeout=30)
        assert reply["content"]["status"] == "ok" and reply["msg_type"] == "execute_reply"
        types = [m["msg_type"] for m in seen]
        assert types[0] == "status" and types[-1] == "status"
        assert {"execute_input", "stream", "display_data", "execute_result"} <= set(types)
        assert stdout_text(seen) == "out\n"
        assert next(m for m in seen if m["msg_type"] == "execute_result")["content"]["data"]["text/plain"] == "42"

        # kernel_info as a request/reply, through jupyter_client's reqrep wrapper
        info = await kc.kernel_info(reply=True, timeout=30)
        assert info["content"]["language_info"]["name"] == "python"

        # comm round trip with binary buffers, both directions
        assert (await kc.execute_interactive(ECHO_TARGET, output_hook=lambda m: None,
                                             timeout=30))["content"]["status"] == "ok"
        comm_id = kc.comm_open("jkg_echo", data={"x": 1}, buffers=[BLOB])
        opened = await wait_for_comm_msg(kc, comm_id)
        assert opened["content"]["data"] == {"opened": {"x": 1}}
        assert [bytes(b) for b in opened["buffers"]] == [BLOB]
        kc.comm_msg(comm_id, {"n": 2}, buffers=[b"abc", BLOB])
        echoed = await wait_for_comm_msg(kc, comm_id)
        assert echoed["content"]["data"] == {"echo": {"n": 2}}
        assert [bytes(b) for b in echoed["buffers"]] == [b"cba", BLOB[::-1]]
        kc.comm_close(comm_id)


async def wait_for_comm_msg(kc, comm_id, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        msg = await kc.get_iopub_msg(timeout=max(0.0, deadline - time.monotonic()))
        if msg["msg_type"] == "comm_msg" and msg["content"]["comm_id"] == comm_id:
            return msg
