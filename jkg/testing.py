"""Public test doubles for jkg's interfaces, checked with ``verifyObject``.

Like ``twisted.internet.testing`` and ``treq.testing``: web tests drive the
real routes with a :class:`FakeRegistry` (no kernel processes), kernel tests
drive :class:`jkg.kernels.kernel.ManagedKernel` with :class:`FakeChannels`
and :class:`FakeLaunchedKernel` (no ZeroMQ), and :class:`RecordingClient`
stands in for a WebSocket.
"""
from __future__ import annotations

import json
import uuid

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from .auth.credentials import ITokenCredentials
from .auth.quota import check_kernel_quota
from .errors import BadRequest, ResourceLimit, UnknownKernel, UnknownKernelSpec
from .interfaces import IAttachedKernel, IKernelChannels, IKernelClient, IKernelRegistry, ILaunchedKernel
from .kernels.messages import KernelMessage, isoformat, utcnow


@implementer(IKernelClient)
@implementer(IKernelClient)
class RecordingClient:
    """Records what the registry delivers to it; tells no backlog (no flow control)."""

    def __init__(self, session_id: str = "session"):
        self.session_id = session_id
        self.delivered: list = []
        self.closed: tuple[int, str] | None = None
        self.dropped_as_slow = 0

    def outgoing(self):
        return None

    def deliver(self, message) -> None:
        self.delivered.append(message)

    def deliver_all(self, messages) -> None:
        for message in messages:
            self.deliver(message)

    def disconnect(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


@implementer(IKernelChannels)
class FakeChannels:
    """Records what would have been signed and sent to the kernel."""

    def __init__(self, connection_info=None, on_messages=None, label=""):
        self.connection_info = connection_info
        self.on_messages = on_messages
        self.label = label  # the kernel's id, as ManagedKernel passes it
        self.sent: list[tuple[str, list]] = []
        self.closed = False
        self.all_connected = True
        self.on_connected = None
        self.heartbeat = True  # what ping() answers
        self.iopub_paused = False

    def ping(self, timeout):
        return succeed(self.heartbeat and not self.closed)

    def send(self, channel: str, parts) -> None:
        if not self.closed:
            self.sent.append((channel, list(parts)))

    def on_message(self, message) -> None:
        """A message from the kernel, read on its own."""
        self.on_messages([message])

    def pause_iopub(self) -> None:
        self.iopub_paused = True

    def resume_iopub(self) -> None:
        self.iopub_paused = False

    def close(self) -> None:
        self.closed = True


@implementer(ILaunchedKernel)
class FakeLaunchedKernel:
    """A kernel process that is alive until told otherwise."""

    pid = None
    can_restart = True
    owned = True
    stderr_inode = None

    def __init__(self):
        self.connection_info = {"transport": "tcp", "ip": "127.0.0.1", "key": b"k"}
        self.alive = True
        self.interrupts = 0
        self.restarts = 0
        self.shutdowns = 0

    def is_alive(self):
        return succeed(self.alive)

    def stderr_tail(self) -> str:
        return ""

    def death_reason(self) -> str:
        return ""

    def record_info(self):
        return succeed((self.pid, {}))

    def interrupt(self):
        self.interrupts += 1
        return succeed(None)

    def restart(self, now: bool = False):
        self.restarts += 1
        self.alive = True
        return succeed(None)

    def shutdown(self, now: bool = False):
        self.shutdowns += 1
        self.alive = False
        return succeed(None)


@implementer(IAttachedKernel)
class FakeKernel:
    """A kernel that records what clients send it."""

    def __init__(self, name: str = "python3"):
        self.id = str(uuid.uuid4())
        self.name = name
        self.execution_state = "idle"
        self.clients: dict = {}
        self.sent: list = []
        self.drains = 0  # how often a client reported that its socket took part of its backlog
        self.owner = None

    def model(self) -> dict:
        return {"id": self.id, "name": self.name, "last_activity": isoformat(utcnow()),
                "execution_state": self.execution_state, "connections": len(self.clients)}

    def send(self, client, message) -> None:
        if message.channel not in ("shell", "control", "stdin"):
            raise BadRequest(f"clients cannot send on the {message.channel} channel")
        self.sent.append((client.session_id, message))

    def drained(self, client) -> None:
        self.drains += 1

    def detach(self, client) -> None:
        if self.clients.get(client.session_id) is client:
            del self.clients[client.session_id]


@implementer(IKernelRegistry)
class FakeRegistry:
    """Kernels that exist only in memory; ``specs`` are the known kernel names."""

    def __init__(self, specs=("python3",), max_kernels: int | None = None):
        self.specs = set(specs)
        self.max_kernels = max_kernels
        self.kernels: dict[str, FakeKernel] = {}
        self.started = utcnow()
        self.interrupted: list[str] = []
        self.restarted: list[str] = []

    def list_kernels(self, tenant=None):
        return [k for k in self.kernels.values() if tenant is None or tenant.may_use(k.owner)]

    def get(self, kernel_id, tenant=None):
        kernel = self.kernels.get(kernel_id)
        if kernel is None or (tenant is not None and not tenant.may_use(kernel.owner)):
            raise UnknownKernel(kernel_id)
        return kernel

    def start(self, kernel_name, env, tenant=None):
        name = kernel_name or "python3"
        if name not in self.specs or (tenant is not None and not tenant.may_start(name)):
            return fail(UnknownKernelSpec(name))
        owner = tenant.name if tenant is not None else None
        try:
            check_kernel_quota(self.max_kernels, len(self.kernels), tenant,
                               sum(1 for k in self.kernels.values() if k.owner == owner))
        except ResourceLimit as refusal:
            return fail(refusal)
        kernel = FakeKernel(name)
        kernel.owner = owner
        self.kernels[kernel.id] = kernel
        return succeed(kernel)

    def shutdown(self, kernel_id, tenant=None):
        kernel = self.get(kernel_id, tenant)
        del self.kernels[kernel_id]
        for client in list(kernel.clients.values()):
            client.disconnect(1001, "kernel shut down")
        return succeed(None)

    def interrupt(self, kernel_id, tenant=None):
        self.get(kernel_id, tenant)
        self.interrupted.append(kernel_id)
        return succeed(None)

    def restart(self, kernel_id, tenant=None):
        kernel = self.get(kernel_id, tenant)
        self.restarted.append(kernel_id)
        return succeed(kernel)

    def attach(self, kernel_id, client):
        kernel = self.get(kernel_id)
        kernel.clients[client.session_id] = client
        return kernel

    def last_activity(self):
        return self.started

    def connection_count(self):
        return sum(len(k.clients) for k in self.kernels.values())


class FakeKernelSpecs:
    """Kernelspec finder answering from memory."""

    default_name = "python3"

    def __init__(self, names=("python3",)):
        self.names = list(names)

    def describe_all(self):
        return succeed({name: ({"display_name": name, "language": "python", "argv": []}, ["logo-64x64.png"])
                        for name in self.names})

    def describe(self, name):
        if name not in self.names:
            return fail(UnknownKernelSpec(name))
        return succeed(({"display_name": name, "language": "python", "argv": []}, ["logo-64x64.png"]))

    def resource(self, name, path):
        if name not in self.names or path != "logo-64x64.png":
            return fail(UnknownKernelSpec(name))
        return succeed(b"\x89PNG fake")


@implementer(ICredentialsChecker)
class InMemoryTokenChecker:
    """A checker for tests: tokens map straight to avatar ids (tenant names)."""

    credentialInterfaces = (ITokenCredentials,)

    def __init__(self, tokens: dict[str, str]):
        self.tokens = dict(tokens)

    def requestAvatarId(self, credentials):  # noqa: N802 - twisted.cred API
        name = self.tokens.get(credentials.token)
        return succeed(name) if name is not None else fail(UnauthorizedLogin("unknown token"))


class AnsweringChannels(FakeChannels):
    """Channels whose kernel answers ``kernel_info_request`` at once (and publishes on iopub)."""

    def send(self, channel, parts) -> None:
        super().send(channel, parts)
        header = json.loads(parts[0])
        if header["msg_type"] == "kernel_info_request" and self.on_messages is not None:
            reply_header = json.dumps({"msg_id": uuid.uuid4().hex, "msg_type": "kernel_info_reply"}).encode()
            parent = json.dumps({"msg_id": header["msg_id"]}).encode()
            status = json.dumps({"msg_id": uuid.uuid4().hex, "msg_type": "status"}).encode()
            self.on_message(KernelMessage("iopub", b"", [status, parent, b"{}", b'{"execution_state":"idle"}'],
                                          "s", "status", header["msg_id"]))
            self.on_message(KernelMessage("shell", b"", [reply_header, parent, b"{}", b"{}"], "r",
                                          "kernel_info_reply", header["msg_id"]))


class FakeSpecs:
    default_name = "python3"

    def __init__(self, names=("python3",)):
        self.names = set(names)

    def get(self, name):
        return succeed({"display_name": name}) if name in self.names else fail(UnknownKernelSpec(name))


class FakeLauncher:
    """Launches that complete only when the test says so (``finish_all``)."""

    def __init__(self, specs=None):
        self.specs = specs or FakeSpecs()
        self.pending: list[tuple[Deferred, FakeLaunchedKernel]] = []
        self.launched: list[FakeLaunchedKernel] = []

    def launch(self, kernel_id, kernel_name, env, sandbox=None):
        launched = FakeLaunchedKernel()
        launched.env = env
        d = Deferred()
        self.pending.append((d, launched))
        self.launched.append(launched)
        return d

    def settle(self):
        return succeed(None)

    def close(self):
        self.closed = True

    def finish_all(self):
        pending, self.pending = self.pending, []
        for d, launched in pending:
            d.callback(launched)
