"""What /proc says about one process: CPU, RSS, children, and stopping a tree of them.

Gateway CPU is ``utime + stime`` of the gateway process itself (all its
threads, none of its children: the kernels are children) read from
``/proc/PID/stat`` just before and just after the measured window, so it is
exactly what the process spent over that window, in clock ticks (10 ms).
The windows are long enough (>= 1 s) for the tick to be noise.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[bytes]:
    """Fields of ``/proc/PID/stat`` after ``(comm)``: index 0 is field 3 (state)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2:].split()


def cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of one process (all its threads, not its children), in seconds."""
    if not pid:
        return None
    try:
        fields = stat_fields(pid)
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int | None) -> int | None:
    """Resident set size (``VmRSS`` of ``/proc/PID/status``), in bytes."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def alive(pid: int) -> bool:
    try:
        return stat_fields(pid)[0] != b"Z"
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(stat_fields(int(entry))[1]), []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    out, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def listening_pid(port: int, candidates: list[int]) -> int | None:
    """Which of ``candidates`` holds the listening TCP socket on ``port`` (the gateway, not a wrapper)."""
    inodes = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{parts[9]}]")
    for pid in candidates:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return pid
                except OSError:
                    pass
        except OSError:
            pass
    return None


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_tree(proc: subprocess.Popen, grace: float = 8.0) -> None:
    """SIGTERM ``proc``'s process group, then SIGKILL it and every descendant seen
    (kernels sit in sessions of their own, so the group is not enough)."""
    tree = descendants(proc.pid) if proc.poll() is None else []
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            _kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and any(alive(p) for p in tree):
        time.sleep(0.05)
    for pid in tree:
        if alive(pid):
            _kill(pid, signal.SIGKILL)


class CpuWindow:
    """``with CpuWindow(pid) as w: ...`` -- ``w.seconds`` is the process's CPU over exactly the block."""

    def __init__(self, pid: int | None):
        self.pid = pid
        self.seconds: float | None = None

    def __enter__(self):
        self._start = cpu_seconds(self.pid)
        return self

    def __exit__(self, *exc):
        end = cpu_seconds(self.pid)
        if self._start is not None and end is not None:
            self.seconds = end - self._start
        return False
