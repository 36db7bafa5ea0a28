"""All running kernels: admission, launch, restart, crash recovery and shutdown.

The registry is a Twisted service: ``startService`` begins watching kernel
processes, ``stopService`` shuts every kernel down (politely, then by force)
and fires only when all of them are gone -- including kernels whose launch
was still in flight -- so no kernel process outlives the gateway.
"""
from __future__ import annotations

import os
import uuid
from typing import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, DeferredLock, inlineCallbacks
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import metrics
from ..auth.quota import check_kernel_quota, default_kernel_name, kernel_to_start
from ..errors import Conflict, KernelDead, KernelExitedAtStart, KernelLaunchError, UnknownKernel, UnknownKernelSpec
from ..interfaces import IKernelRegistry
from .env import kernel_env, launch_timeout, validate_client_env
from .kernel import ManagedKernel
from .lifecycle import PORT_RACE_ATTEMPTS, env_injection, lost_a_port, parse_pool_sizes, python_env_update_code
from .messages import utcnow
from .persistence import KernelRecords
from .pool import WarmPool
from .watch import watch_services
from .seed import run_seed

log = Logger()


class _LostAPort(KernelLaunchError):
    """A start to make again on new ports."""


@implementer(IKernelRegistry)
class KernelRegistry(KernelRecords, Service):
    """Kernels by id.

    :param launcher: a :class:`jkg.kernels.launcher.KernelLauncher`.
    :param connect: ``connect(connection_info, on_messages, label)`` making channels
        (see :class:`jkg.kernels.kernel.ManagedKernel`).
    :param config: the :class:`jkg.config.GatewayConfig`.
    :param clock: an ``IReactorTime`` (the reactor, or a ``task.Clock``).
    """

    name = "kernels"

    def __init__(self, launcher, connect: Callable, config, clock, environ=None, seed_cells=(), store=None,
                 sandbox=None):
        self.launcher = launcher
        self.sandbox = sandbox  # a jkg.sandbox.policy.SandboxPolicy: each launch's profile
        self.seed_cells = list(seed_cells)
        self.store = store
        self.config = config
        self.kernels: dict[str, ManagedKernel] = {}
        self.started = utcnow()
        self._connect = connect
        self._clock = clock
        self._environ = os.environ if environ is None else environ
        self._starting = 0
        self._starting_for: dict[str | None, int] = {}
        self._inflight: set[Deferred] = set()
        self._locks: dict[str, DeferredLock] = {}
        self._stopping = False
        #: the crash watch, the culler and the heartbeat (TimerServices), started and stopped with the registry
        self.timers = watch_services(self, config, clock)
        sizes = parse_pool_sizes(config.pool, config.prespawn_count,
                                 default_kernel_name(config, launcher.specs.default_name))
        self.base_env = kernel_env({}, self._environ, config.env_process_whitelist, config.env_whitelist)
        self.pool = WarmPool(sizes, self._launch_pooled, clock) if sizes else None

    # -- queries -------------------------------------------------------------
    def list_kernels(self, tenant=None) -> list[ManagedKernel]:
        """Every kernel, or only those ``tenant`` may use."""
        kernels = list(self.kernels.values())
        if tenant is None:
            return kernels
        return [kernel for kernel in kernels if tenant.may_use(kernel.owner)]

    def get(self, kernel_id: str, tenant=None) -> ManagedKernel:
        """The kernel; another tenant's kernel is "not found", exactly like a missing one."""
        kernel = self.kernels.get(kernel_id)
        if kernel is None or (tenant is not None and not tenant.may_use(kernel.owner)):
            raise UnknownKernel(kernel_id)
        return kernel

    def owned_by(self, tenant_name: str) -> list[ManagedKernel]:
        return [kernel for kernel in self.kernels.values() if kernel.owner == tenant_name]

    def last_activity(self):
        return max((k.last_activity for k in self.kernels.values()), default=self.started)

    def connection_count(self) -> int:
        return sum(len(k.clients) for k in self.kernels.values())

    # -- starting ------------------------------------------------------------
    def start(self, kernel_name: str | None, env, tenant=None) -> Deferred:
        """Admit, launch and confirm a kernel; fire with the ready kernel.

        Admission is synchronous -- limits count the starts still in flight
        and are checked and taken before the first yield -- so concurrent
        requests can never overshoot a quota.
        """
        client_env = dict(validate_client_env(env))
        name = kernel_to_start(self.config, kernel_name, self.launcher.specs.default_name, tenant)
        if tenant is not None and not tenant.may_start(name):
            raise UnknownKernelSpec(name)
        owner = tenant.name if tenant is not None else None
        owned = len(self.owned_by(owner)) + self._starting_for.get(owner, 0) if tenant is not None else 0
        check_kernel_quota(self.config.max_kernels, len(self.kernels) + self._starting, tenant, owned)
        if tenant is not None and tenant.named:
            client_env["KERNEL_USERNAME"] = tenant.name  # whatever the client claims
        full_env = kernel_env(client_env, self._environ, self.config.env_process_whitelist,
                              self.config.env_whitelist)
        timeout = launch_timeout(client_env, self.config.kernel_launch_timeout)
        self._starting += 1
        self._starting_for[owner] = self._starting_for.get(owner, 0) + 1
        profile = self.sandbox.profile_for(owner, name) if self.sandbox is not None else None
        d = self._start(name, full_env, timeout, owner, profile)
        self._inflight.add(d)
        began = self._clock.seconds()

        def done(result):
            self._starting -= 1
            self._starting_for[owner] -= 1
            self._inflight.discard(d)
            if isinstance(result, Failure):
                if not result.check(UnknownKernelSpec):  # a client's typo is no failed start (nor a new label)
                    metrics.kernel_start_failed(name)
            else:
                metrics.kernel_started(name, self._clock.seconds() - began)
            return result

        return d.addBoth(done)

    @inlineCallbacks
    def _start(self, name: str, env: dict, timeout: float, owner: str | None, profile=None):
        kernel = yield self._from_pool(name, env, timeout, profile)
        if kernel is not None:
            kernel.last_activity = utcnow()  # handed out now: idle since now, not since it was pooled
        if kernel is None:
            kernel = yield self._launch_ready(name, env, timeout, profile)
        kernel.owner = owner
        kernel.env = env
        if self._stopping:
            kernel.channels.close()
            yield kernel.launched.shutdown(now=True)
            raise KernelLaunchError("the gateway is shutting down")
        self.kernels[kernel.id] = kernel
        self._locks[kernel.id] = DeferredLock()
        log.info("started kernel {id} ({name})", id=kernel.id, name=name)
        self._persist(kernel)
        return kernel

    # -- bridged kernels -------------------------------------------------------
    @inlineCallbacks
    def adopt(self, kernel_id: str, name: str, launched, source: str = ""):
        """Serve a kernel someone else started (``--existing``); fire with it once it answers."""
        kernel = ManagedKernel(kernel_id, name, launched, self._connect, self._clock,
                               self.config.replay_buffer_limit)
        launched.bind(kernel)
        try:
            yield kernel.wait_ready(10, channel="control")
        except Exception:
            kernel.channels.close()
            raise
        kernel.became_ready()
        self.kernels[kernel_id] = kernel
        self._locks[kernel_id] = DeferredLock()
        log.info("serving existing kernel {id} ({name}) from {source}", id=kernel_id, name=name, source=source)
        return kernel

    def drop(self, kernel_id: str, reason: str) -> None:
        """Stop serving a bridged kernel that went away (it is not ours to stop)."""
        kernel = self.kernels.pop(kernel_id, None)
        self._locks.pop(kernel_id, None)
        if kernel is not None:
            kernel.broadcast_status("dead")
            kernel.disconnect_all(1000, reason)
            kernel.channels.close()

    @inlineCallbacks
    def _from_pool(self, name: str, env: dict, timeout: float, profile=None):
        """A pooled kernel made to look started with ``env``, or None for a fresh start.

        Pooled kernels are sandboxed with the profile of no tenant; they serve
        only requests whose profile is the same (one-off workspaces, same uid,
        network and limits).
        """
        if self.pool is None or name not in self.pool.sizes:
            return None
        if profile is not None and not self.sandbox.poolable(profile, self.sandbox.profile_for(None, name)):
            return None
        missing = env_injection(self.base_env, env)
        kernel = self.pool.take(name)
        if kernel is None:
            return None
        if missing is None or (missing and kernel.language != "python"):
            self.pool.ready[name].appendleft(kernel)  # cannot honour this env: keep it for the next request
            return None
        if missing:
            try:
                reply = yield kernel.execute_quietly(python_env_update_code(missing), timeout)
            except KernelLaunchError:
                reply = {"status": "error"}
            if reply.get("status") != "ok":
                kernel.channels.close()
                kernel.launched.shutdown(now=True)
                return None
        metrics.pool_handout(name)
        return kernel

    def _launch_pooled(self, name: str) -> Deferred:
        profile = self.sandbox.profile_for(None, name) if self.sandbox is not None else None
        return self._launch_ready(name, dict(self.base_env), self.config.kernel_launch_timeout, profile)

    @inlineCallbacks
    def _launch_ready(self, name: str, env: dict, timeout: float, profile=None):
        """Launch, confirm readiness and run the seed notebook; leave nothing running on failure.

        A kernel that lost one of its ports to another process before binding
        it is launched again on new ones (:func:`~jkg.kernels.lifecycle.lost_a_port`).
        """
        spec = yield self.launcher.specs.get(name)  # UnknownKernelSpec -> 404 before any process exists
        for attempt in range(1, PORT_RACE_ATTEMPTS + 1):
            try:
                kernel = yield self._launch_once(name, spec, env, timeout, profile)
            except _LostAPort as error:
                if attempt == PORT_RACE_ATTEMPTS:
                    raise KernelLaunchError(error.message) from None
                log.warn("kernel {name} lost a port to another process before binding it; starting it again "
                         "on new ports ({attempt} of {attempts})", name=name, attempt=attempt + 1,
                         attempts=PORT_RACE_ATTEMPTS)
                continue
            return kernel

    @inlineCallbacks
    def _launch_once(self, name: str, spec, env: dict, timeout: float, profile=None):
        kernel_id = str(uuid.uuid4())
        launched = yield self.launcher.launch(kernel_id, name, env, sandbox=profile)
        kernel = ManagedKernel(kernel_id, name, launched, self._connect, self._clock, self.config.replay_buffer_limit)
        kernel.language = (spec or {}).get("language", "")
        try:
            if self._stopping:
                raise KernelLaunchError("the gateway is shutting down")
            yield kernel.wait_ready(timeout)
            if self.seed_cells:
                yield run_seed(kernel, self.seed_cells, timeout)
        except KernelLaunchError as error:
            kernel.channels.close()
            yield launched.shutdown(now=True)
            tail = launched.stderr_tail()
            failure = _LostAPort if lost_a_port(isinstance(error, KernelExitedAtStart), tail) else KernelLaunchError
            raise failure(f"{error.message}; kernel stderr: {tail}" if tail else error.message) from None
        except Exception:
            kernel.channels.close()
            yield launched.shutdown(now=True)
            raise
        kernel.became_ready()
        return kernel

    # -- operations on one kernel ----------------------------------------------
    def interrupt(self, kernel_id: str, tenant=None) -> Deferred:
        kernel = self.get(kernel_id, tenant)
        if kernel.execution_state == "dead":
            raise KernelDead(f"kernel {kernel_id} is dead")
        log.info("interrupting kernel {id}", id=kernel_id)
        return kernel.launched.interrupt()

    def restart(self, kernel_id: str, tenant=None) -> Deferred:
        """A restart the client asked for: clients see ``starting``, not ``restarting``.

        jupyter_server sends ``restarting`` only when a kernel died and is
        being restarted automatically; @jupyterlab/services treats it as such
        (it drops its futures and reconnects), so a requested restart must
        not send it.
        """
        kernel = self.get(kernel_id, tenant)
        if not kernel.launched.can_restart:
            raise Conflict(f"kernel {kernel_id} was started outside jkg and cannot be restarted by it")
        lock = self._locks[kernel_id]
        if lock.locked:
            raise Conflict(f"kernel {kernel_id} is already restarting or shutting down")
        return lock.run(self._restart, kernel, automatic=False)

    @inlineCallbacks
    def _restart(self, kernel: ManagedKernel, automatic: bool):
        kernel.restarting(automatic)
        try:
            kernel.channels.close()
            yield kernel.launched.restart(now=automatic)
            kernel.reconnect()
            if not automatic:
                kernel.broadcast_status("starting")
            yield kernel.wait_ready(self.config.kernel_launch_timeout)
        except Exception as error:  # noqa: BLE001 - whatever failed, the kernel is reported dead below
            log.error("kernel {id} could not be restarted: {error}", id=kernel.id, error=error)
            kernel.declare_dead(close=False)
            raise KernelLaunchError(f"kernel {kernel.id} could not be restarted: {error}") from None
        kernel.restarted()
        self._persist(kernel)
        log.info("restarted kernel {id}{why}", id=kernel.id, why=" after it died" if automatic else "")
        metrics.kernel_restarted(automatic)
        return kernel

    def shutdown(self, kernel_id: str, tenant=None) -> Deferred:
        kernel = self.get(kernel_id, tenant)
        del self.kernels[kernel_id]
        lock = self._locks.pop(kernel_id)
        return lock.run(self._shutdown, kernel)

    @inlineCallbacks
    def _shutdown(self, kernel: ManagedKernel):
        kernel.shutting_down("kernel shut down")
        try:
            # channels stay open meanwhile: a kernel jkg did not launch is asked over them to shut down
            yield kernel.launched.shutdown(now=False)
        finally:
            kernel.channels.close()
        yield self._forget(kernel.id, launched_here=kernel.launched.can_restart)
        if kernel.launched.owned:
            log.info("shut down kernel {id}", id=kernel.id)
        else:
            log.info("detached kernel {id}: it was started outside jkg and keeps running", id=kernel.id)

    def evict(self, tenant_name: str) -> Deferred:
        """Shut down every kernel of a tenant that no longer exists."""
        return DeferredList([self.shutdown(kernel.id) for kernel in self.owned_by(tenant_name)],
                            consumeErrors=True)

    # -- clients -------------------------------------------------------------
    def attach(self, kernel_id: str, client) -> ManagedKernel:
        kernel = self.get(kernel_id)
        kernel.attach(client)
        return kernel

    # -- for the watch (jkg.kernels.watch) ------------------------------------
    def busy(self, kernel_id: str) -> bool:
        """Whether a restart or shutdown of the kernel is under way (the watch leaves it alone)."""
        lock = self._locks.get(kernel_id)
        return lock is None or lock.locked

    def restart_automatically(self, kernel: ManagedKernel) -> Deferred:
        """Restart a kernel that died (clients see ``restarting``)."""
        return self._locks[kernel.id].run(self._restart, kernel, automatic=True)

    # -- service -------------------------------------------------------------
    def startService(self) -> None:  # noqa: N802 - Twisted API
        super().startService()
        self.timers.startService()
        if self.pool is not None:
            self._clock.callLater(0, self.pool.refill)  # after the asyncio loop runs
        if self.store is not None:
            self.store.startService()
        self._clock.callLater(0, self.reattach_all)

    @inlineCallbacks
    def stopService(self):  # noqa: N802 - Twisted API
        """Shut every kernel down and fire only when all processes are gone."""
        self._stopping = True
        yield self.timers.stopService()
        if self.pool is not None:
            yield self.pool.stop()
        yield DeferredList(list(self._inflight), consumeErrors=True)
        kernel_ids = list(self.kernels)
        if self.config.keep_kernels_on_exit:
            if kernel_ids:
                log.info("leaving {n} kernel(s) running for the next gateway", n=len(kernel_ids))
            for kernel in list(self.kernels.values()):
                kernel.disconnect_all(4503, "gateway restarting; reconnect with the same session_id")
                kernel.channels.close()
            yield DeferredList([self._persist(kernel) for kernel in self.kernels.values()], consumeErrors=True)
        else:
            if kernel_ids:
                log.info("shutting down {n} kernel(s)", n=len(kernel_ids))
            yield DeferredList([self.shutdown(kernel_id) for kernel_id in kernel_ids], consumeErrors=True)
        if self.store is not None:
            yield self.store.stopService()
        yield self.launcher.settle()
        self.launcher.close()
        yield super().stopService()
