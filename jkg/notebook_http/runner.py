"""Running code on one registry kernel and collecting what it printed.

A :class:`KernelRunner` is an :class:`jkg.interfaces.IKernelClient` attached
to one kernel through the registry, exactly like a WebSocket: requests go
over jkg's own channels (through the kernel ``registry.attach`` returned), and the kernel's iopub reaches
:meth:`deliver`.  Each execution is matched by its ``msg_id`` and ends with
the kernel's ``idle`` status for it.  The runner never decides policy (which
kernel, how long): the pool does.
"""
from __future__ import annotations

import uuid
from typing import Callable

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import TimeoutError as DeferredTimeout
from twisted.logger import Logger
from zope.interface import implementer

from ..errors import KernelLaunchError
from ..interfaces import IKernelClient
from ..kernels.messages import loads, make_message_parts
from ..wire import IncomingMessage
from .response import CellOutput, OutputTooLarge

log = Logger()

_WANTED = frozenset({"stream", "execute_result", "display_data", "error"})


class KernelGone(Exception):
    """The kernel was shut down, restarted or died: it cannot serve this (or any further) request."""


@implementer(IKernelClient)
class KernelRunner:
    """One pool kernel, driven by the gateway.

    :param registry: the :class:`jkg.interfaces.IKernelRegistry`.
    :param on_lost: called once with this runner when the kernel is lost
        (shut down, restarted -- its seeded state is gone -- or dead).
    """

    def __init__(self, registry, kernel_id: str, on_lost: Callable[["KernelRunner"], None] = lambda r: None):
        self.registry = registry
        self.kernel_id = kernel_id
        self.session_id = f"jkg-http-{uuid.uuid4().hex}"
        self.on_lost = on_lost
        self.lost = False
        self.tenant: str | None = None  # who holds it now (the pool's bookkeeping)
        self.dropped_as_slow = 0  # it reads everything at once
        self._current: tuple[str, CellOutput, Deferred] | None = None
        self.kernel = registry.attach(kernel_id, self)  # an IAttachedKernel

    # -- IKernelClient -----------------------------------------------------------
    def deliver_all(self, messages) -> None:
        for message in messages:
            self.deliver(message)

    def deliver(self, message) -> None:
        current = self._current
        if message.channel != "iopub":
            return
        if message.msg_type == "status" and message.parent_id is None:
            state = message.execution_state
            if state in ("restarting", "dead"):
                self._lose(f"kernel {state}")
            return
        if current is None or message.parent_id != current[0]:
            return
        msg_id, output, done = current
        if message.msg_type == "status":
            state = message.execution_state or loads(message.parts[3]).get("execution_state")
            if state == "idle":
                self._current = None
                if not done.called:
                    done.callback(output)
            return
        if message.msg_type in _WANTED:
            try:
                output.add(message.msg_type, loads(message.parts[3]))
            except (ValueError, TypeError):
                return
            except OutputTooLarge as error:
                self._current = None
                if not done.called:
                    done.errback(error)

    def disconnect(self, code, reason) -> None:
        self._lose(str(reason))

    def outgoing(self):
        return None  # nothing waits: output is collected as it arrives

    # -- executing ---------------------------------------------------------------
    def execute(self, code: str) -> Deferred:
        """Run ``code``; fire with its :class:`CellOutput` once the kernel is idle again.

        Errbacks with :class:`KernelGone` if the kernel is lost meanwhile.
        One execution at a time (the pool lends a runner to one request).
        """
        if self.lost:
            raise KernelGone(f"kernel {self.kernel_id} is gone")
        if self._current is not None:
            raise RuntimeError("a runner executes one request at a time")
        parts = make_message_parts("execute_request", {
            "code": code, "silent": False, "store_history": False, "user_expressions": {},
            "allow_stdin": False, "stop_on_error": True}, self.session_id)
        header = loads(parts[0])
        done: Deferred = Deferred(lambda d: self.abandon())
        self._current = (header["msg_id"], CellOutput(), done)
        try:
            self.kernel.send(self, IncomingMessage("shell", header, parts))
        except Exception as error:  # noqa: BLE001 - the kernel vanished from the registry
            self._current = None
            self._lose(f"send failed: {error}")
            raise KernelGone(str(error)) from None
        return done

    def abandon(self) -> Deferred | None:
        """Stop waiting for the current execution (after a timeout); return its Deferred, still pending."""
        current, self._current = self._current, None
        return current[2] if current else None

    def busy(self) -> bool:
        return self._current is not None

    def _lose(self, why: str) -> None:
        if self.lost:
            return
        self.lost = True
        current, self._current = self._current, None
        if current is not None and not current[2].called:
            current[2].errback(KernelGone(f"kernel {self.kernel_id} lost: {why}"))
        self.on_lost(self)

    def close(self) -> None:
        """Detach from the kernel (it stays running; the pool shuts it down)."""
        self.lost = True
        self.kernel.detach(self)


@inlineCallbacks
def start_runner(registry, kernel_name: str, seed_cells, timeout: float, clock, on_lost):
    """Start a kernel for a notebook, attach a runner and run the seed cells; fire with the runner.

    A seed cell that fails (or runs longer than ``timeout``) shuts the kernel
    down and raises :class:`KernelLaunchError` naming the cell, as a seed notebook does.
    """
    kernel = yield registry.start(kernel_name or None, {})
    runner = KernelRunner(registry, kernel.id, on_lost)
    try:
        for number, code in enumerate(seed_cells, start=1):
            if not code.strip():
                continue
            try:
                output = yield runner.execute(code).addTimeout(timeout, clock)
            except DeferredTimeout:
                raise KernelLaunchError(f"notebook setup cell {number} ran longer than {timeout:g} s") from None
            if output.error is not None:
                raise KernelLaunchError(f"notebook setup cell {number} failed: "
                                        f"{output.error[0]}: {output.error[1]}")
    except Exception:
        runner.close()
        try:
            yield registry.shutdown(kernel.id)
        except Exception:  # noqa: BLE001 - already gone
            pass
        raise
    return runner
