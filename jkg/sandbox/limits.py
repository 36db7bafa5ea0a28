"""Resource limits for one kernel: cgroups where the host lets us make them, rlimits otherwise.

Memory and process counts are limits on the whole sandbox only with cgroups
(a memory cgroup's OOM killer ends the kernel, and the kill is counted, so the
gateway can say why it died; a pids cgroup stops a fork bomb).  Without them
``RLIMIT_AS`` and ``RLIMIT_NPROC`` stand in: per process, and NPROC per uid.
CPU time and open files are rlimits in every case (per process).

The kernel joins its cgroups and takes its rlimits in a pre-exec function run
in the forked child before ``bwrap`` is executed: no window in which it runs
unlimited, and no shell.  Blocking file work: call from a thread, or at launch
(a handful of small writes).
"""
from __future__ import annotations

import os
import resource
from dataclasses import dataclass

from ..procfs import cgroup_v1_location
from .settings import Limits

_ROOT = "/sys/fs/cgroup"


class Cgroups:
    """Where this gateway makes per-kernel cgroups; :meth:`detect` says which controllers work."""

    def __init__(self, version: int, bases: dict[str, str]):
        self.version = version
        self.bases = bases  # controller -> directory holding one child per kernel

    @property
    def controllers(self) -> tuple[str, ...]:
        return tuple(sorted(self.bases))

    def describe(self) -> str:
        return f"cgroup v{self.version} ({', '.join(self.controllers)})"

    @classmethod
    def detect(cls, tag: str) -> "Cgroups | None":
        """Make our parent cgroups, or None where the host does not let us."""
        if os.path.exists(os.path.join(_ROOT, "cgroup.controllers")):
            return cls._detect_v2(tag)
        bases = {}
        for controller in ("memory", "pids"):
            found = cgroup_v1_location(controller)
            if found is None:
                continue
            base = os.path.join(found[0], found[1].lstrip("/"), tag)
            _remove_stale_siblings(base)
            try:
                os.makedirs(base, exist_ok=True)
                probe = os.path.join(base, "probe")
                os.mkdir(probe)
                os.rmdir(probe)
            except OSError:
                continue
            bases[controller] = base
        return cls(1, bases) if bases else None

    @classmethod
    def _detect_v2(cls, tag: str) -> "Cgroups | None":
        base = os.path.join(_ROOT, tag)
        _remove_stale_siblings(base)
        try:
            with open(os.path.join(_ROOT, "cgroup.controllers"), encoding="ascii") as handle:
                available = set(handle.read().split())
            wanted = [c for c in ("memory", "pids") if c in available]
            if not wanted:
                return None
            os.makedirs(base, exist_ok=True)
            for folder in (_ROOT, base):
                with open(os.path.join(folder, "cgroup.subtree_control"), "w", encoding="ascii") as handle:
                    handle.write(" ".join("+" + c for c in wanted))
        except OSError:
            return None
        return cls(2, {c: base for c in wanted})

    def create(self, kernel_id: str, limits: Limits) -> "KernelCgroup":
        made = []
        try:
            for controller, base in sorted(self.bases.items()):
                path = os.path.join(base, kernel_id)
                if path not in made:
                    os.makedirs(path, exist_ok=True)
                    made.append(path)
                if controller == "memory" and limits.memory is not None:
                    if self.version == 1:
                        _write(path, "memory.limit_in_bytes", limits.memory)
                        if os.path.exists(os.path.join(path, "memory.memsw.limit_in_bytes")):
                            _write(path, "memory.memsw.limit_in_bytes", limits.memory)
                    else:
                        _write(path, "memory.max", limits.memory)
                        _write(path, "memory.swap.max", 0, optional=True)
                if controller == "pids" and limits.processes is not None:
                    _write(path, "pids.max", limits.processes)
        except OSError:
            KernelCgroup(self.version, made).remove()
            raise
        return KernelCgroup(self.version, made)

    def remove_base(self) -> None:
        for base in set(self.bases.values()):
            try:
                os.rmdir(base)
            except OSError:
                pass


def _remove_stale_siblings(base: str) -> None:
    """Empty ``jkg-<pid>`` cgroups of gateways that are gone (killed, or failed after startup)."""
    parent = os.path.dirname(base)
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        prefix, _, pid = name.partition("-")
        if prefix == "jkg" and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                os.rmdir(os.path.join(parent, name))  # fails, as it should, while kernels remain inside
            except OSError:
                pass


def _write(folder: str, name: str, value, optional: bool = False) -> None:
    try:
        with open(os.path.join(folder, name), "w", encoding="ascii") as handle:
            handle.write(str(value))
    except OSError:
        if not optional:
            raise


@dataclass
class KernelCgroup:
    """The cgroup directories of one kernel."""

    version: int
    paths: list

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(path, "cgroup.procs") for path in self.paths]

    def oom_kills(self) -> int:
        """How many processes the memory limit killed."""
        for path in self.paths:
            name = "memory.oom_control" if self.version == 1 else "memory.events"
            try:
                with open(os.path.join(path, name), encoding="ascii") as handle:
                    for line in handle:
                        key, _, value = line.partition(" ")
                        if key == "oom_kill":
                            return int(value)
            except (OSError, ValueError):
                continue
        return 0

    def pids(self) -> set[int]:
        found = set()
        for path in self.procs_files:
            try:
                with open(path, encoding="ascii") as handle:
                    found.update(int(line) for line in handle if line.strip())
            except (OSError, ValueError):
                pass
        return found

    def remove(self) -> None:
        """Kill what is left inside, then remove the directories (best effort)."""
        for pid in self.pids():
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        for path in self.paths:
            try:
                os.rmdir(path)
            except OSError:
                pass


def rlimits_for(limits: Limits, cgroup_controllers=()) -> list[tuple[int, int]]:
    """The rlimits to set: everything cgroups do not cover."""
    pairs = []
    if limits.cpu_time is not None:
        pairs.append((resource.RLIMIT_CPU, limits.cpu_time))
    if limits.open_files is not None:
        pairs.append((resource.RLIMIT_NOFILE, limits.open_files))
    if limits.memory is not None and "memory" not in cgroup_controllers:
        pairs.append((resource.RLIMIT_AS, limits.memory))
    if limits.processes is not None and "pids" not in cgroup_controllers:
        pairs.append((resource.RLIMIT_NPROC, limits.processes))
    return pairs


def describe_enforcement(limits: Limits, cgroups: Cgroups | None) -> str:
    """One phrase for the log: which mechanism holds which limit."""
    controllers = cgroups.controllers if cgroups else ()
    by_cgroup = [key for key, ctrl in (("memory", "memory"), ("processes", "pids"))
                 if getattr(limits, key) is not None and ctrl in controllers]
    by_rlimit = [key for key in ("memory", "processes", "cpu_time", "open_files")
                 if getattr(limits, key) is not None and key not in by_cgroup]
    parts = []
    if by_cgroup:
        parts.append(f"{', '.join(by_cgroup)} by {cgroups.describe()}")
    if by_rlimit:
        parts.append(f"{', '.join(by_rlimit)} by rlimit")
    if limits.disk is not None:
        parts.append("disk by a size-limited tmpfs workspace")
    return "; ".join(parts) or "no limits"


def make_preexec(procs_files: list[str], rlimits: list[tuple[int, int]]):
    """A function for ``Popen(preexec_fn=...)``: join the cgroups, then lower the rlimits.

    It only makes system calls on values prepared here (no imports, no
    locks), which is what is safe between fork and exec.
    """
    encoded = [path.encode() for path in procs_files]

    def enter():
        for path in encoded:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        for which, value in rlimits:
            resource.setrlimit(which, (value, value))

    return enter
