"""Kernels on an SSH host through gateway_provisioners' DistributedProvisioner, end to end.

The "host" is an sshd in a network namespace this session creates
(tests/engines.py): the provisioner logs in over SSH with a key of the test's
own, starts gateway_provisioners' launcher there with ``nohup``, and the
kernel sends its connection info back to the gateway's response address over
the veth link.  The gateway is configured once (``--remote-hosts``,
``--remote-user``, ``--response-ip``).
"""
from __future__ import annotations

import json
import os
import sys
import time

import pytest

from engines import free_port
from jkg.auth.tenants import hash_token
from jkg.kernelspecs import ssh_spec
from support import GatewayProcess, interrupted, stdout_of

ALICE = "alice-ssh-token-9a8b7c6d5e4f"
FACTS = """
import json, os
_ns = os.stat('/proc/self/ns/net')
print(json.dumps({'pid': os.getpid(), 'netns': [_ns.st_dev, _ns.st_ino], 'user': os.environ.get('KERNEL_USERNAME')}))
"""


@pytest.fixture(scope="module")
def gateway(ssh_host, tmp_path_factory):
    root = tmp_path_factory.mktemp("engines-ssh")
    folder = root / "share" / "kernels" / "ssh-python"
    folder.mkdir(parents=True)
    spec = ssh_spec(sys.executable, str(ssh_host.scripts / "launch_ipykernel.py"))
    (folder / "kernel.json").write_text(json.dumps(spec))
    tenants = root / "tenants.toml"
    tenants.write_text(f'[tenants.alice]\ntokens = ["{hash_token(ALICE)}"]\nkernelspecs = ["ssh-python"]\n')
    (root / "logs").mkdir()
    process = GatewayProcess(
        "--tenants", str(tenants), "--remote-hosts", ssh_host.address, "--remote-user", "root",
        "--response-ip", ssh_host.host_ip, "--response-port", str(free_port(ssh_host.host_ip)),
        env={"JUPYTER_PATH": str(root / "share"), "HOME": str(ssh_host.home), "GP_KERNEL_LOG_DIR": str(root / "logs")})
    process.start()
    process.token = ALICE
    try:
        yield process
    finally:
        process.stop()
    deadline = time.monotonic() + 10
    while ssh_host.kernel_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ssh_host.kernel_pids(), "kernels survived the gateway on the SSH host"


def _netns(ssh_host) -> tuple[int, int]:
    info = os.stat(f"/run/netns/{ssh_host.namespace}")
    return info.st_dev, info.st_ino


def test_kernel_on_the_ssh_host(gateway, ssh_host):
    model = gateway.start_kernel()
    assert model["name"] == "ssh-python"
    try:
        with gateway.connect(model["id"]) as client:
            facts = json.loads(stdout_of(client.run(FACTS)))
            assert tuple(facts["netns"]) == _netns(ssh_host) != tuple(
                getattr(os.stat("/proc/self/ns/net"), name) for name in ("st_dev", "st_ino"))
            assert facts["user"] == "alice" and facts["pid"] in ssh_host.kernel_pids()
            msg_id = client.start_sleep(60)
            assert gateway.request("POST", f"/api/kernels/{model['id']}/interrupt").status_code == 204
            assert interrupted(client.collect(msg_id, timeout=30))
            assert gateway.request("POST", f"/api/kernels/{model['id']}/restart").status_code == 200
            after = json.loads(stdout_of(client.run(FACTS)))
            running = ssh_host.kernel_pids()  # the launcher and its listener process
            assert facts["pid"] not in running and after["pid"] in running and len(running) <= 2
    finally:
        started = time.monotonic()
        assert gateway.request("DELETE", f"/api/kernels/{model['id']}").status_code == 204
    # gone within seconds of the DELETE, not the ~30 s a kernel used to linger
    while ssh_host.kernel_pids() and time.monotonic() - started < 30:
        time.sleep(0.1)
    gone_after = time.monotonic() - started
    assert not ssh_host.kernel_pids() and gone_after < 5, gone_after


def test_kernel_ignoring_interrupts_is_gone_soon_after_delete(gateway, ssh_host):
    model = gateway.start_kernel()
    with gateway.connect(model["id"]) as client:
        client.execute("import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                       "print('stuck', flush=True); time.sleep(40)")
        client.wait_for(lambda m: m["msg_type"] == "stream" and "stuck" in m["content"]["text"])
        assert ssh_host.kernel_pids()
        started = time.monotonic()
        assert gateway.request("DELETE", f"/api/kernels/{model['id']}").status_code == 204
    while ssh_host.kernel_pids() and time.monotonic() - started < 45:
        time.sleep(0.1)
    gone_after = time.monotonic() - started
    assert not ssh_host.kernel_pids() and gone_after < 8, gone_after


def test_client_cannot_choose_another_ssh_host(gateway, ssh_host):
    response = gateway.request("POST", "/api/kernels", json={"env": {"KERNEL_REMOTE_HOST": "10.9.9.9"}})
    assert response.status_code == 500 and "not one of the gateway's remote hosts" in response.json()["message"]
    assert not ssh_host.kernel_pids()


def test_reap_command_only_takes_checked_values():
    from jkg.provisioners.engines import reap_command

    command = reap_command(4242, "0f1e2d3c-aaaa-bbbb-cccc-123456789abc")
    assert "grep -qsF -- '0f1e2d3c-aaaa-bbbb-cccc-123456789abc' /proc/4242/cmdline" in command
    assert "kill -TERM 4242" in command and "kill -KILL 4242" in command
    for pid, kernel_id in ((1, "abc"), (True, "abc"), ("42; reboot", "abc"), (42, "x'; reboot; '"), (42, "")):
        with pytest.raises(ValueError):
            reap_command(pid, kernel_id)
