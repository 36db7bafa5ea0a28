"""Remote kernels end to end: a real gateway, a kernel in another network namespace.

The kernelspecs here name jkg's netns provisioner (``jkg-netns-provisioner``,
:mod:`jkg.provisioners.netns`), so the kernel runs in a namespace this module
creates and is reachable only over a veth pair with a private /30: the gateway
must connect to the address the provisioner reports, not to loopback.  All of
this traffic stays on this machine.  Creating namespaces needs root; without
it (or without ``ip``) the end-to-end tests are skipped with the reason.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import random
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import traitlets

from jkg.provisioners.netns import NetnsProvisioner
from support import GatewayProcess, children_of, interrupted, pid_alive, stdout_of

TOKEN = "remote-token-8c2a41"
PROVISIONER = "jkg-netns-provisioner"
KERNEL_ARGV = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
FACTS = """
import json, os
from ipykernel import get_connection_info
_ns = os.stat('/proc/self/ns/net')
print(json.dumps({'pid': os.getpid(), 'ppid': os.getppid(), 'netns': [_ns.st_dev, _ns.st_ino],
                  'connection': get_connection_info(unpack=True)}, default=str))
"""


# -- the namespace --------------------------------------------------------------
@dataclass
class Netns:
    name: str
    host_if: str
    host_ip: str
    kernel_ip: str

    def pids(self) -> set[int]:
        """Every process inside the namespace, as ``ip netns pids`` sees them."""
        result = _ip("netns", "pids", self.name)
        return {int(pid) for pid in result.stdout.split()}

    def inode(self) -> tuple[int, int]:
        info = os.stat(f"/run/netns/{self.name}")
        return info.st_dev, info.st_ino

    def wait_empty(self, timeout: float = 15.0) -> set[int]:
        deadline = time.monotonic() + timeout
        while (left := self.pids()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return left


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """Addresses and routes of this namespace, so the test /30 collides with neither."""
    used = []
    for entry in json.loads(_ip("-j", "-4", "addr").stdout or "[]"):
        for addr in entry.get("addr_info", []):
            used.append(ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    for route in json.loads(_ip("-j", "-4", "route", "show", "table", "all").stdout or "[]"):
        dst = route.get("dst", "default")
        if dst != "default":
            try:
                used.append(ipaddress.IPv4Network(dst, strict=False))
            except ValueError:
                pass
    return used


def _free_subnet() -> ipaddress.IPv4Network:
    used = _networks_in_use()
    for _ in range(200):
        subnet = ipaddress.IPv4Network(f"10.200.{random.randrange(256)}.0/30")
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    pytest.skip("no free 10.200.x.0/30 subnet on this machine")


@pytest.fixture(scope="module")
def netns():
    """A fresh namespace joined to this one by a veth pair; always removed afterwards."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root on Linux")
    if shutil.which("ip") is None:
        pytest.skip("ip(8) from iproute2 is not installed")
    tag = secrets.token_hex(3)
    name, host_if, ns_if = f"jkgtest-{tag}", f"jkgh{tag}", f"jkgn{tag}"
    subnet = _free_subnet()
    host_ip, kernel_ip = (str(address) for address in subnet.hosts())
    created = False
    leftovers: set[int] = set()
    try:
        result = _ip("netns", "add", name)
        if result.returncode:
            pytest.skip(f"cannot create a network namespace: {result.stderr.strip()}")
        created = True
        for step in (["link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", name],
                     ["addr", "add", f"{host_ip}/30", "dev", host_if],
                     ["link", "set", host_if, "up"],
                     ["-n", name, "addr", "add", f"{kernel_ip}/30", "dev", ns_if],
                     ["-n", name, "link", "set", ns_if, "up"],
                     ["-n", name, "link", "set", "lo", "up"],
                     ["netns", "exec", name, "true"]):
            result = _ip(*step)
            if result.returncode:
                pytest.skip(f"cannot set up the namespace (ip {' '.join(step)}): {result.stderr.strip()}")
        space = Netns(name, host_if, host_ip, kernel_ip)
        yield space
        leftovers = space.wait_empty(5)
    finally:
        if created:
            for pid in Netns(name, host_if, host_ip, kernel_ip).pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        _ip("link", "del", host_if)  # takes its peer with it
        if created:
            _ip("netns", "del", name)
    assert not leftovers, f"processes were left in namespace {name}: {leftovers}"


# -- kernelspecs and the gateway -------------------------------------------------
def _spec(config: dict, provisioner: str = PROVISIONER) -> dict:
    return {"argv": KERNEL_ARGV, "display_name": "Python (netns)", "language": "python",
            "metadata": {"kernel_provisioner": {"provisioner_name": provisioner, "config": config}}}


@pytest.fixture(scope="module")
def jupyter_dirs(netns, tmp_path_factory):
    """Kernelspecs selecting the provisioner (some with hostile config), and a runtime dir."""
    registered = [ep.name for ep in entry_points(group="jupyter_client.kernel_provisioners")]
    assert PROVISIONER in registered, (
        f"entry point {PROVISIONER} is not registered (found {registered}): add it to setup.py's "
        "entry_points['jupyter_client.kernel_provisioners'] and pip install .")
    root = tmp_path_factory.mktemp("remote-kernels")
    fixed_ports = dict(zip(("shell", "iopub", "stdin", "control", "hb"), random.sample(range(40000, 45000), 5)))
    specs = {
        "netns-python": {"namespace": netns.name, "kernel_ip": netns.kernel_ip},
        "netns-fixed": {"namespace": netns.name, "kernel_ip": netns.kernel_ip, "ports": fixed_ports},
        "netns-bad-name": {"namespace": "../../proc/1/ns/net", "kernel_ip": netns.kernel_ip},
        "netns-bad-option": {"namespace": "-all", "kernel_ip": netns.kernel_ip},
        "netns-bad-ip": {"namespace": netns.name, "kernel_ip": "127.0.0.1"},
        "netns-bad-key": {"namespace": netns.name, "kernel_ip": netns.kernel_ip, "namepsace": "x"},
        "netns-missing": {"namespace": netns.name + "-absent", "kernel_ip": netns.kernel_ip},
    }
    for name, config in specs.items():
        folder = root / "data" / "kernels" / name
        folder.mkdir(parents=True)
        (folder / "kernel.json").write_text(json.dumps(_spec(config)))
    folder = root / "data" / "kernels" / "netns-unregistered"
    folder.mkdir()
    (folder / "kernel.json").write_text(json.dumps(_spec(specs["netns-python"], "jkg-no-such-provisioner")))
    (root / "runtime").mkdir()
    return {"data": root / "data", "runtime": root / "runtime", "fixed_ports": fixed_ports}


def _gateway_env(dirs) -> dict:
    """Our kernelspecs, and a runtime dir (state database, connection files) of this gateway's own."""
    runtime = dirs["runtime"] / secrets.token_hex(4)
    runtime.mkdir()
    return {"JUPYTER_PATH": str(dirs["data"]), "JUPYTER_RUNTIME_DIR": str(runtime)}


def _environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


@pytest.fixture(scope="module")
def gateway(netns, jupyter_dirs):
    """A gateway of its own, whose kernelspecs select the netns provisioner."""
    process = GatewayProcess(token=TOKEN, env=_gateway_env(jupyter_dirs)).start()
    try:
        yield process
    finally:
        kernels = children_of(process.process.pid)
        process.stop()
    assert not [pid for pid in kernels if pid_alive(pid)], "kernel processes survived the gateway"


@pytest.fixture
def kernel(gateway):
    model = gateway.start_kernel(name="netns-python")
    yield model
    gateway.request("DELETE", f"/api/kernels/{model['id']}")


def _facts(client) -> dict:
    return json.loads(stdout_of(client.run(FACTS)))


def _tcp_peers(pid: int) -> set[tuple[str, int]]:
    """Remote (ip, port) of the ESTABLISHED TCP sockets that process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    peers = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
            address, port = fields[2].split(":")
            peers.add((socket.inet_ntoa(struct.pack("<I", int(address, 16))), int(port, 16)))
    return peers


# -- validation (no namespace needed) -----------------------------------------------
@pytest.mark.parametrize("config", [
    {"namespace": "../etc"}, {"namespace": "-n"}, {"namespace": "a b"}, {"namespace": "ns\n"},
    {"namespace": "x" * 64}, {"namespace": ""}, {"namespace": "ns;reboot"},
    {"kernel_ip": "127.0.0.1"}, {"kernel_ip": "0.0.0.0"}, {"kernel_ip": "::1"}, {"kernel_ip": "fe80::1"},
    {"kernel_ip": "10.0.0.1 "}, {"kernel_ip": "010.0.0.1"}, {"kernel_ip": "224.0.0.1"}, {"kernel_ip": "host"},
    {"ports": {"shell": 1}}, {"ports": [1, 2, 3, 4, 5]},
    {"ports": {"shell": 1, "iopub": 1, "stdin": 2, "control": 3, "hb": 4}},
    {"ports": {"shell": 0, "iopub": 1, "stdin": 2, "control": 3, "hb": 4}},
    {"ports": {"shell": True, "iopub": 1, "stdin": 2, "control": 3, "hb": 4}},
])
def test_hostile_config_values_are_refused(config):
    with pytest.raises(traitlets.TraitError):
        NetnsProvisioner(**config)


def test_sane_config_values_are_accepted():
    ports = {"shell": 5001, "iopub": 5002, "stdin": 5003, "control": 5004, "hb": 5005}
    provisioner = NetnsProvisioner(namespace="kernels-1.a_b", kernel_ip="10.200.7.2", ports=ports)
    assert (provisioner.namespace, provisioner.kernel_ip, provisioner.ports) == ("kernels-1.a_b", "10.200.7.2", ports)


# -- end to end ------------------------------------------------------------------
def test_kernelspec_is_offered(gateway):
    specs = gateway.request("GET", "/api/kernelspecs").json()["kernelspecs"]
    assert specs["netns-python"]["spec"]["metadata"]["kernel_provisioner"]["provisioner_name"] == PROVISIONER


def test_kernelspec_of_an_unregistered_provisioner_is_hidden(gateway, netns):
    assert "netns-unregistered" not in gateway.request("GET", "/api/kernelspecs").json()["kernelspecs"]
    assert gateway.request("POST", "/api/kernels", json={"name": "netns-unregistered"}).status_code == 404
    assert not netns.pids()


def test_execute(gateway, kernel):
    with gateway.connect(kernel["id"]) as client:
        assert stdout_of(client.run("print('hello from', 6 * 7)")) == "hello from 42\n"


def test_kernel_runs_in_the_namespace(gateway, kernel, netns, jupyter_dirs):
    with gateway.connect(kernel["id"]) as client:
        facts = _facts(client)
    mine = os.stat("/proc/self/ns/net")
    assert tuple(facts["netns"]) == netns.inode() != (mine.st_dev, mine.st_ino)
    assert facts["connection"]["ip"] == netns.kernel_ip
    # `ip netns exec` execs the kernel: the process the gateway started (and signals) is the kernel itself
    assert facts["pid"] in netns.pids()
    assert facts["ppid"] == gateway.process.pid
    assert _environ(facts["pid"])["JPY_PARENT_PID"] == str(gateway.process.pid)  # dies with the gateway
    argv = Path(f"/proc/{facts['pid']}/cmdline").read_bytes().decode().split("\0")
    assert "ipykernel_launcher" in argv
    connection_file = Path(argv[argv.index("-f") + 1])
    assert json.loads(connection_file.read_text())["ip"] == netns.kernel_ip


def test_traffic_crosses_the_veth_link(gateway, kernel, netns):
    with gateway.connect(kernel["id"]) as client:
        ports = {name: port for name, port in _facts(client)["connection"].items() if name.endswith("_port")}
        peers = _tcp_peers(gateway.process.pid)
        for channel in ("shell", "iopub", "stdin", "control"):
            assert (netns.kernel_ip, ports[f"{channel}_port"]) in peers, (channel, peers)
        assert not [peer for peer in peers if peer[0].startswith("127.") and peer[1] in ports.values()]
        counter = Path(f"/sys/class/net/{netns.host_if}/statistics/rx_bytes")
        before = int(counter.read_text())
        assert len(stdout_of(client.run("print('x' * 1_000_000)"))) == 1_000_001
        assert int(counter.read_text()) - before >= 1_000_000


def test_interrupt_a_running_sleep(gateway, kernel):
    with gateway.connect(kernel["id"]) as client:
        msg_id = client.start_sleep(30)
        started = time.monotonic()
        assert gateway.request("POST", f"/api/kernels/{kernel['id']}/interrupt").status_code == 204
        messages = client.collect(msg_id, timeout=20)
        assert time.monotonic() - started < 10
        assert interrupted(messages), [m["msg_type"] for m in messages]
        assert stdout_of(client.run("print('still here')")) == "still here\n"


def test_restart_keeps_id_loses_state(gateway, kernel, netns):
    with gateway.connect(kernel["id"]) as client:
        before = _facts(client)
        client.run("survivor = 1")
        response = gateway.request("POST", f"/api/kernels/{kernel['id']}/restart")
        assert response.status_code == 200 and response.json()["id"] == kernel["id"]
        client.wait_for(lambda m: m["msg_type"] == "status" and m["parent_header"] == {})
        assert stdout_of(client.run("print('survivor' in globals())")) == "False\n"
        after = _facts(client)
    assert after["pid"] != before["pid"] and not pid_alive(before["pid"])
    assert tuple(after["netns"]) == netns.inode() and after["connection"]["ip"] == netns.kernel_ip
    assert netns.pids() == {after["pid"]}


def test_crashed_kernel_is_restarted_in_the_namespace(gateway, kernel, netns):
    with gateway.connect(kernel["id"]) as client:
        pid = _facts(client)["pid"]
        os.kill(pid, signal.SIGKILL)
        client.wait_for(lambda m: m["msg_type"] == "status" and m["content"]["execution_state"] == "restarting",
                        timeout=20)
        deadline = time.monotonic() + 60
        while gateway.request("GET", f"/api/kernels/{kernel['id']}").json()["execution_state"] != "idle":
            assert time.monotonic() < deadline, "kernel was not restarted"
            time.sleep(0.2)
        after = _facts(client)
    assert after["pid"] != pid and tuple(after["netns"]) == netns.inode()


def test_fixed_ports_are_used_and_not_shared(gateway, netns, jupyter_dirs):
    model = gateway.start_kernel(name="netns-fixed")
    try:
        with gateway.connect(model["id"]) as client:
            connection = _facts(client)["connection"]
        assert {name: connection[f"{name}_port"] for name in jupyter_dirs["fixed_ports"]} == jupyter_dirs["fixed_ports"]
        inside = netns.pids()
        second = gateway.request("POST", "/api/kernels", json={"name": "netns-fixed"})
        assert second.status_code == 500 and "used by another kernel" in second.json()["message"]
        assert netns.pids() == inside
    finally:
        gateway.request("DELETE", f"/api/kernels/{model['id']}")
    assert not netns.wait_empty()


@pytest.mark.parametrize("name, complaint", [
    ("netns-bad-name", "namespace must be"), ("netns-bad-option", "namespace must be"),
    ("netns-bad-ip", "kernel_ip must be"), ("netns-bad-key", "unknown netns provisioner config"),
    ("netns-missing", "does not exist"),
])
def test_bad_kernelspec_config_starts_nothing(gateway, netns, name, complaint):
    children = children_of(gateway.process.pid)
    response = gateway.request("POST", "/api/kernels", json={"name": name})
    assert response.status_code == 500 and complaint in response.json()["message"], response.text
    assert children_of(gateway.process.pid) == children
    assert not netns.pids()


def test_shutdown_leaves_nothing_in_the_namespace(gateway, netns):
    model = gateway.start_kernel(name="netns-python")
    with gateway.connect(model["id"]) as client:
        pid = _facts(client)["pid"]
    assert netns.pids() == {pid}
    assert gateway.request("DELETE", f"/api/kernels/{model['id']}").status_code == 204
    assert not netns.wait_empty()
    assert not pid_alive(pid)
    assert gateway.request("GET", f"/api/kernels/{model['id']}").status_code == 404


def test_gateway_stops_cleanly_with_a_remote_kernel_running(netns, jupyter_dirs):
    process = GatewayProcess(token=TOKEN, env=_gateway_env(jupyter_dirs)).start()
    try:
        model = process.start_kernel(name="netns-python")
        client = process.connect(model["id"])
        pid = _facts(client)["pid"]
        client.execute("import time; time.sleep(60)")  # a busy kernel must go too
        client.wait_for(lambda m: m["msg_type"] == "execute_input")
        assert netns.pids() == {pid}
    finally:
        code = process.stop(signal.SIGTERM)
    # twistd re-raises the signal that stopped it once shutdown is complete
    assert code in (0, -signal.SIGTERM) and b"Server Shut Down." in process.output, \
        process.output.decode(errors="replace")
    assert not netns.wait_empty(5)
    assert not pid_alive(pid)
    assert b"Unhandled" not in process.output


def test_kept_kernel_is_reattached_by_the_next_gateway(netns, jupyter_dirs):
    env = _gateway_env(jupyter_dirs)  # both gateways share one runtime dir, hence one state database
    first = GatewayProcess("--keep-kernels-on-exit", token=TOKEN, env=env).start()
    second = None
    try:
        model = first.start_kernel(name="netns-python")
        with first.connect(model["id"]) as client:
            client.run("kept = 'yes'")
            pid = _facts(client)["pid"]
        assert "JPY_PARENT_PID" not in _environ(pid)  # an independent kernel is not tied to the gateway
        first.stop(signal.SIGTERM)
        assert pid_alive(pid) and netns.pids() == {pid}
        second = GatewayProcess(token=TOKEN, env=env).start()
        deadline = time.monotonic() + 30
        while second.request("GET", f"/api/kernels/{model['id']}").status_code != 200:
            assert time.monotonic() < deadline, "the kernel was not reattached"
            time.sleep(0.2)
        with second.connect(model["id"]) as client:
            assert stdout_of(client.run("print(kept)")) == "yes\n"
        assert second.request("DELETE", f"/api/kernels/{model['id']}").status_code == 204
        assert not netns.wait_empty()
    finally:
        first.stop()
        if second is not None:
            second.stop()


# -- the provisioner directly: persistence of a running kernel ---------------------
def _run_async(coroutine_fn, timeout: float = 120.0):
    """Run a coroutine on a private loop (this process's main loop belongs to the test reactor)."""
    outcome = {}

    def target():
        try:
            outcome["value"] = asyncio.run(asyncio.wait_for(coroutine_fn(), timeout))
        except BaseException as error:  # noqa: BLE001 - re-raised in the test thread
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout + 30)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def test_adopted_kernel_is_polled_and_signalled_only_while_it_is_ours(netns, jupyter_dirs):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    async def scenario():
        specs = KernelSpecManager(kernel_dirs=[str(jupyter_dirs["data"] / "kernels")])
        manager = AsyncKernelManager(kernel_name="netns-python", kernel_spec_manager=specs)
        manager.connection_file = str(jupyter_dirs["runtime"] / "adopted.json")
        impostor = NetnsProvisioner(kernel_spec=manager.kernel_spec)
        adopted = NetnsProvisioner(kernel_spec=manager.kernel_spec)
        await manager.start_kernel(independent=True)
        try:
            assert "JPY_PARENT_PID" not in _environ(manager.provisioner.process.pid)  # may outlive us
            info = await manager.provisioner.get_provisioner_info()
            info["connection_info"] = {**info["connection_info"], "key": info["connection_info"]["key"].decode()}
            info = json.loads(json.dumps(info))  # what an application would persist
            assert info["namespace"] == netns.name and info["pid"] == manager.provisioner.process.pid

            await impostor.load_provisioner_info({**info, "start_time": info["start_time"] + 1})
            assert await impostor.poll() == 0  # same pid, different process: not ours
            await impostor.kill()
            assert await manager.provisioner.poll() is None

            await adopted.load_provisioner_info(info)
            assert adopted.has_process and await adopted.poll() is None
            await adopted.kill()
            assert await asyncio.wait_for(adopted.wait(), 10) == 0
            assert not adopted.has_process
            assert await asyncio.wait_for(manager.provisioner.wait(), 10) == -signal.SIGKILL
        finally:
            await manager.shutdown_kernel(now=True)
            await impostor.cleanup()
            await adopted.cleanup()
        return info["pid"]

    pid = _run_async(scenario)
    assert not pid_alive(pid) and not netns.pids()
    assert not NetnsProvisioner._taken.get(netns.name)
