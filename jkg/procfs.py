"""What Linux's ``/proc`` says about a process: the one module that reads it.

Start times (clock ticks since boot, field 22 of ``/proc/PID/stat``) tell a
process apart from a later one that reuses its pid; a zombie counts as gone.
Every function here blocks on file reads of the kernel's in-memory files
(cheap, but :func:`process_naming_file` walks every process: call it off
the reactor).
"""
from __future__ import annotations

import os
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, to tell a reused pid apart."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields is not None else None
    except (ValueError, IndexError):
        return None


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, given ``start_time``, is still that process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, but not ours to signal
    fields = _stat_fields(pid)
    if fields is not None and fields and fields[0] == "Z":
        return False
    return start_time is None or process_start_time(pid) == start_time


def process_identity(pid: int) -> tuple[int, tuple[int, int]] | None:
    """``(start time, network namespace id)`` of a live process; None if it is gone or a zombie."""
    fields = _stat_fields(pid)
    try:
        netns = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    if not fields or fields[0] == "Z" or len(fields) < 20:
        return None
    return int(fields[19]), (netns.st_dev, netns.st_ino)


def process_naming_file(path: str) -> int | None:
    """The pid of the one process whose arguments name exactly the file ``path``.

    Relative arguments are resolved against that process's working
    directory; when no process or more than one matches, the pid is unknown
    and the caller has to do without it.
    """
    target = os.path.realpath(path)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")[1:]
            if not any(os.path.basename(target).encode() in argument for argument in arguments):
                continue
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        for argument in arguments:
            text = argument.decode("utf-8", "replace")
            if text and os.path.realpath(os.path.join(cwd, text)) == target:
                found.append(int(entry.name))
                break
    return found[0] if len(found) == 1 else None


def listening_ports(pid: int) -> set[int]:
    """TCP ports ``pid`` itself listens on: its socket descriptors matched with its namespace's tables.

    ``/proc/PID/net/tcp*`` lists every socket of the network namespace; only
    the inodes found among ``/proc/PID/fd`` are this process's own.
    """
    owned = {target[8:-1] for _, target in _descriptors(pid) if target.startswith("socket:[")}
    if not owned:
        return set()
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}", encoding="ascii") as handle:
                next(handle, None)
                for line in handle:
                    fields = line.split()
                    if len(fields) > 9 and fields[3] == "0A" and fields[9] in owned:  # 0A: LISTEN
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except (OSError, ValueError):
            continue
    return ports


def reopen_descriptor(fd: int, flags: int) -> int:
    """A new open file description of what this process's ``fd`` refers to, opened with ``flags``.

    For a pipe this is the one way to get an end that both reads and writes:
    Linux opens ``/proc/self/fd/N`` of a pipe as it opens a FIFO.
    """
    return os.open(f"/proc/self/fd/{fd}", flags | os.O_CLOEXEC)


def open_pipe_of(pid: int, inode: int, flags: int) -> int | None:
    """Open the pipe ``pipe:[inode]`` that process ``pid`` holds, or None when it holds no such pipe.

    The inode names one pipe for its whole life, so a process cannot pass
    another file off as it; the caller has already checked that ``pid`` is
    the process it means (its start time).
    """
    wanted = f"pipe:[{int(inode)}]"
    for path, target in _descriptors(pid):
        if target == wanted:
            try:
                return os.open(path, flags | os.O_CLOEXEC)
            except OSError:
                return None
    return None


def _descriptors(pid: int):
    """``(path, target)`` of each of ``pid``'s open descriptors (``socket:[N]``, ``pipe:[N]``, a file's path)."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return
    for name in names:
        path = f"/proc/{pid}/fd/{name}"
        try:
            yield path, os.readlink(path)
        except OSError:
            continue


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (for a sandbox's bwrap: PID 1 of its namespace)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
            return [int(child) for child in handle.read().split()]
    except (OSError, ValueError):
        return []


def cgroup_v1_location(controller: str) -> tuple[str, str] | None:
    """(mount point, this process's cgroup path) of a cgroup v1 controller, or None."""
    mount = None
    try:
        with open("/proc/self/mounts", encoding="utf-8") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) > 3 and parts[2] == "cgroup" and controller in parts[3].split(","):
                    mount = parts[1]
                    break
        with open("/proc/self/cgroup", encoding="utf-8") as handle:
            for line in handle:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controller in controllers.split(","):
                    return (mount, path) if mount else None
    except (OSError, ValueError):
        return None
    return None
