"""Bridge mode: serving kernels someone else started, found by their connection files.

``--existing PATH`` names connection files; ``--existing-dir DIR`` watches a
runtime directory for ``kernel-*.json`` files, adopting kernels as their
files appear and dropping them when their kernel dies or the file goes.
Connection files are hostile input: every field is validated before use.
"""
from __future__ import annotations

import json
import os
import re
import uuid

from twisted.application.service import Service
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from ..procfs import listening_ports, process_naming_file, process_start_time
from .external import ExternalKernel
from .runtime import written_by

log = Logger()

_KERNEL_FILE = re.compile(r"kernel-(?P<id>[0-9a-fA-F-]{1,64})\.json\Z")
_NAMESPACE = uuid.UUID("5b8e7d7e-4c1a-4f5e-9a7c-6a1f0e9b3d21")
_PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
MAX_FILE_SIZE = 64 * 1024


class ConnectionFileError(ValueError):
    """A connection file that cannot describe a kernel."""


def read_connection_file(path: str) -> dict:
    """Parse and validate a connection file (blocking: call from a thread or at startup)."""
    try:
        if os.path.getsize(path) > MAX_FILE_SIZE:
            raise ConnectionFileError(f"{path} is too large to be a connection file")
        with open(path, encoding="utf-8") as handle:
            info = json.load(handle)
    except OSError as error:
        raise ConnectionFileError(f"cannot read {path}: {error.strerror}") from None
    except ValueError as error:
        raise ConnectionFileError(f"{path} is not JSON: {error}") from None
    if not isinstance(info, dict):
        raise ConnectionFileError(f"{path} is not a JSON object")
    if info.get("transport", "tcp") not in ("tcp", "ipc"):
        raise ConnectionFileError(f"{path}: unsupported transport {info.get('transport')!r}")
    if not isinstance(info.get("ip"), str) or not re.fullmatch(r"[\w.:\-/]{1,255}", info["ip"]):
        raise ConnectionFileError(f"{path}: bad ip")
    for port in _PORTS:
        value = info.get(port)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
            raise ConnectionFileError(f"{path}: bad {port}")
    if not isinstance(info.get("key", ""), str):
        raise ConnectionFileError(f"{path}: bad key")
    if info.get("signature_scheme", "hmac-sha256") not in ("hmac-sha256", "hmac-sha512", "hmac-md5"):
        raise ConnectionFileError(f"{path}: unsupported signature scheme")
    return {key: info[key] for key in ("transport", "ip", *_PORTS, "key", "signature_scheme", "kernel_name")
            if key in info}


def kernel_id_for(path: str) -> str:
    """``kernel-<id>.json`` keeps its id; any other file gets a stable id derived from its path."""
    match = _KERNEL_FILE.match(os.path.basename(path))
    if match:
        try:
            return str(uuid.UUID(match.group("id")))
        except ValueError:
            pass
    return str(uuid.uuid5(_NAMESPACE, os.path.abspath(path)))


def kernel_process(path: str, info: dict) -> int | None:
    """The pid of the kernel behind a connection file, or None when it cannot be confirmed (blocking).

    Naming the file on its command line is not enough (any process can, and
    signals for the kernel would reach a bystander): the process must also
    listen on every TCP port of the connection file itself.
    """
    pid = process_naming_file(path)
    if pid is None:
        return None
    ports = {info[key] for key in _PORTS if isinstance(info.get(key), int)}
    if info.get("transport", "tcp") != "tcp" or not ports or not ports <= listening_ports(pid):
        return None
    return pid


def describe(path: str) -> dict:
    """Everything needed to adopt the kernel behind a connection file (blocking)."""
    info = read_connection_file(path)
    pid = kernel_process(path, info)
    return {"path": path, "id": kernel_id_for(path), "info": info, "pid": pid,
            "start_time": process_start_time(pid) if pid else None, "writer": written_by(path)}


class ExistingKernels(Service):
    """Adopts kernels from connection files into the registry, and drops them when they go.

    :param own: ``--own-existing``: DELETE and gateway shutdown stop these
        kernels; otherwise they are only detached and keep running.
    """

    name = "existing-kernels"

    def __init__(self, registry, clock, paths=(), directory: str = "", own: bool = False, interval: float = 2.0):
        self.registry = registry
        self.paths = list(paths)
        self.directory = directory
        self.own = own
        self._clock = clock
        self._adopted: dict[str, str] = {}  # path -> kernel id
        self._ignored: set[str] = set()
        self._scan_loop = LoopingCall(self.scan)
        self._scan_loop.clock = clock
        self._interval = interval

    def startService(self):  # noqa: N802 - Twisted API
        super().startService()
        self._clock.callLater(0, self._scan_loop.start, self._interval, True)

    def stopService(self):  # noqa: N802 - Twisted API
        if self._scan_loop.running:
            self._scan_loop.stop()
        return super().stopService()

    def _candidates(self) -> list[str]:
        found = list(self.paths)
        if self.directory:
            try:
                found += [os.path.join(self.directory, name) for name in sorted(os.listdir(self.directory))
                          if _KERNEL_FILE.match(name)]
            except OSError as error:
                log.warn("cannot list {dir}: {error}", dir=self.directory, error=error)
        return found

    @inlineCallbacks
    def scan(self):
        candidates = yield deferToThread(self._candidates)
        for path, kernel_id in list(self._adopted.items()):
            if kernel_id not in self.registry.kernels:
                del self._adopted[path]  # deleted (detached) by a client: do not adopt it again
                self._ignored.add(path)
            elif path not in candidates:
                log.info("connection file {path} is gone; dropping kernel {id}", path=path, id=kernel_id)
                del self._adopted[path]
                self.registry.drop(kernel_id, "kernel connection file removed")
        for path in candidates:
            if path in self._adopted or path in self._ignored:
                continue
            try:
                details = yield deferToThread(describe, path)
            except ConnectionFileError as error:
                log.warn("ignoring {path}: {error}", path=path, error=error)
                self._ignored.add(path)
                continue
            if details["id"] in self.registry.kernels or details["writer"] == os.getpid():
                continue  # already served, or a kernel this gateway is launching
            self._adopted[path] = details["id"]
            try:
                yield self._adopt(details)
            except Exception as error:  # noqa: BLE001 - a kernel that does not answer is skipped
                log.warn("could not adopt kernel from {path}: {error}", path=path, error=error)
                del self._adopted[path]
                if path in self.paths:
                    self._ignored.add(path)

    @inlineCallbacks
    def _adopt(self, details: dict):
        info = details["info"]
        launched = ExternalKernel(info, self._clock, details["pid"], details["start_time"],
                                  interrupt_mode="signal" if details["pid"] else "message", owned=self.own)
        name = info.get("kernel_name") or "python3"
        yield self.registry.adopt(details["id"], name, launched, source=details["path"])
        if launched.pid is None:
            # the file may have appeared before its kernel process: now that it answers, look again
            pid = yield deferToThread(kernel_process, details["path"], info)
            if pid is not None:
                launched.pid, launched.start_time = pid, process_start_time(pid)
                launched.interrupt_mode = "signal"
        log.info("existing kernel {id}: pid {pid}", id=details["id"], pid=launched.pid or "unknown")
