"""Embedding: the gateway inside an existing Twisted application, in this process.

Runs on pytest-twisted's asyncio reactor, exactly as an embedder's app would:
the gateway's resource is mounted under /jupyter/ beside the app's own page,
and its service is added to the app's service tree.
"""
import json
import os
import socket

import pytest
import pytest_twisted
import treq
import websocket
from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from jkg.config import GatewayConfig
from jkg.service import make_gateway, make_gateway_service
from support import children_of, pid_alive


def run_code(url: str, code: str) -> str:
    """A blocking WebSocket client; called in a thread so the reactor keeps running."""
    ws = websocket.create_connection(url, timeout=30)
    try:
        msg_id = "embed-1"
        ws.send(json.dumps({"header": {"msg_id": msg_id, "msg_type": "execute_request", "session": "s",
                                       "username": "u", "date": "", "version": "5.3"},
                            "parent_header": {}, "metadata": {}, "channel": "shell",
                            "content": {"code": code, "silent": False, "allow_stdin": False}}))
        out = ""
        while True:
            msg = json.loads(ws.recv())
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out += msg["content"]["text"]
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return out
    finally:
        ws.close()


@pytest.fixture(autouse=True)
def environment_restored():
    """An embedded gateway sets gateway_provisioners' GP_* variables in this process: undo it for later tests."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest_twisted.ensureDeferred
async def test_mount_the_resource_in_an_existing_site():
    others = children_of(os.getpid())  # what this test process started before (another module's daemons)
    gateway = make_gateway(GatewayConfig(base_url="/jupyter/"), reactor)
    root = Resource()
    root.putChild(b"hello", Data(b"the app's own page", "text/plain"))
    root.putChild(b"jupyter", gateway.resource.children[b"jupyter"])
    application = MultiService()
    gateway.service.setServiceParent(application)
    application.startService()
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}"
    try:
        assert await (await treq.get(base + "/hello")).text() == "the app's own page"
        response = await treq.post(base + "/jupyter/api/kernels", json={})
        assert response.code == 201
        kernel = await response.json()
        out = await deferToThread(
            run_code, f"ws://127.0.0.1:{port.getHost().port}/jupyter/api/kernels/{kernel['id']}/channels", "print(7*6)")
        assert out == "42\n"
        pids = children_of(os.getpid()) - others  # the embedded gateway's kernel
        assert pids
    finally:
        await port.stopListening()
        await application.stopService()
    assert not [pid for pid in pids if pid_alive(pid)]


@pytest_twisted.ensureDeferred
async def test_add_the_service_to_an_existing_application():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    config = GatewayConfig(listen=(f"tcp:{free_port}:interface=127.0.0.1",))
    others = children_of(os.getpid())
    application = MultiService()
    make_gateway_service(config, reactor).setServiceParent(application)
    application.privilegedStartService()
    application.startService()
    try:
        response = await treq.get(f"http://127.0.0.1:{free_port}/api/kernelspecs")
        assert response.code == 200
        assert "python3" in (await response.json())["kernelspecs"]
        started = await treq.post(f"http://127.0.0.1:{free_port}/api/kernels", json={})
        assert started.code == 201
        pids = children_of(os.getpid()) - others
    finally:
        await application.stopService()
    assert pids and not [pid for pid in pids if pid_alive(pid)]
