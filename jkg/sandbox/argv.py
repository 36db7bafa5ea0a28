"""The bubblewrap command line for one kernel: a pure function of a :class:`SandboxPlan`.

The view is built by subtraction, then addition: the whole system read-only
(``--ro-bind / /``), fresh ``/dev``, ``/proc`` (of the kernel's own PID
namespace, so no gateway and no other kernel is listed) and private
``/tmp``; then an empty tmpfs over every directory that holds something of
the gateway's or of other tenants (home directories, the runtime directory
with every connection file and the state database, the tenants file's
directory, all workspaces, ...); then read-only binds of what the kernel
needs from under those (its interpreter's prefix, its own connection file)
and read-write binds of its own workspace and ipc directory.  Nothing else
of the host is writable.

The identity change happens last, inside the namespaces: when the gateway
runs as root, bwrap (root) builds the mounts and ``setpriv`` drops to the
kernel's uid/gid with no supplementary groups, no capabilities (bounding set
cleared) and ``no_new_privs``, so nothing inside can regain root.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

WORKSPACE = "/home/kernel"  # the kernel's cwd and $HOME, the same for every kernel
ALWAYS_HIDDEN = ("/tmp", "/var/tmp", "/run", "/home", "/root", "/dev/shm", "/var/run", "/srv", "/mnt", "/media")
SHARED_TMP = frozenset({"/tmp", "/var/tmp", "/dev/shm"})
NEVER_HIDDEN = frozenset({"/", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/opt", "/var", "/proc", "/sys",
                          "/dev"})


@dataclass(frozen=True)
class SandboxPlan:
    """Everything the command line depends on (host paths are absolute)."""

    bwrap: str
    command: tuple[str, ...]
    connection_file: str
    workspace: str | None = None          # host directory bound at WORKSPACE; None: a tmpfs of workspace_size
    workspace_size: int | None = None
    ipc_dir: str | None = None            # host directory bound at the same path (ipc transport)
    hide: tuple[str, ...] = ()            # directories replaced by empty tmpfs (besides ALWAYS_HIDDEN)
    expose: tuple[str, ...] = ()          # host paths bound read-only at the same path again
    network: str = "full"                 # full | loopback | none
    die_with_parent: bool = True
    setpriv: str | None = None            # drop to uid/gid with this tool (the gateway is root)
    uid: int | None = None
    gid: int | None = None
    seccomp_fd: int | None = None         # a BPF program for --seccomp
    extra_env: tuple = field(default=())  # ((name, value), ...) set inside


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def hidden_dirs(plan: SandboxPlan) -> list[str]:
    """The tmpfs mounts, outermost first, without ones nested in another or that would hide the system."""
    candidates = []
    for path in (*ALWAYS_HIDDEN, *plan.hide):
        path = os.path.normpath(path)
        if path in NEVER_HIDDEN or not os.path.isabs(path):
            continue
        if os.path.islink(path) or (path not in ALWAYS_HIDDEN and not os.path.isdir(path)):
            continue  # a symlink (/var/run -> /run) is hidden through its target
        if path in ALWAYS_HIDDEN and not os.path.isdir(path):
            continue
        candidates.append(path)
    candidates.sort(key=lambda p: (p.count("/"), p))
    kept: list[str] = []
    for path in candidates:
        if not any(_inside(path, outer) for outer in kept):
            kept.append(path)
    return kept


def _traversable_parents(path: str, hidden: list[str], made: set[str]) -> list[str]:
    """``--dir`` for each directory between a hidden tmpfs and ``path``, searchable by any uid.

    bwrap would otherwise make them 0700 root, and a kernel running as
    another uid could not reach the file bound below them.
    """
    outer = next((folder for folder in hidden if _inside(path, folder) and path != folder), None)
    if outer is None:
        return []
    args = []
    parent = os.path.dirname(path)
    chain = []
    while parent != outer and _inside(parent, outer):
        chain.append(parent)
        parent = os.path.dirname(parent)
    for folder in reversed(chain):
        if folder not in made:
            made.add(folder)
            args += ["--perms", "0755", "--dir", folder]
    return args


def bwrap_argv(plan: SandboxPlan) -> list[str]:
    """The full argv: ``bwrap <walls> -- [setpriv <drop> --] <kernel command>``."""
    argv = [plan.bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if plan.network != "full":
        argv.append("--unshare-net")  # only the sandbox's own loopback: reached over ipc
    if plan.die_with_parent:
        argv.append("--die-with-parent")
    argv += ["--new-session", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    hidden = hidden_dirs(plan)
    for path in hidden:
        argv += ["--perms", "1777" if path in SHARED_TMP else "0755", "--tmpfs", path]
    made: set[str] = set()
    for path in sorted(set(plan.expose), key=lambda p: (p.count("/"), p)):
        if any(_inside(path, folder) for folder in hidden) and os.path.exists(path):
            argv += _traversable_parents(path, hidden, made) + ["--ro-bind", path, path]
    argv += _traversable_parents(plan.connection_file, hidden, made)
    argv += ["--ro-bind", plan.connection_file, plan.connection_file]
    if plan.ipc_dir is not None:
        argv += _traversable_parents(plan.ipc_dir, hidden, made) + ["--bind", plan.ipc_dir, plan.ipc_dir]
    if plan.workspace is not None:
        argv += ["--bind", plan.workspace, WORKSPACE]
    else:
        if plan.workspace_size is not None:
            argv += ["--size", str(plan.workspace_size)]
        # made by bwrap (root, when the kernel runs as another uid): the kernel's uid must write there
        argv += ["--perms", "1777" if plan.uid is not None else "0700", "--tmpfs", WORKSPACE]
    argv += ["--chdir", WORKSPACE, "--setenv", "HOME", WORKSPACE]
    for name, value in plan.extra_env:
        argv += ["--setenv", name, value]
    if plan.seccomp_fd is not None:
        argv += ["--seccomp", str(plan.seccomp_fd)]
    argv.append("--")
    if plan.uid is not None and plan.setpriv:
        gid = plan.gid if plan.gid is not None else plan.uid
        argv += [plan.setpriv, f"--reuid={plan.uid}", f"--regid={gid}", "--clear-groups", "--no-new-privs",
                 "--bounding-set=-all", "--inh-caps=-all", "--"]
    argv += list(plan.command)
    return argv
