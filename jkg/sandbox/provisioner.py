"""The sandboxed provisioner: jupyter_client's LocalProvisioner, launched inside bwrap.

Why a provisioner subclass and not a wrapped kernelspec argv: jupyter_client
writes the connection file, formats the command and restarts kernels inside
its provisioner, and only the provisioner sees all three.  Subclassing
``LocalProvisioner`` keeps everything it does (ports, connection file, Popen,
polling, signals) and adds, at the same points: switching to the ``ipc``
transport where the kernel has no network, making the workspace, ipc
directory and cgroups, handing the connection file to the kernel's uid,
wrapping the command with :func:`jkg.sandbox.argv.bwrap_argv`, a pre-exec
function for limits, killing the whole PID namespace, and removing
everything on cleanup.  The launcher sets it on the kernel manager before
``start_kernel`` (jupyter_client only makes a provisioner when none is set),
and only for kernelspecs that name no provisioner of their own: a container
or remote provisioner is its own sandbox.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass, field

from jupyter_client.provisioning import LocalProvisioner
from twisted.logger import Logger

from ..procfs import children
from .argv import SandboxPlan, bwrap_argv
from .host import HostSupport
from .limits import Cgroups, KernelCgroup, describe_enforcement, make_preexec, rlimits_for
from .seccomp import SeccompUnavailable, host_network_filter
from .settings import SandboxProfile
from .workspace import SandboxError, Workspaces, make_private_dir, remove_tree

log = Logger()


@dataclass
class Sandboxes:
    """What every sandboxed kernel of this gateway shares.

    :param kernel_user: (uid, gid) kernels run as when the gateway is root.
    :param hide: gateway paths never shown to kernels (state database, tenants file, ...).
    :param independent: kernels outlive the gateway (``--keep-kernels-on-exit``): no --die-with-parent.
    """

    host: HostSupport
    workspaces: Workspaces
    ipc_root: str
    kernel_user: tuple[int, int] | None
    cgroups: Cgroups | None = None
    hide: tuple[str, ...] = ()
    expose: tuple[str, ...] = ()
    independent: bool = False
    _told: set = field(default_factory=set)

    def identity(self, profile: SandboxProfile) -> tuple[int | None, int | None]:
        """The uid/gid a kernel runs as (None: the gateway's own); refuses root unless allowed."""
        root = os.geteuid() == 0
        if profile.uid is not None:
            uid, gid = profile.uid, profile.gid if profile.gid is not None else profile.uid
        elif root:
            uid, gid = self.kernel_user if self.kernel_user else (0, 0)
        else:
            return None, None  # an unprivileged gateway: kernels keep its uid, inside a user namespace
        if not root:
            if uid != os.geteuid():
                raise SandboxError(f"only root can run kernels as uid {uid}")
            return None, None
        if uid == 0:
            if not profile.allow_root:
                raise SandboxError("kernels may not run as root "
                                   "(configure --kernel-user, or allow_root for the tenant)")
            return None, None
        return uid, gid

    def install(self, manager, kernel_id: str, profile: SandboxProfile) -> bool:
        """Give ``manager`` a sandboxed provisioner; False when its kernelspec has its own provisioner."""
        if not self.host.available:
            raise SandboxError(f"no sandbox available: {self.host.problem}")
        spec = manager.kernel_spec
        named = (spec.metadata or {}).get("kernel_provisioner", {}).get("provisioner_name", "local-provisioner")
        if named != "local-provisioner":
            if named not in self._told:
                self._told.add(named)
                log.info("kernelspecs with provisioner {name} are not put in bwrap (the provisioner isolates them)",
                         name=named)
            return False
        uid, gid = self.identity(profile)
        if profile.network == "none":
            try:
                host_network_filter()  # refused here, before anything is made, where no filter is known
            except SeccompUnavailable as error:
                raise SandboxError(str(error)) from None
        spec.interrupt_mode = "message"  # signals cannot cross into the sandbox's session
        provisioner = SandboxedProvisioner(kernel_id=kernel_id, kernel_spec=spec, parent=manager)
        provisioner.setup(self, profile, uid, gid)
        manager.provisioner = provisioner
        if profile.limits.any and ("limits", profile.limits) not in self._told:
            self._told.add(("limits", profile.limits))
            log.info("sandbox limits {limits}: {how}", limits=profile.limits,
                     how=describe_enforcement(profile.limits, self.cgroups))
        return True


def _interpreter_paths() -> tuple[str, ...]:
    """The gateway's Python (kernels usually run it) and where its packages live."""
    import site

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(p for p in site.getsitepackages() if os.path.isdir(p))
    return tuple(sorted(os.path.realpath(p) for p in paths))


class SandboxedProvisioner(LocalProvisioner):
    """A :class:`LocalProvisioner` whose kernel runs in bwrap (see the module docstring)."""

    def setup(self, sandboxes: Sandboxes, profile: SandboxProfile, uid, gid) -> None:
        self.sandboxes, self.profile, self.uid, self.gid = sandboxes, profile, uid, gid
        self.workspace = self.ipc_dir = None
        self.cgroup: KernelCgroup | None = None
        self.oom_baseline = 0
        self.seccomp_fd: int | None = None

    # -- launching -------------------------------------------------------------
    async def pre_launch(self, **kwargs):
        km = self.parent
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._prepare)
        except (OSError, ValueError) as error:
            raise SandboxError(f"cannot prepare the sandbox: {error}") from None
        if self.ipc_dir is not None:
            km.transport = "ipc"
            km.ip = os.path.join(self.ipc_dir, "kernel")
        # JPY_PARENT_PID would mean nothing in the kernel's PID namespace (ipykernel would think its
        # parent died): bwrap's --die-with-parent ties the kernel to the gateway instead.
        kwargs["independent"] = True
        kwargs = await super().pre_launch(**kwargs)
        if self.uid is not None:
            os.chown(km.connection_file, self.uid, self.gid)
        sandboxes, profile = self.sandboxes, self.profile
        hide = (*sandboxes.hide, os.path.dirname(os.path.abspath(km.connection_file)), sandboxes.workspaces.root,
                sandboxes.ipc_root)
        plan = SandboxPlan(
            bwrap=sandboxes.host.bwrap, command=tuple(kwargs["cmd"]),
            connection_file=os.path.abspath(km.connection_file),
            workspace=self.workspace, workspace_size=profile.limits.disk, ipc_dir=self.ipc_dir,
            hide=hide, expose=(*_interpreter_paths(), *sandboxes.expose, *self._command_paths(kwargs["cmd"])),
            network=profile.network, die_with_parent=not sandboxes.independent,
            setpriv=sandboxes.host.setpriv, uid=self.uid, gid=self.gid, seccomp_fd=self._seccomp_program())
        kwargs["cmd"] = bwrap_argv(plan)
        if self.seccomp_fd is not None:
            kwargs["pass_fds"] = (self.seccomp_fd,)
        controllers = sandboxes.cgroups.controllers if sandboxes.cgroups and self.cgroup else ()
        rlimits = rlimits_for(profile.limits, controllers)
        if self.cgroup is not None or rlimits:  # else leave Popen its fast vfork path
            kwargs["preexec_fn"] = make_preexec(self.cgroup.procs_files if self.cgroup else [], rlimits)
        return kwargs

    def _prepare(self) -> None:
        """Make the workspace, ipc directory and cgroups (blocking; runs in a thread)."""
        sandboxes, profile = self.sandboxes, self.profile
        if self.workspace is None and profile.limits.disk is None:
            self.workspace = sandboxes.workspaces.create(self.kernel_id, profile.owner, profile.persist_workspace,
                                                         self.uid, self.gid)
        if self.ipc_dir is None and profile.network != "full":
            self.ipc_dir = make_private_dir(os.path.join(sandboxes.ipc_root, self.kernel_id), self.uid, self.gid)
        if self.cgroup is None and sandboxes.cgroups is not None and \
                (profile.limits.memory is not None or profile.limits.processes is not None):
            self.cgroup = sandboxes.cgroups.create(self.kernel_id, profile.limits)
        if self.cgroup is not None:
            self.oom_baseline = self.cgroup.oom_kills()

    def _seccomp_program(self) -> int | None:
        """A memfd holding the network filter, for bwrap to read (network ``none`` only).

        One per launch: bwrap reads it from its current offset to the end,
        and the gateway's copy is closed as soon as bwrap has started.
        """
        self._close_seccomp()
        if self.profile.network != "none":
            return None
        try:
            program = host_network_filter()
        except SeccompUnavailable as error:
            raise SandboxError(str(error)) from None
        fd = os.memfd_create("jkg-seccomp", os.MFD_CLOEXEC)
        try:
            os.write(fd, program)
            os.lseek(fd, 0, os.SEEK_SET)
        except OSError:
            os.close(fd)
            raise
        self.seccomp_fd = fd
        return fd

    def _close_seccomp(self) -> None:
        if self.seccomp_fd is not None:
            os.close(self.seccomp_fd)
            self.seccomp_fd = None

    async def launch_kernel(self, cmd, **kwargs):
        try:
            return await super().launch_kernel(cmd, **kwargs)
        finally:
            self._close_seccomp()

    @staticmethod
    def _command_paths(cmd) -> list[str]:
        """The kernel's own executable's prefix, when it sits somewhere hidden (e.g. under /root)."""
        executable = cmd[0] if cmd else ""
        if os.path.isabs(executable):
            real = os.path.realpath(executable)
            return [os.path.dirname(os.path.dirname(real))]
        return []

    # -- stopping --------------------------------------------------------------
    def _namespace_init(self) -> int | None:
        """bwrap's child: PID 1 of the kernel's namespace; killing it ends every process inside."""
        pid = getattr(self.process, "pid", None)
        found = children(pid) if pid is not None else []
        return found[0] if found else None

    async def kill(self, restart: bool = False) -> None:
        init = self._namespace_init()
        if init is not None:
            try:
                os.kill(init, signal.SIGKILL)
            except OSError:
                pass
        await super().kill(restart)

    async def terminate(self, restart: bool = False) -> None:
        await self.kill(restart)

    def death_reason(self) -> str:
        """Why the kernel died, when the sandbox knows: the memory limit."""
        if self.cgroup is not None and self.cgroup.oom_kills() > self.oom_baseline:
            limit = self.profile.limits.memory
            return f"killed: out of memory (limit {limit // (1 << 20)} MiB)" if limit else "killed: out of memory"
        return ""

    async def cleanup(self, restart: bool = False) -> None:
        self._close_seccomp()
        await super().cleanup(restart)
        if restart:
            if self.cgroup is not None:
                self.oom_baseline = self.cgroup.oom_kills()
            return
        await asyncio.get_running_loop().run_in_executor(None, self._remove)

    def _remove(self) -> None:
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None
        remove_tree(self.ipc_dir)
        self.ipc_dir = None
        if self.workspace is not None and not self.profile.persist_workspace:
            self.sandboxes.workspaces.remove(self.workspace)
        self.workspace = None

    # -- reattaching -----------------------------------------------------------
    async def get_provisioner_info(self) -> dict:
        info = await super().get_provisioner_info()
        info["sandbox"] = {"workspace": self.workspace if not self.profile.persist_workspace else None,
                           "ipc_dir": self.ipc_dir, "cgroups": list(self.cgroup.paths) if self.cgroup else [],
                           "cgroup_version": self.cgroup.version if self.cgroup else 0}
        return info


def remove_recorded(info: dict) -> None:
    """Remove what a sandboxed kernel of an earlier gateway left (its record's ``sandbox``); blocking."""
    if not info:
        return
    if info.get("cgroups"):
        KernelCgroup(info.get("cgroup_version", 1), list(info["cgroups"])).remove()
    remove_tree(info.get("ipc_dir"))
    workspace = info.get("workspace")
    if workspace and os.path.basename(os.path.dirname(workspace)) == "kernels":  # only a per-kernel one
        remove_tree(workspace)
