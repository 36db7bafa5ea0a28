"""Connection files in the Jupyter runtime directory, as jupyter_server writes them.

Kernels jkg launches get ``kernel-<id>.json`` in ``jupyter --runtime-dir``
(mode 0600: it holds the signing key), where ``jupyter console --existing``
and other tools look, instead of jupyter_client's default ``tmpXXXX.json`` in
the system temp directory.  Each file carries :data:`GATEWAY_PID_KEY`, the pid
of the gateway that wrote it, so that a later gateway can tell its own
leftovers (after a SIGKILL) from files other tools own.  Blocking file work:
call these from a thread.
"""
from __future__ import annotations

import json
import os
import re
import socket

from ..procfs import pid_alive

GATEWAY_PID_KEY = "jkg_gateway_pid"
_KERNEL_FILE = re.compile(r"kernel-[0-9a-fA-F-]{1,64}\.json\Z")


def runtime_dir() -> str:
    """The Jupyter runtime directory (``$JUPYTER_RUNTIME_DIR`` or the platform default)."""
    from jupyter_core.paths import jupyter_runtime_dir

    return jupyter_runtime_dir()


def connection_file_path(kernel_id: str, directory: str | None = None) -> str:
    return os.path.join(directory or runtime_dir(), f"kernel-{kernel_id}.json")


def remove_connection_file(kernel_id: str, directory: str | None = None) -> None:
    """Remove the kernel's file if it is there (shutdown of a kernel jkg launched)."""
    try:
        os.unlink(connection_file_path(kernel_id, directory))
    except FileNotFoundError:
        pass


def written_by(path: str) -> int | None:
    """The pid of the jkg that wrote ``path``, or None for anyone else's file."""
    try:
        with open(path, encoding="utf-8") as handle:
            info = json.load(handle)
    except (OSError, ValueError):
        return None
    pid = info.get(GATEWAY_PID_KEY) if isinstance(info, dict) else None
    return pid if isinstance(pid, int) and not isinstance(pid, bool) else None


def _kernel_answers(path: str) -> bool:
    """Whether something still listens on the kernel's heartbeat port (or ipc socket)."""
    try:
        with open(path, encoding="utf-8") as handle:
            info = json.load(handle)
        if info.get("transport", "tcp") == "ipc":
            return os.path.exists(f"{info['ip']}-{info['hb_port']}")
        with socket.create_connection((info["ip"], int(info["hb_port"])), timeout=0.5):
            return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def remove_stale_files(live_ids, directory: str | None = None) -> list[str]:
    """Remove connection files a dead jkg left behind for kernels that are gone.

    A file is stale when a jkg wrote it, that jkg is no longer running, the
    kernel is not one this gateway serves (``live_ids``, e.g. reattached) and
    nothing answers on its heartbeat port.  Returns the removed paths.
    """
    directory = directory or runtime_dir()
    try:
        names = [name for name in os.listdir(directory) if _KERNEL_FILE.match(name)]
    except OSError:
        return []
    removed = []
    for name in names:
        path = os.path.join(directory, name)
        if name[len("kernel-"):-len(".json")] in live_ids:
            continue
        writer = written_by(path)
        if writer is None or writer == os.getpid() or pid_alive(writer) or _kernel_answers(path):
            continue
        try:
            os.unlink(path)
        except OSError:
            continue
        removed.append(path)
    return removed
