"""Public test doubles for jkg's interfaces, checked with ``verifyObject``.

Like ``twisted.internet.testing`` and ``treq.testing``: web tests drive the
real routes with a :class:`FakeRegistry` (no kernel processes), kernel tests
drive :class:`jkg.kernels.kernel.ManagedKernel` with :class:`FakeChannels`
and :class:`FakeLaunchedKernel` (no ZeroMQ), and :class:`RecordingClient`
stands in for a WebSocket.
"""
from __future__ import annotations

import uuid

from twisted.internet.defer import fail, succeed
from zope.interface import implementer

from .errors import ResourceLimit, UnknownKernel, UnknownKernelSpec
from .interfaces import IKernel, IKernelClient, IKernelRegistry
from .kernels.messages import isoformat, utcnow


@implementer(IKernelClient)
class RecordingClient:
    """Records what the registry delivers to it."""

    def __init__(self, session_id: str = "session"):
        self.session_id = session_id
        self.delivered: list = []
        self.closed: tuple[int, str] | None = None

    def deliver(self, message) -> None:
        self.delivered.append(message)

    def disconnect(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


class FakeChannels:
    """Records what would have been signed and sent to the kernel."""

    def __init__(self, connection_info=None, on_message=None):
        self.connection_info = connection_info
        self.on_message = on_message
        self.sent: list[tuple[str, list]] = []
        self.closed = False
        self.all_connected = True
        self.on_connected = None

    def send(self, channel: str, parts) -> None:
        if not self.closed:
            self.sent.append((channel, list(parts)))

    def close(self) -> None:
        self.closed = True


class FakeLaunchedKernel:
    """A kernel process that is alive until told otherwise."""

    def __init__(self):
        self.connection_info = {"transport": "tcp", "ip": "127.0.0.1", "key": b"k"}
        self.alive = True
        self.interrupts = 0
        self.restarts = 0
        self.shutdowns = 0

    def is_alive(self):
        return succeed(self.alive)

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


@implementer(IKernel)
class FakeKernel:
    def __init__(self, name: str = "python3"):
        self.id = str(uuid.uuid4())
        self.name = name
        self.execution_state = "idle"
        self.clients: dict = {}
        self.sent: list = []

    def model(self) -> dict:
        return {"id": self.id, "name": self.name, "last_activity": isoformat(utcnow()),
                "execution_state": self.execution_state, "connections": len(self.clients)}


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

    def list_kernels(self):
        return list(self.kernels.values())

    def get(self, kernel_id):
        try:
            return self.kernels[kernel_id]
        except KeyError:
            raise UnknownKernel(kernel_id) from None

    def start(self, kernel_name, env):
        name = kernel_name or "python3"
        if name not in self.specs:
            return fail(UnknownKernelSpec(name))
        if self.max_kernels is not None and len(self.kernels) >= self.max_kernels:
            return fail(ResourceLimit(f"Maximum number of kernels ({self.max_kernels}) reached"))
        kernel = FakeKernel(name)
        self.kernels[kernel.id] = kernel
        return succeed(kernel)

    def shutdown(self, kernel_id):
        kernel = self.get(kernel_id)
        del self.kernels[kernel_id]
        for client in list(kernel.clients.values()):
            client.disconnect(1001, "kernel shut down")
        return succeed(None)

    def interrupt(self, kernel_id):
        self.get(kernel_id)
        self.interrupted.append(kernel_id)
        return succeed(None)

    def restart(self, kernel_id):
        kernel = self.get(kernel_id)
        self.restarted.append(kernel_id)
        return succeed(kernel)

    def attach(self, kernel_id, client):
        self.get(kernel_id).clients[client.session_id] = client

    def detach(self, kernel_id, client):
        kernel = self.kernels.get(kernel_id)
        if kernel is not None:
            kernel.clients.pop(client.session_id, None)

    def send(self, kernel_id, client, message):
        self.get(kernel_id).sent.append((client.session_id, message))

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
