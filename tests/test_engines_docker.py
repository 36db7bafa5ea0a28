"""Kernels in Docker containers through gateway_provisioners' DockerProvisioner, end to end.

A private dockerd (tests/engines.py) runs each kernel in a container of the
debootstrap-built image on an internal 10.x network; the gateway is
configured once (``--docker-host``, ``--docker-network``, ``--response-ip``,
``--response-port``) and the kernelspecs come from ``python -m
jkg.kernelspecs docker``.  Tests drive jkg's REST + WebSocket API and the real
``jupyter server --gateway-url``, and check on the engine itself that no
container is left behind.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from engines import free_port
from jkg.auth.tenants import hash_token
from jkg.kernelspecs import container_spec, ssh_spec
from jkg.provisioners import docker_launch, engines
from support import GatewayProcess, interrupted, stdout_of

ALICE = "alice-engine-token-1f2e3d4c5b6a"
FACTS = """
import json, os, socket, sys
_ns = os.stat('/proc/self/ns/net')
print(json.dumps({'hostname': socket.gethostname(), 'netns': [_ns.st_dev, _ns.st_ino], 'prefix': sys.prefix,
                  'version': sys.version.split()[0], 'uid': os.getuid(), 'env': dict(os.environ)}))
"""


# -- pure parts (no engine) ------------------------------------------------------------
def _args(**overrides):
    return docker_launch.parse_args(["--kernel-id", "k1", "--response-address", "10.0.0.1:8877",
                                     "--public-key", "PK", *sum((["--" + k.replace("_", "-"), v]
                                                                  for k, v in overrides.items()), [])])


def test_launcher_keeps_engine_settings_out_of_the_container():
    env = {"PATH": "/x", "DOCKER_HOST": "unix:///s", "GP_DOCKER_NETWORK": "n", "JKG_KERNEL_MEMORY": "1",
           "KERNEL_USERNAME": "alice", "KERNEL_GATEWAY": "1", "JPY_PARENT_PID": "1"}
    kept = docker_launch.kernel_environment(env, _args())
    assert kept["KERNEL_USERNAME"] == "alice" and kept["RESPONSE_ADDRESS"] == "10.0.0.1:8877"
    assert kept["KERNEL_ID"] == "k1" and kept["PUBLIC_KEY"] == "PK"
    assert not {"PATH", "DOCKER_HOST", "GP_DOCKER_NETWORK", "JKG_KERNEL_MEMORY", "JPY_PARENT_PID"} & set(kept)


@pytest.mark.parametrize("uid,gid", [("0", "100"), ("1000", "0"), ("00", "100"), ("-1", "100"), ("1000 ", "100"),
                                     ("root", "100")])
def test_launcher_refuses_root_and_odd_ids(uid, gid):
    with pytest.raises(docker_launch.LaunchError):
        docker_launch.user_spec({"KERNEL_UID": uid, "KERNEL_GID": gid})


def test_launcher_limits_and_names():
    assert docker_launch.limits({"JKG_KERNEL_MEMORY": str(256 << 20), "JKG_KERNEL_PROCESSES": "64",
                                 "JKG_KERNEL_CPU_TIME": "30", "JKG_KERNEL_OPEN_FILES": "512"}) == {
        "memory": 256 << 20, "processes": 64, "cpu_time": 30, "open_files": 512}
    for bad in ("x", "-5", "0"):
        with pytest.raises(docker_launch.LaunchError):
            docker_launch.limits({"JKG_KERNEL_MEMORY": bad})
    assert docker_launch.container_name("../evil user", "k1") == "evil-user-k1"
    assert docker_launch.container_name("", "k1") == "kernel-k1"


def test_launcher_refuses_a_network_the_gateway_does_not_use():
    with pytest.raises(docker_launch.LaunchError, match="network"):
        docker_launch.launch(_args(network="other"), {"KERNEL_IMAGE": "i", "GP_DOCKER_NETWORK": "mine"},
                             client=object())


class _ExitedContainer:
    """A container whose output has ended (it exited); the engine removes it only when ``wait`` returns."""

    name = "alice-k1"

    def __init__(self, events: list):
        self.events = events

    def logs(self, stream, follow):
        yield b"boom: no kernel here\n"

    def wait(self, timeout, condition):
        self.events.append(("removed", condition))


def test_an_early_exit_is_reported_before_the_engine_removes_the_container(tmp_path, monkeypatch):
    """The provisioner fails the start once it sees the container ``exited`` or ``removing``; the report
    must be in the errors file by then (CI once got the provisioner's bare "status: 'removing'")."""
    events = []
    with pytest.raises(docker_launch.LaunchError) as raised:
        docker_launch.watch_for_early_exit(_ExitedContainer(events), 5, events.append)
    assert events == ["container alice-k1 exited at start: boom: no kernel here", ("removed", "removed")]
    assert raised.value.reported and str(raised.value) == events[0]

    # main() reports what was not reported yet, and only that: the gateway may have read the file already
    errors = tmp_path / "errors.txt"
    monkeypatch.setenv("JKG_KERNEL_LAUNCH_ERRORS", str(errors))
    argv = ["--kernel-id", "k1", "--response-address", "a:1", "--public-key", "k"]
    for error, written in ((raised.value, False), (docker_launch.LaunchError("no image"), True)):
        monkeypatch.setattr(docker_launch, "launch", lambda args, env, error=error: (_ for _ in ()).throw(error))
        assert docker_launch.main(argv) == 1
        assert errors.exists() is written
    assert engines.read_launch_errors(str(errors)) == "no image"


def test_engine_settings_reach_only_container_launchers():
    class Config:
        docker_host, docker_network, response_ip, response_port = "unix:///d.sock", "net", "10.1.2.1", 9999
        remote_hosts, remote_user, kernel_launch_timeout = ("h1", "h2"), "", 42.5

    assert engines.provisioner_environ(Config, {}) == {
        "DOCKER_HOST": "unix:///d.sock", "GP_DOCKER_NETWORK": "net", "GP_RESPONSE_IP": "10.1.2.1",
        "GP_RESPONSE_PORT": "9999", "GP_REMOTE_HOSTS": "h1,h2", "GP_LAUNCH_TIMEOUT": "43",
        "GP_SOCKET_TIMEOUT": "0"}
    environ = {"DOCKER_HOST": "unix:///d.sock", "GP_DOCKER_NETWORK": "net", "HOME": "/root"}
    docker = container_spec("img:1")
    assert engines.launcher_env(docker, environ, "/run/e") == {
        "DOCKER_HOST": "unix:///d.sock", "GP_DOCKER_NETWORK": "net", "JKG_KERNEL_LAUNCH_ERRORS": "/run/e"}
    assert engines.launcher_env({"argv": ["python"]}, environ) == {}
    assert engines.launcher_env(ssh_spec(), environ) == {}
    assert engines.launch_stderr(ssh_spec(), -1) == {} and engines.launch_stderr(docker, -1) == {"stderr": -1}
    engines.check_remote_host(ssh_spec(), {"KERNEL_REMOTE_HOST": "h2"}, {"GP_REMOTE_HOSTS": "h1,h2"})
    engines.check_remote_host(ssh_spec(hosts=("h3",)), {"KERNEL_REMOTE_HOST": "h3"}, {"GP_REMOTE_HOSTS": "h1"})
    engines.check_remote_host(docker, {"KERNEL_REMOTE_HOST": "anything"}, {})  # not an SSH kernelspec
    for environ in ({"GP_REMOTE_HOSTS": "h1,h2"}, {}):
        with pytest.raises(ValueError, match="not one of"):
            engines.check_remote_host(ssh_spec(), {"KERNEL_REMOTE_HOST": "evil.example"}, environ)


def test_kernelspec_helper_writes_an_installable_spec(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jkg.kernelspecs", "docker", "--image", "reg:5000/k:1",
                             "--network", "kernels", "--prefix", str(tmp_path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    spec = json.loads((tmp_path / "share/jupyter/kernels/docker-python/kernel.json").read_text())
    assert spec["metadata"]["kernel_provisioner"] == {"provisioner_name": "docker-provisioner",
                                                      "config": {"image_name": "reg:5000/k:1"}}
    assert "{response_address}" in spec["argv"] and spec["argv"][-2:] == ["--network", "kernels"]
    bad = subprocess.run([sys.executable, "-m", "jkg.kernelspecs", "docker", "--image", "x;reboot",
                          "--prefix", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not an image reference" in bad.stderr


# -- the gateway ----------------------------------------------------------------------------
def _write_spec(share: Path, name: str, spec: dict) -> None:
    folder = share / "kernels" / name
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(json.dumps(spec))


@pytest.fixture(scope="module")
def setup(docker_engine, tmp_path_factory):
    """Kernelspecs (one per image), a tenants file pinning alice to containers, an 'exits at start' image."""
    root = tmp_path_factory.mktemp("engines-docker")
    share = root / "share"
    _write_spec(share, "docker-python", container_spec(docker_engine.image, network=docker_engine.network))
    _write_spec(share, "docker-missing", container_spec("jkg-kernel:absent"))
    _write_spec(share, "docker-exits", container_spec("jkg-kernel:exits"))
    slow = container_spec(docker_engine.image, network=docker_engine.network)
    # a slow engine: the launcher asks for the container only after SLOW_ENGINE seconds
    slow["argv"][1:3] = ["-c", "import runpy, sys, time; time.sleep(%s); sys.argv[0] = 'launch'; "
                         "runpy.run_module('jkg.provisioners.docker_launch', run_name='__main__')" % SLOW_ENGINE]
    _write_spec(share, "docker-slow", slow)
    k8s = container_spec(docker_engine.image)  # what jupyter-k8s-spec writes, in the parts that matter here
    k8s["metadata"]["kernel_provisioner"]["provisioner_name"] = "kubernetes-provisioner"
    _write_spec(share, "k8s-python", k8s)
    subprocess.run([shutil_docker(), "build", "-q", "-t", "jkg-kernel:exits", "-"], env=docker_engine.env,
                   input=f'FROM {docker_engine.image}\nCMD ["/bin/sh", "-c", "echo boom: no kernel here; exit 3"]\n',
                   capture_output=True, text=True, timeout=120, check=True)
    tenants = root / "tenants.toml"
    tenants.write_text(f"""
[tenants.alice]
tokens = ["{hash_token(ALICE)}"]
kernelspecs = ["docker-python", "docker-missing", "docker-exits", "docker-slow", "k8s-python"]

[sandbox.tenants.alice]
memory = "320M"
processes = 96
open_files = 640
""")
    plain = root / "tenants-plain.toml"  # alice without limits of her own: she may take pooled kernels
    plain.write_text(tenants.read_text().split("[sandbox.")[0])
    return {"share": share, "tenants": tenants, "plain_tenants": plain, "root": root}


def shutil_docker() -> str:
    import shutil

    return shutil.which("docker", path="/usr/local/bin:/usr/bin:/bin") or "docker"


def engine_args(engine, response_ip: str | None = None, docker_host: str | None = None) -> list[str]:
    return ["--docker-host", docker_host or engine.host, "--docker-network", engine.network,
            "--response-ip", response_ip or engine.gateway_ip, "--response-port", str(free_port(engine.gateway_ip))]


def start_gateway(setup, engine, *args, env=None, tenants="tenants", **kwargs) -> GatewayProcess:
    gateway = GatewayProcess("--tenants", str(setup[tenants]), *engine_args(engine, **kwargs), *args,
                             env={"JUPYTER_PATH": str(setup["share"]), **(env or {})})
    gateway.start()
    gateway.token = ALICE  # a tenant's token: KERNEL_USERNAME is the tenant's name
    return gateway


@pytest.fixture(scope="module")
def gateway(setup, docker_engine):
    process = start_gateway(setup, docker_engine)
    try:
        yield process
    finally:
        process.stop()
    assert not docker_engine.containers(), "containers survived the gateway"


def kernel_containers(engine, kernel_id: str) -> list[dict]:
    client = engine.client()
    try:
        return [c.attrs for c in client.containers.list(all=True, filters={"label": f"kernel_id={kernel_id}"})]
    finally:
        client.close()


def facts(client) -> dict:
    return json.loads(stdout_of(client.run(FACTS)))


@pytest.fixture
def kernel(gateway):
    model = gateway.start_kernel()  # alice's default: her first allowed kernelspec, a container
    yield model
    gateway.request("DELETE", f"/api/kernels/{model['id']}")


# -- lifecycle through REST + WebSocket -------------------------------------------------------
def test_tenant_is_pinned_to_the_container_kernelspec(gateway, kernel):
    assert kernel["name"] == "docker-python"
    assert gateway.request("POST", "/api/kernels", json={"name": "python3"}).status_code == 404  # not hers
    names = set(gateway.request("GET", "/api/kernelspecs").json()["kernelspecs"])
    assert names == {"docker-python", "docker-missing", "docker-exits", "docker-slow", "k8s-python"}


def test_kernel_runs_in_a_container(gateway, kernel, docker_engine):
    with gateway.connect(kernel["id"]) as client:
        seen = facts(client)
        assert stdout_of(client.run("print(6 * 7)")) == "42\n"
    mine = os.stat("/proc/self/ns/net")
    assert seen["hostname"] != socket.gethostname()
    assert tuple(seen["netns"]) != (mine.st_dev, mine.st_ino)
    assert seen["prefix"] == "/opt/kernel" != sys.prefix  # the image's Python, not the gateway's
    assert seen["version"] != sys.version.split()[0] or seen["prefix"] != sys.prefix
    assert seen["uid"] == 1000
    assert seen["env"]["KERNEL_USERNAME"] == "alice" and seen["env"]["KERNEL_ID"] == kernel["id"]
    assert not [name for name in seen["env"] if name.startswith(("DOCKER", "GP_", "JKG_"))]
    [container] = kernel_containers(docker_engine, kernel["id"])
    assert container["State"]["Running"] and container["Config"]["Hostname"] == seen["hostname"]
    address = container["NetworkSettings"]["Networks"][docker_engine.network]["IPAddress"]
    assert address in {str(host) for host in docker_engine.subnet.hosts()}
    host = container["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and host["Init"] and host["SecurityOpt"] == ["no-new-privileges"]
    # alice's limits from the tenants file's [sandbox] table, enforced by the engine
    assert host["Memory"] == host["MemorySwap"] == 320 << 20 and host["PidsLimit"] == 96
    assert {(u["Name"], u["Hard"]) for u in host["Ulimits"]} == {("nofile", 640)}


def test_interrupt_and_restart(gateway, kernel, docker_engine):
    with gateway.connect(kernel["id"]) as client:
        msg_id = client.start_sleep(60)
        started = time.monotonic()
        assert gateway.request("POST", f"/api/kernels/{kernel['id']}/interrupt").status_code == 204
        messages = client.collect(msg_id, timeout=30)
        assert time.monotonic() - started < 10
        assert interrupted(messages), [m["msg_type"] for m in messages]
        before = facts(client)["hostname"]
        client.run("survivor = 1")
        response = gateway.request("POST", f"/api/kernels/{kernel['id']}/restart")
        assert response.status_code == 200 and response.json()["id"] == kernel["id"]
        client.wait_for(lambda m: m["msg_type"] == "status" and m["parent_header"] == {}, timeout=60)
        assert stdout_of(client.run("print('survivor' in globals())")) == "False\n"
        after = facts(client)["hostname"]
    assert after != before  # a new container
    [container] = kernel_containers(docker_engine, kernel["id"])
    assert container["Config"]["Hostname"] == after


def test_delete_leaves_no_container(gateway, docker_engine):
    model = gateway.start_kernel()
    assert len(kernel_containers(docker_engine, model["id"])) == 1
    started = time.monotonic()
    assert gateway.request("DELETE", f"/api/kernels/{model['id']}").status_code == 204
    assert time.monotonic() - started < 10
    assert not kernel_containers(docker_engine, model["id"])


# -- failures: a clear 500 within the launch timeout, nothing left running ----------------------
def _failed_start(gateway, name: str, limit: float) -> str:
    before = time.monotonic()
    try:
        response = gateway.request("POST", "/api/kernels", json={"name": name}, timeout=limit + 30)
    except requests.RequestException as error:
        raise AssertionError(f"{error}\n--- gateway output ---\n{gateway.output_tail()}") from None
    elapsed = time.monotonic() - before
    assert response.status_code == 500, response.text
    body = response.json()
    assert body["reason"] == "Kernel Launch Failed" and "Traceback" not in body["message"]
    assert elapsed < limit, (elapsed, body)
    return body["message"]


def test_missing_image(gateway, docker_engine):
    message = _failed_start(gateway, "docker-missing", 20)
    assert "jkg-kernel:absent" in message and ("No such image" in message or "not found" in message), message
    assert not docker_engine.containers()
    assert gateway.request("GET", "/api/kernels").json() == []


def test_container_that_exits_at_start(gateway, docker_engine):
    message = _failed_start(gateway, "docker-exits", 20)
    assert "exited at start" in message and "boom: no kernel here" in message, message
    assert not docker_engine.containers()


def test_kubernetes_kernelspec_without_a_cluster(gateway):
    # Kubernetes cannot run here: the same provisioner interface, and a clear 500 naming what is missing
    message = _failed_start(gateway, "k8s-python", 30)
    assert "kubernetes" in message.lower(), message


def test_engine_down(setup, docker_engine):
    gateway = start_gateway(setup, docker_engine, docker_host="unix:///nonexistent/docker.sock")
    try:
        message = _failed_start(gateway, "docker-python", 20)
        assert "/nonexistent/docker.sock" in message or "No such file" in message, message
    finally:
        gateway.stop()
    assert not docker_engine.containers()


def test_response_never_arrives(setup, docker_engine):
    # the launcher is told to send its connection info to an address nobody has: it never arrives
    silent = str(list(docker_engine.subnet.hosts())[-1])
    gateway = start_gateway(setup, docker_engine, "--kernel-launch-timeout", "8", response_ip=silent,
                            env={"GP_RESPONSE_ADDR_ANY": "true"})
    try:
        message = _failed_start(gateway, "docker-python", 8 + 10)
        assert "Waited too long" in message or "launch timeout" in message, message
        assert not docker_engine.containers()
        assert gateway.request("GET", "/api/kernels").json() == []
    finally:
        gateway.stop()


SLOW_ENGINE = 6


def test_slow_engine_stalls_nobody_and_leaves_nothing(setup, docker_engine):
    # The launch times out (2 s) long before the launcher even asks the engine for its container
    # (6 s): the 500 comes within the launch timeout, the gateway keeps answering meanwhile, and
    # the container the engine creates after the failed start is removed.
    gateway = start_gateway(setup, docker_engine, "--kernel-launch-timeout", "2")
    try:
        outcome = {}

        def start():
            before = time.monotonic()
            outcome["response"] = gateway.request("POST", "/api/kernels", json={"name": "docker-slow"}, timeout=60)
            outcome["elapsed"] = time.monotonic() - before

        starter = threading.Thread(target=start)
        starter.start()
        time.sleep(0.5)
        slowest = 0.0
        while starter.is_alive() and "elapsed" not in outcome:
            before = time.monotonic()
            assert gateway.request("GET", "/api", timeout=10).status_code == 200
            slowest = max(slowest, time.monotonic() - before)
            time.sleep(0.2)
        starter.join(60)
        response = outcome["response"]
        assert response.status_code == 500, response.text
        assert "Waited too long" in response.json()["message"], response.text
        assert outcome["elapsed"] < 2 + 3, "the answer waited for the launcher"
        assert slowest < 1.0, f"a request waited {slowest:.1f} s while a container kernel was starting"
        assert gateway.request("GET", "/api/kernels").json() == []
        deadline = time.monotonic() + SLOW_ENGINE + 20  # the launcher asks the engine after all; then the sweep
        while b"left by kernel" not in gateway.output:
            assert time.monotonic() < deadline, gateway.output_tail()
            time.sleep(0.3)
        assert not docker_engine.containers(), gateway.output_tail()
        # stopped right after a failed start: the gateway waits for the sweep before it exits
        assert gateway.request("POST", "/api/kernels", json={"name": "docker-slow"}).status_code == 500
    finally:
        gateway.stop(signal.SIGTERM)
    assert not docker_engine.containers(), gateway.output_tail()


# -- the gateway stopping -------------------------------------------------------------------------
def test_sigterm_removes_containers(setup, docker_engine):
    gateway = start_gateway(setup, docker_engine)
    try:
        model = gateway.start_kernel()
        assert kernel_containers(docker_engine, model["id"])
    finally:
        code = gateway.stop(signal.SIGTERM)
    assert code in (0, -signal.SIGTERM), gateway.output.decode(errors="replace")[-2000:]
    assert not docker_engine.containers()


def test_kept_container_kernel_is_reattached(setup, docker_engine, tmp_path):
    state = {"--state-db": str(tmp_path / "state.db")}
    first = start_gateway(setup, docker_engine, "--keep-kernels-on-exit", *sum(state.items(), ()))
    second = None
    try:
        model = first.start_kernel()
        with first.connect(model["id"]) as client:
            client.run("kept = 'yes'")
        first.stop(signal.SIGTERM)
        assert kernel_containers(docker_engine, model["id"]), "the container went with the gateway"
        second = start_gateway(setup, docker_engine, *sum(state.items(), ()))
        deadline = time.monotonic() + 30
        while second.request("GET", f"/api/kernels/{model['id']}").status_code != 200:
            assert time.monotonic() < deadline, second.output.decode(errors="replace")[-3000:]
            time.sleep(0.3)
        with second.connect(model["id"]) as client:
            assert stdout_of(client.run("print(kept)")) == "yes\n"
        assert second.request("DELETE", f"/api/kernels/{model['id']}").status_code == 204
        assert not kernel_containers(docker_engine, model["id"])
    finally:
        first.stop()
        if second is not None:
            second.stop()
    assert not docker_engine.containers()


# -- the real jupyter_server as the gateway's client ------------------------------------------------
def test_lifecycle_through_jupyter_server(gateway, docker_engine, tmp_path):
    pytest.importorskip("jupyter_server")
    from test_jupyter_server_client import JupyterServerProcess

    server = JupyterServerProcess(tmp_path, gateway.url, ALICE, {}).start()
    try:
        assert "docker-python" in server.request("GET", "/api/kernelspecs").json()["kernelspecs"]
        response = server.request("POST", "/api/kernels", json={"name": "docker-python"})
        assert response.status_code == 201, response.text
        kernel_id = response.json()["id"]
        assert kernel_containers(docker_engine, kernel_id)
        client = server.connect(kernel_id)
        try:
            seen = facts(client)
            assert seen["prefix"] == "/opt/kernel" and seen["env"]["KERNEL_USERNAME"] == "alice"
            msg_id = client.start_sleep(60)
            assert server.request("POST", f"/api/kernels/{kernel_id}/interrupt").status_code == 204
            assert interrupted(client.collect(msg_id, timeout=30))
            assert server.request("POST", f"/api/kernels/{kernel_id}/restart").status_code == 200
            assert facts(client)["hostname"] != seen["hostname"]
        finally:
            client.close()
        assert server.request("DELETE", f"/api/kernels/{kernel_id}").status_code == 204
        assert not kernel_containers(docker_engine, kernel_id)
        assert gateway.request("GET", "/api/kernels").json() == []
    finally:
        server.stop()


# -- culling and the warm pool ------------------------------------------------------------------------
def test_pool_and_culling_with_containers(setup, docker_engine):
    # pooled kernels start before any tenant asks: their KERNEL_USERNAME comes from the gateway's own env
    # and the limits a launcher applies, here set for the whole gateway
    limits = {"JKG_KERNEL_MEMORY": str(300 << 20), "JKG_KERNEL_PROCESSES": "128", "JKG_KERNEL_OPEN_FILES": "777"}
    gateway = start_gateway(setup, docker_engine, "--pool", "docker-python=1", "--cull-idle-timeout", "4",
                            "--cull-interval", "1", "--env-process-whitelist", ",".join(["KERNEL_USERNAME", *limits]),
                            env={"KERNEL_USERNAME": "pool", **limits}, tenants="plain_tenants")
    try:
        deadline = time.monotonic() + 60
        while b"(docker-python) ready: 1/1" not in gateway.output:
            assert time.monotonic() < deadline, gateway.output.decode(errors="replace")[-3000:]
            time.sleep(0.3)
        [pooled] = docker_engine.containers()
        started = time.monotonic()
        model = gateway.start_kernel()
        taken_in = time.monotonic() - started
        [container] = kernel_containers(docker_engine, model["id"])
        assert container["Name"].lstrip("/") == pooled
        host = container["HostConfig"]
        assert host["Memory"] == host["MemorySwap"] == 300 << 20 and host["PidsLimit"] == 128
        assert {(u["Name"], u["Hard"]) for u in host["Ulimits"]} == {("nofile", 777)}
        with gateway.connect(model["id"]) as client:
            seen = facts(client)
            assert seen["env"]["KERNEL_USERNAME"] == "alice"  # the tenant's, set when taken
            assert "JKG_KERNEL_MEMORY" not in seen["env"]
            limits_seen = stdout_of(client.run("import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE))"))
            assert limits_seen == "(777, 777)\n"
        assert taken_in < 5, taken_in
        deadline = time.monotonic() + 30  # idle for 4 s: culled, and its container removed
        while gateway.request("GET", f"/api/kernels/{model['id']}").status_code == 200:
            assert time.monotonic() < deadline, "the idle kernel was not culled"
            time.sleep(0.5)
        while kernel_containers(docker_engine, model["id"]):  # culled: its shutdown is under way
            assert time.monotonic() < deadline + 15, gateway.output_tail()
            time.sleep(0.3)
        while len(docker_engine.containers()) < 1:  # the pool refilled
            assert time.monotonic() < deadline + 30
            time.sleep(0.3)
    finally:
        gateway.stop()
    assert not docker_engine.containers()


def test_tenant_limits_become_launcher_settings():
    from types import SimpleNamespace

    limits = SimpleNamespace(memory=256 << 20, processes=64, cpu_time=None, open_files=512, disk=10)
    env = engines.limits_env(limits)
    assert env == {"JKG_KERNEL_MEMORY": str(256 << 20), "JKG_KERNEL_PROCESSES": "64", "JKG_KERNEL_OPEN_FILES": "512"}
    options = docker_launch.container_limits(docker_launch.limits(env))
    assert options["mem_limit"] == options["memswap_limit"] == 256 << 20 and options["pids_limit"] == 64
    assert [(u["Name"], u["Soft"], u["Hard"]) for u in options["ulimits"]] == [("nofile", 512, 512)]
