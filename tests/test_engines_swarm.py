"""Kernels as Docker Swarm services through gateway_provisioners' DockerSwarmProvisioner.

The session's private dockerd becomes a single-node swarm with an internal
overlay network; the host is joined to the overlay (tests/engines.py) as a
gateway running as a service would be.  Each kernel is a one-task service.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time

import pytest

from engines import free_port
from jkg.auth.tenants import hash_token
from jkg.kernelspecs import container_spec
from support import GatewayProcess, stdout_of

ALICE = "alice-swarm-token-5e6f7a8b9c0d"
FACTS = """
import json, os, socket, sys
_ns = os.stat('/proc/self/ns/net')
print(json.dumps({'hostname': socket.gethostname(), 'netns': [_ns.st_dev, _ns.st_ino], 'prefix': sys.prefix,
                  'user': os.environ.get('KERNEL_USERNAME')}))
"""


@pytest.fixture(scope="module")
def gateway(docker_engine, tmp_path_factory):
    if not docker_engine.swarm_network:
        docker_engine.start_swarm()
    root = tmp_path_factory.mktemp("engines-swarm")
    folder = root / "share" / "kernels" / "swarm-python"
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(json.dumps(container_spec(docker_engine.image, swarm=True)))
    tenants = root / "tenants.toml"
    tenants.write_text(f'[tenants.alice]\ntokens = ["{hash_token(ALICE)}"]\nkernelspecs = ["swarm-python"]\n')
    process = GatewayProcess(
        "--tenants", str(tenants), "--docker-host", docker_engine.host, "--docker-network", docker_engine.swarm_network,
        "--response-ip", docker_engine.swarm_ip, "--response-port", str(free_port(docker_engine.swarm_ip)),
        env={"JUPYTER_PATH": str(root / "share")})
    process.start()
    process.token = ALICE
    try:
        yield process
    finally:
        process.stop()
    assert not docker_engine.services(), "services survived the gateway"


def _service(engine, kernel_id: str) -> list:
    client = engine.client()
    try:
        return client.services.list(filters={"label": f"kernel_id={kernel_id}"})
    finally:
        client.close()


def _wait_gone(engine, kernel_id: str, timeout: float = 20.0) -> float:
    started = time.monotonic()
    while (_service(engine, kernel_id) or [n for n in engine.containers() if kernel_id in n]) \
            and time.monotonic() - started < timeout:
        time.sleep(0.2)
    return time.monotonic() - started


def test_swarm_kernel_lifecycle(gateway, docker_engine):
    model = gateway.start_kernel()
    assert model["name"] == "swarm-python"
    [service] = _service(docker_engine, model["id"])
    try:
        with gateway.connect(model["id"]) as client:
            facts = json.loads(stdout_of(client.run(FACTS)))
            mine = os.stat("/proc/self/ns/net")
            assert facts["hostname"] != socket.gethostname() and tuple(facts["netns"]) != (mine.st_dev, mine.st_ino)
            assert facts["prefix"] == "/opt/kernel" != sys.prefix and facts["user"] == "alice"
            assert stdout_of(client.run("print(6 * 7)")) == "42\n"
            response = gateway.request("POST", f"/api/kernels/{model['id']}/restart")
            assert response.status_code == 200, response.text
            assert json.loads(stdout_of(client.run(FACTS)))["hostname"] != facts["hostname"]
        assert service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["User"] == "1000:100"
    finally:
        assert gateway.request("DELETE", f"/api/kernels/{model['id']}").status_code == 204
    assert not _service(docker_engine, model["id"])  # the service is gone when DELETE answers
    assert _wait_gone(docker_engine, model["id"]) < 20  # and swarm removes its container right after
