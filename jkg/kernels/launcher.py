"""Starting, signalling and stopping kernel processes through jupyter_client.

This is the only module that imports jupyter_client's kernel managers, and the
only place that bridges asyncio coroutines to Deferreds (kernelspecs are found
by :mod:`jkg.kernels.specs`).  Kernels are launched
through jupyter_client's provisioners, so a kernelspec naming any installed
provisioner works.  Local kernels are managed on the reactor's own loop
(jupyter_client's async API needs Twisted's asyncio reactor; :func:`as_deferred`
must therefore be called while that reactor runs); kernels whose provisioner
may block (containers, SSH hosts, anything not known to be local) are managed
on the :class:`~jkg.kernels.engine_loop.EngineLoop`, so the reactor never waits
for an engine.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
from typing import Any, Awaitable, Callable

from jupyter_client.kernelspec import NoSuchKernel
from jupyter_client.manager import AsyncKernelManager
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from ..errors import KernelLaunchError, UnknownKernelSpec
from ..interfaces import ILaunchedKernel
from ..provisioners import engines
from .engine_loop import EngineLoop
from .runtime import GATEWAY_PID_KEY, connection_file_path
from .specs import KernelSpecs
from .stderr import StderrTail, kernel_output_pipe

log = Logger()


def as_deferred(awaitable: Awaitable[Any]) -> Deferred:
    """Run an asyncio coroutine on the reactor's loop and return a Deferred."""
    return Deferred.fromFuture(asyncio.ensure_future(awaitable))


# Runs a coroutine factory on the loop a kernel's manager lives on.
Runner = Callable[[Callable[[], Awaitable[Any]]], Deferred]


def _on_reactor_loop(make: Callable[[], Awaitable[Any]]) -> Deferred:
    return as_deferred(make())


@implementer(ILaunchedKernel)
class LaunchedKernel:
    """One kernel process (or remote kernel) as its provisioner reports it."""

    can_restart = True
    owned = True

    def __init__(self, manager: AsyncKernelManager, run: Runner | None = None, reactor=None):
        """
        :param run: runs a coroutine factory and returns a Deferred: on the
            reactor's loop for local kernels, on the :class:`EngineLoop` for
            provisioners that block.  The manager lives on that loop for good.
        :param reactor: reads the stderr pipe of each start (none: not read).
        """
        self._manager = manager
        self.stderr = None  # a StderrTail on the pipe of the last start (local processes)
        self._run = run or _on_reactor_loop
        self._reactor = reactor
        self.read_new_output()

    def stderr_tail(self) -> str:
        return self.stderr.tail() if self.stderr is not None else ""

    @property
    def stderr_inode(self) -> int | None:
        """The stderr pipe's inode, recorded so that a later gateway can read it on."""
        return self.stderr.inode if self.stderr is not None else None

    def read_new_output(self, result=None):
        """Read the pipe the last (re)start opened (on the reactor); the previous start's pipe is closed.

        Every start of the process gets a new pipe (:class:`_GatewayKernelManager`);
        one nobody read would fill up and block the restarted kernel.
        """
        reader = getattr(self._manager, "output_reader", None)
        if reader is None:
            return result
        self._manager.output_reader = None
        if self._reactor is None:
            reader.close()
            return result
        if self.stderr is not None:
            self.stderr.close()
        self.stderr = StderrTail(self._reactor, reader)
        return result

    def death_reason(self) -> str:
        """Why the process died, when its provisioner knows (a sandbox's memory limit)."""
        reason = getattr(self._manager.provisioner, "death_reason", None)
        return reason() if reason is not None else ""

    @property
    def connection_info(self) -> dict:
        """Transport, ip, ports, key and signature scheme: stays on the server."""
        return self._manager.get_connection_info(session=False)

    @property
    def pid(self) -> int | None:
        provisioner = self._manager.provisioner
        process = getattr(provisioner, "process", None)
        return getattr(process, "pid", None)

    def is_alive(self) -> Deferred:
        """Poll the provisioner (on the loop its manager lives on)."""
        return self._run(self._manager.is_alive)

    def record_info(self) -> Deferred:
        """Fire with ``(pid, provisioner_info)``: what a later gateway needs to reattach."""

        async def info():
            provisioner = self._manager.provisioner
            details = await provisioner.get_provisioner_info() if provisioner is not None else {}
            return self.pid, details

        return self._run(info)

    def interrupt(self) -> Deferred:
        return self._run(self._manager.interrupt_kernel)

    def restart(self, now: bool = False) -> Deferred:
        return self._run(lambda: self._restart(now)).addBoth(self.read_new_output)

    def shutdown(self, now: bool = False) -> Deferred:
        """Ask politely over the control channel, then kill; fire when gone (its stderr pipe closed)."""
        return self._run(lambda: self._shutdown(now)).addBoth(self._close_output)

    def _close_output(self, result):
        if self.stderr is not None:
            self.stderr.close()  # what the process still wrote is read first; its tail stays
        return result

    async def _shutdown(self, now: bool) -> None:
        remote = engines.remote_kernel_process(self._manager.provisioner)
        try:
            await self._manager.shutdown_kernel(now=now)
        except Exception:  # noqa: BLE001 - a dying kernel must still be reaped
            log.failure("graceful shutdown failed; killing")
            await self._manager.shutdown_kernel(now=True)
        if remote is not None:  # gateway_provisioners may report an SSH kernel gone while it still runs
            await _reap_remote(self._manager.provisioner, remote)

    async def _restart(self, now: bool) -> None:
        remote = engines.remote_kernel_process(self._manager.provisioner)
        await self._manager.restart_kernel(now=now)
        if remote is not None:
            await _reap_remote(self._manager.provisioner, remote)


class _GatewayKernelManager(AsyncKernelManager):
    """Writes ``kernel-<id>.json`` in the runtime directory, marked with the gateway's pid.

    Each start of the process (restarts too: jupyter_client starts again with
    the first start's arguments) that asks for ``stderr=PIPE`` gets a new
    :func:`~jkg.kernels.stderr.kernel_output_pipe` instead, and ``stdout``
    too when it also asks for ``PIPE``; the reader waits in ``output_reader``
    for :class:`LaunchedKernel` to take it on the reactor.
    """

    output_reader = None

    def write_connection_file(self, **kwargs):
        super().write_connection_file(**{GATEWAY_PID_KEY: os.getpid(), **kwargs})

    async def _async_launch_kernel(self, kernel_cmd, **kw):  # jupyter_client's hook for launching differently
        if kw.get("stderr") != subprocess.PIPE:
            await super()._async_launch_kernel(kernel_cmd, **kw)
            return
        kernel_end, reader = kernel_output_pipe()
        kw["stderr"] = kernel_end
        if kw.get("stdout") == subprocess.PIPE:
            kw["stdout"] = kernel_end
        try:
            await super()._async_launch_kernel(kernel_cmd, **kw)
        except BaseException:
            reader.close()
            raise
        finally:
            os.close(kernel_end)
        if self.output_reader is not None:
            self.output_reader.close()
        self.output_reader = reader


def _manager(kernel_id: str, kernel_name: str, specs: KernelSpecs, shutdown_wait_time: float):
    manager = _GatewayKernelManager(kernel_name=kernel_name, kernel_spec_manager=specs.manager)
    manager.shutdown_wait_time = shutdown_wait_time
    path = connection_file_path(kernel_id)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    manager.connection_file = path
    return manager


class KernelLauncher:
    """Makes :class:`LaunchedKernel` objects; the registry's only way to spawn."""

    def __init__(self, specs: KernelSpecs, shutdown_wait_time: float = 3.0, independent: bool = False,
                 reactor=None, sandboxes=None):
        """
        :param independent: kernels outlive the gateway process (``--keep-kernels-on-exit``);
            otherwise ipykernel watches its parent and exits with it, so even a
            SIGKILLed gateway leaves no orphan kernel behind.
        :param sandboxes: a :class:`jkg.sandbox.provisioner.Sandboxes`, for launches whose
            profile asks for bwrap.
        """
        self.specs = specs
        self.shutdown_wait_time = shutdown_wait_time
        self.independent = independent
        self.reactor = reactor
        self.sandboxes = sandboxes
        self._engine_loop: EngineLoop | None = None
        self._settling: set[asyncio.Future] = set()  # failed container starts being swept (engine loop only)

    def _runner_for(self, manager: AsyncKernelManager) -> Runner:
        """The reactor's loop for local kernels; the engine loop for provisioners that may block."""
        try:
            spec = manager.kernel_spec
        except NoSuchKernel:
            return _on_reactor_loop  # _launch reports the unknown name
        if not engines.is_remote(spec):
            return _on_reactor_loop
        if self._engine_loop is None:
            reactor = self.reactor
            if reactor is None:
                from twisted.internet import reactor
            self._engine_loop = EngineLoop(reactor)
        return self._engine_loop.run

    def settle(self) -> Deferred:
        """Fire once every failed container start has been swept off its engine (the registry waits at stop).

        A failed start is answered at once; its launcher may still be asking the
        engine for a container, which is then removed (see
        :func:`jkg.provisioners.engines.remove_engine_leftovers`).
        """
        if self._engine_loop is None:
            return succeed(None)

        async def settled():
            while self._settling:
                await asyncio.gather(*list(self._settling), return_exceptions=True)

        return self._engine_loop.run(settled)

    def close(self) -> None:
        """Stop the engine loop (after the registry has shut its kernels down)."""
        if self._engine_loop is not None:
            self._engine_loop.stop()
            self._engine_loop = None

    def _started(self, manager: AsyncKernelManager, run: Runner) -> LaunchedKernel:
        """Wrap a started manager; runs on the reactor (the stderr reader is the reactor's)."""
        return LaunchedKernel(manager, run, self.reactor)

    def launch(self, kernel_id: str, kernel_name: str, env: dict[str, str], sandbox=None) -> Deferred:
        """Fire with a :class:`LaunchedKernel` once the process is started.

        The kernel may not be answering yet; the registry confirms readiness.

        :param sandbox: a :class:`jkg.sandbox.settings.SandboxProfile`, or None.
        """
        manager = _manager(kernel_id, kernel_name, self.specs, self.shutdown_wait_time)
        run = self._runner_for(manager)
        started = run(lambda: self._launch(manager, kernel_id, env, sandbox))
        return started.addCallback(lambda _: self._started(manager, run))

    def relaunch(self, kernel_id: str, kernel_name: str, env: dict[str, str], connection_info: dict,
                 sandbox=None) -> Deferred:
        """Start a kernel again under the same id and signing key (a reattached kernel's restart)."""
        manager = _manager(kernel_id, kernel_name, self.specs, self.shutdown_wait_time)
        info = dict(connection_info)
        if isinstance(info.get("key"), str):
            info["key"] = info["key"].encode("ascii")
        if sandbox is not None and sandbox.sandboxed and info.get("transport") == "ipc":
            info = {k: v for k, v in info.items() if not k.endswith("_port") and k not in ("ip", "transport")}
        manager.load_connection_info(info)
        run = self._runner_for(manager)
        started = run(lambda: self._launch(manager, kernel_id, env, sandbox))
        return started.addCallback(lambda _: self._started(manager, run))

    def restore(self, kernel_id: str, kernel_name: str, connection_info: dict, provisioner_info: dict) -> Deferred:
        """Take over a kernel another gateway started on an engine (``--keep-kernels-on-exit``).

        The provisioner is rebuilt from the info it reported at start
        (``load_provisioner_info``, gateway_provisioners' persistence hook), so
        polling, interrupts and shutdown go through it as before.  Fires with a
        :class:`LaunchedKernel`; the caller checks that it is alive.
        """
        manager = AsyncKernelManager(kernel_name=kernel_name, kernel_spec_manager=self.specs.manager)
        manager.shutdown_wait_time = self.shutdown_wait_time
        run = self._runner_for(manager)
        return run(lambda: self._restore(manager, kernel_id, connection_info, provisioner_info)).addCallback(
            lambda _: LaunchedKernel(manager, run))

    async def _restore(self, manager, kernel_id, connection_info, provisioner_info) -> AsyncKernelManager:
        from jupyter_client.provisioning import KernelProvisionerFactory

        info = dict(connection_info)
        if isinstance(info.get("key"), str):
            info["key"] = info["key"].encode("ascii")
        manager.kernel_id = kernel_id
        manager.load_connection_info(info)
        provisioner = KernelProvisionerFactory.instance(parent=manager.parent).create_provisioner_instance(
            kernel_id, manager.kernel_spec, parent=manager)
        await provisioner.load_provisioner_info({**provisioner_info, "connection_info": info})
        manager.provisioner = provisioner
        await provisioner.poll()  # container provisioners find their container (and its name) here
        return manager

    async def _launch(self, manager: AsyncKernelManager, kernel_id: str, env: dict, sandbox=None) -> None:
        if sandbox is not None and sandbox.sandboxed:
            from ..sandbox.workspace import SandboxError

            try:
                if self.sandboxes is None:
                    raise SandboxError("this kernel must be sandboxed, but no sandbox is available on this host")
                self.sandboxes.install(manager, kernel_id, sandbox)
            except (SandboxError, NoSuchKernel) as error:
                if isinstance(error, NoSuchKernel):
                    raise UnknownKernelSpec(manager.kernel_name) from None
                raise KernelLaunchError(f"kernel {manager.kernel_name} cannot be sandboxed: {error}") from None
        try:
            spec = manager.kernel_spec
        except NoSuchKernel:
            raise UnknownKernelSpec(manager.kernel_name) from None
        try:
            engines.check_remote_host(spec, env, os.environ)
        except ValueError as error:
            raise KernelLaunchError(f"kernel {manager.kernel_name} cannot start: {error}") from None
        # Container and cluster launchers get their engine's address and a file for the engine's error.
        errors_file = _launch_errors_file(kernel_id) if engines.is_remote(spec) else None
        env = {**env, **engines.launcher_env(spec, os.environ, errors_file)}
        if sandbox is not None and engines.is_container(spec):  # the engine enforces the tenant's limits
            env.update(engines.limits_env(sandbox.limits))
        stderr = engines.launch_stderr(spec, subprocess.PIPE if self.reactor is not None else None)
        if self.independent and stderr.get("stderr") == subprocess.PIPE:
            stderr["stdout"] = subprocess.PIPE  # a kept kernel keeps no descriptor of this gateway's
        try:
            await manager.start_kernel(kernel_id=kernel_id, env=env, cwd=os.getcwd(), independent=self.independent,
                                       **stderr)
        except NoSuchKernel:
            raise UnknownKernelSpec(manager.kernel_name) from None
        except Exception as error:  # noqa: BLE001 - report why, never a traceback
            provisioner = manager.provisioner
            await _cleanup_quietly(manager)
            engine = engines.read_launch_errors(errors_file)
            if engines.is_container(spec):  # the answer goes now; the engine is swept once its launcher is done
                settling = asyncio.ensure_future(_remove_engine_leftovers(provisioner, kernel_id, errors_file))
                self._settling.add(settling)
                settling.add_done_callback(self._settling.discard)
            raise KernelLaunchError(f"kernel {manager.kernel_name} failed to start: {error}"
                                    + (f"; engine: {engine}" if engine else "")) from None


def _launch_errors_file(kernel_id: str) -> str:
    """A path in the private runtime directory (never a guessable /tmp name) for a launcher's error."""
    from jupyter_core.paths import jupyter_runtime_dir

    folder = jupyter_runtime_dir()
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return os.path.join(folder, f"kernel-{kernel_id}-launch-errors.txt")


async def _reap_remote(provisioner, target) -> None:
    try:
        await asyncio.get_running_loop().run_in_executor(None, engines.reap_remote_kernel, provisioner, target)
    except Exception as error:  # noqa: BLE001 - the host may be gone; the shutdown itself succeeded
        log.warn("could not check kernel {pid} on {host}: {error}", pid=target[1], host=target[0], error=error)


async def _remove_engine_leftovers(provisioner, kernel_id: str, errors_file: str | None) -> None:
    try:
        removed = await asyncio.get_running_loop().run_in_executor(
            None, engines.remove_engine_leftovers, provisioner, kernel_id)
    except Exception as error:  # noqa: BLE001 - the engine may be down; say so, the start failed anyway
        log.warn("could not check the engine for kernel {id}'s containers: {error}", id=kernel_id, error=error)
        return
    finally:
        engines.read_launch_errors(errors_file)  # what a late launcher wrote: removed with the rest
    if removed:
        log.info("removed {names} left by kernel {id}'s failed start", names=", ".join(removed), id=kernel_id)


async def _cleanup_quietly(manager: AsyncKernelManager) -> None:
    try:
        if manager.has_kernel:
            await manager.shutdown_kernel(now=True)
        else:
            await manager.cleanup_resources()
    except Exception:  # noqa: BLE001
        log.failure("cleanup after failed launch")
