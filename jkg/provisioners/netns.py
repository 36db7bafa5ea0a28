"""A kernel provisioner that runs the kernel inside an existing Linux network namespace.

Why: a kernel in its own network namespace has its own network stack and can
be reached only over the link the operator set up (typically a veth pair).
That makes it the smallest honest "remote" kernel: the kernel binds an
address that is not the gateway's, and the gateway has to connect its ZeroMQ
sockets to whatever ip/ports the provisioner reports -- exactly what container
and cluster provisioners rely on, without needing a cluster.

The namespace (``ip netns add``, the veth pair, addresses, routes, firewall)
belongs to the operator; this provisioner only enters it.  Entering needs
CAP_SYS_ADMIN (``ip netns exec`` calls setns(2) and remounts /sys), so the
gateway must run as root or with that capability.  Kernelspec::

    "metadata": {"kernel_provisioner": {
        "provisioner_name": "jkg-netns-provisioner",
        "config": {"namespace": "kernels", "kernel_ip": "10.200.0.2",
                   "ports": {"shell": 50001, "iopub": 50002, "stdin": 50003,
                             "control": 50004, "hb": 50005}}}}

``ports`` is optional.  Every config value is checked before use: kernelspecs
are files on disk, and a namespace name or address ends up in an argv.
"""
from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import re
import shutil
import signal
import subprocess
from typing import Any, ClassVar

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from traitlets import Dict, TraitError, Unicode, validate

from ..procfs import process_identity

NETNS_DIR = "/run/netns"
CHANNELS = ("shell", "iopub", "stdin", "control", "hb")
CONFIG_KEYS = frozenset({"namespace", "kernel_ip", "ports"})
# Automatic ports come from below Linux's default ephemeral range (32768-60999),
# so an outgoing connection made inside the namespace cannot be holding one.
AUTO_PORTS = range(20000, 32768)
# Only the system directories: the gateway's PATH must not choose which binary
# gets to enter namespaces as root.
IP_TOOL_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"
# A name ip(8) keeps under /run/netns: no "/", never "." or "..", never an option.
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")


def check_namespace(value: Any) -> str:
    if not isinstance(value, str) or not _NAMESPACE.match(value):
        raise ValueError(f"namespace must be 1-63 letters, digits, '_', '.' or '-', starting with a letter "
                         f"or digit; got {_show(value)}")
    return value


def check_kernel_ip(value: Any) -> str:
    # IPv4 only: jkg and jupyter_client build "tcp://{ip}:{port}" without IPv6 brackets.
    try:
        address = ipaddress.IPv4Address(value) if isinstance(value, str) else None
    except ValueError:
        address = None
    # Loopback or "any" would make the gateway connect to its own namespace, not the kernel's.
    if address is None or address.is_unspecified or address.is_loopback or address.is_multicast \
            or address.is_reserved:
        raise ValueError(f"kernel_ip must be a unicast IPv4 address inside the namespace; got {_show(value)}")
    return str(address)


def check_ports(value: Any) -> dict[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != set(CHANNELS):
        raise ValueError(f"ports must name exactly {', '.join(CHANNELS)}; got {_show(value)}")
    ports = {channel: value[channel] for channel in CHANNELS}
    if any(type(port) is not int or not 0 < port < 65536 for port in ports.values()) \
            or len(set(ports.values())) != len(CHANNELS):
        raise ValueError(f"ports must be five distinct integers in 1-65535; got {_show(value)}")
    return ports


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class NetnsProvisioner(KernelProvisionerBase):
    """Start the kernel with ``ip netns exec <namespace> <argv>`` and report the namespace address."""

    namespace = Unicode("", config=True, help="Network namespace (a name under /run/netns) to run the kernel in.")
    kernel_ip = Unicode("", config=True, help="IPv4 address inside the namespace that the kernel binds "
                                              "and the gateway connects to.")
    ports = Dict(default_value=None, allow_none=True, config=True,
                 help="Fixed ports {shell, iopub, stdin, control, hb}; random free ones when absent.")

    # Ports held by this process's kernels, per namespace: a random choice must
    # not collide with a sibling kernel, and two kernels cannot share fixed ports.
    _taken: ClassVar[dict[str, set[int]]] = {}

    process: subprocess.Popen | None = None
    pid: int | None = None  # also the process group: the kernel leads a new session
    _start_time: int | None = None  # tells our kernel from a process that reused its pid
    _held: dict[str, int] | None = None

    @validate("namespace")
    def _valid_namespace(self, proposal):
        return _as_trait_error(check_namespace, proposal["value"])

    @validate("kernel_ip")
    def _valid_kernel_ip(self, proposal):
        return _as_trait_error(check_kernel_ip, proposal["value"])

    @validate("ports")
    def _valid_ports(self, proposal):
        return _as_trait_error(check_ports, proposal["value"])

    @property
    def has_process(self) -> bool:
        return self.process is not None or self.pid is not None

    # -- launching -------------------------------------------------------------
    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        km = self.parent
        if km is None:
            raise RuntimeError("the netns provisioner needs a kernel manager")
        config = ((self.kernel_spec.metadata if self.kernel_spec else {}).get("kernel_provisioner") or {}) \
            .get("config") or {}
        unknown = sorted(set(config) - CONFIG_KEYS)
        if unknown:  # a misspelt key would otherwise be silently ignored by traitlets
            raise ValueError(f"unknown netns provisioner config {_show(unknown)}")
        if not self.namespace or not self.kernel_ip:
            raise ValueError("the netns provisioner needs 'namespace' and 'kernel_ip' in its config")
        if km.transport != "tcp":
            raise ValueError("the netns provisioner supports only the tcp transport")
        policy = getattr(km, "_transport_encryption_policy", None)  # jupyter_client >= 8.9
        if policy is not None and policy() == "required":
            raise ValueError("the netns provisioner does not set up CurveZMQ encryption")
        if not os.path.exists(os.path.join(NETNS_DIR, self.namespace)):
            raise RuntimeError(f"network namespace {self.namespace} does not exist")
        if self._held is None:  # a restart keeps its ports and its connection file
            self._held = self._reserve_ports()
        # The connection file is written from the manager's fields, and the
        # manager's (not the file's) ip and ports are what jkg connects to.
        km.ip = self.kernel_ip
        for channel, port in self._held.items():
            setattr(km, f"{channel}_port", port)
        km.write_connection_file()
        self.connection_info = km.get_connection_info()
        cmd = km.format_kernel_cmd(extra_arguments=kwargs.pop("extra_arguments", []))
        return await super().pre_launch(cmd=cmd, **kwargs)

    def _reserve_ports(self) -> dict[str, int]:
        taken = self._taken.setdefault(self.namespace, set())
        if self.ports is not None:
            ports = dict(self.ports)
            clash = taken.intersection(ports.values())
            if clash:
                raise RuntimeError(f"ports {sorted(clash)} in namespace {self.namespace} are used by another kernel")
        else:
            ports = dict(zip(CHANNELS, random.sample(sorted(set(AUTO_PORTS) - taken), len(CHANNELS))))
        taken.update(ports.values())
        return ports

    def _release_ports(self) -> None:
        if self._held is not None:
            self._taken.get(self.namespace, set()).difference_update(self._held.values())
            self._held = None

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        tool = shutil.which("ip", path=IP_TOOL_PATH)
        if tool is None:
            raise RuntimeError("ip(8) from iproute2 is not installed")
        env = dict(kwargs["env"])
        if not kwargs.get("independent"):
            # ip(8) execs the kernel rather than forking it, so the kernel is
            # our child and ipykernel's parent poller ends it if the gateway
            # dies without shutting it down.  An independent kernel (one meant
            # to outlive the gateway) must not be told who its parent is.
            env["JPY_PARENT_PID"] = str(os.getpid())
        # A new session: a terminal's Ctrl-C to the gateway does not reach the
        # kernel, and an interrupt reaches the kernel's own children too.
        self.process = subprocess.Popen([tool, "netns", "exec", self.namespace, *cmd], env=env,
                                        cwd=kwargs.get("cwd"), stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.process.pid
        identity = process_identity(self.pid)  # the start time is set at fork: exec does not change it
        self._start_time = identity[0] if identity else None
        return self.connection_info

    # -- the running kernel ------------------------------------------------------
    async def poll(self) -> int | None:
        if self.process is not None:
            return self.process.poll()
        if self.pid is not None:  # adopted through load_provisioner_info: no exit status to read
            return None if self._is_our_kernel() else 0
        return 0

    async def wait(self) -> int | None:
        while (status := await self.poll()) is None:
            await asyncio.sleep(0.1)
        self.process = self.pid = None
        return status

    async def send_signal(self, signum: int) -> None:
        if self.process is not None:
            if self.process.poll() is not None:
                return  # exited and reaped: its pid may already be someone else's
        elif self.pid is None or not self._is_our_kernel():
            return
        os.killpg(self.pid, signum)

    async def kill(self, restart: bool = False) -> None:
        await self._signal_quietly(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        await self._signal_quietly(signal.SIGTERM)

    async def _signal_quietly(self, signum: int) -> None:
        try:
            await self.send_signal(signum)
        except ProcessLookupError:
            pass  # it exited between the check and the signal

    async def cleanup(self, restart: bool = False) -> None:
        if not restart:
            self._release_ports()

    def _is_our_kernel(self) -> bool:
        """Whether ``pid`` is still the kernel we started, in the namespace we put it in.

        Only needed for an adopted kernel: a child of ours cannot lose its pid
        before we reap it.
        """
        identity = process_identity(self.pid) if self.pid is not None and self._start_time is not None else None
        try:
            netns = os.stat(os.path.join(NETNS_DIR, self.namespace))
        except OSError:
            return False
        return identity == (self._start_time, (netns.st_dev, netns.st_ino))

    # -- persistence (for applications that hand kernels between processes) ------
    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update(namespace=self.namespace, kernel_ip=self.kernel_ip, ports=self._held, pid=self.pid,
                    start_time=self._start_time)
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.namespace = provisioner_info["namespace"]  # validated by the traits
        self.kernel_ip = provisioner_info["kernel_ip"]
        held = check_ports(provisioner_info.get("ports"))
        pid, start_time = provisioner_info.get("pid"), provisioner_info.get("start_time")
        for name, number in (("pid", pid), ("start_time", start_time)):
            if number is not None and (type(number) is not int or number <= 1):
                raise ValueError(f"bad {name} in provisioner info: {_show(number)}")
        self._release_ports()
        if held is not None:
            self._taken.setdefault(self.namespace, set()).update(held.values())
        self._held, self.pid, self._start_time, self.process = held, pid, start_time, None


def _as_trait_error(check, value):
    try:
        return check(value)
    except ValueError as error:
        raise TraitError(str(error)) from None
