"""The things measured: the direct-ZeroMQ floor, jupyter-kernel-gateway 3.0.1, and jkg.

Every target hands out fresh kernels and opens client connections to them
(see :mod:`_client`).  Gateways run as processes of their own, in their own
process groups; their CPU and RSS are read from /proc of the process holding
the listening socket.  jkg can be started from any source tree -- the
repository itself or a ``git worktree`` of another commit -- so that two
variants of the message path are compared in one run (``--jkg NAME=TREE``).
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import _client
import _kg_venv
import _proc
import requests

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
KG_VERSION = _kg_venv.KG_VERSION
KG_VENV = _kg_venv.KG_VENV


class Unavailable(Exception):
    """A target could not be started; it is skipped."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_LIVE: list = []  # targets to stop at exit, whatever happens


def _stop_all() -> None:
    for target in _LIVE:
        try:
            target.stop()
        except Exception as e:  # noqa: BLE001
            log(f"[{target.name}] stop failed: {e!r}")


atexit.register(_stop_all)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


class Direct:
    """jupyter_client starts ipykernels; the clients speak ZeroMQ to them (the floor)."""

    name = "direct"
    pid = None  # no gateway

    def __init__(self, logdir: Path, kernel_name: str = "python3"):
        self.logfile = logdir / "direct-kernels.log"
        self.kernel_name = kernel_name
        self.managers: dict = {}

    def start(self) -> None:
        _LIVE.append(self)

    def new_kernel(self) -> str:
        from jupyter_client import KernelManager

        km = KernelManager(kernel_name=self.kernel_name)
        with open(self.logfile, "ab") as out:
            km.start_kernel(stdout=out, stderr=subprocess.STDOUT, cwd=str(self.logfile.parent))
        kid = uuid.uuid4().hex
        self.managers[kid] = km
        return kid

    def delete_kernel(self, kid: str) -> None:
        km = self.managers.pop(kid, None)
        if km is not None:
            km.shutdown_kernel(now=True)

    async def connect(self, kid: str, fmt: str) -> _client.ZMQClient:
        return _client.ZMQClient(self.managers[kid].get_connection_info())

    async def listener(self, kid: str, fmt: str) -> _client.ZMQClient:
        """A client that only listens to iopub (fan-out)."""
        return _client.ZMQClient(self.managers[kid].get_connection_info(), iopub_only=True)

    def connections(self, kid: str) -> int | None:
        return None

    def alive(self) -> bool:
        return True

    def stop(self) -> None:
        for kid in list(self.managers):
            try:
                self.delete_kernel(kid)
            except Exception:  # noqa: BLE001, S110 - stopping is best effort
                pass
        if self in _LIVE:
            _LIVE.remove(self)


class Gateway:
    """A gateway process speaking the Jupyter kernels REST + WebSocket protocol."""

    def __init__(self, name: str, cmd: list[str], env: dict, cwd: str, port: int, logdir: Path,
                 kernel_name: str = "python3", startup_timeout: float = 60, ready_path: str = "/api/kernelspecs",
                 tls=None):
        self.name, self.cmd, self.env, self.cwd, self.port = name, cmd, env, cwd, port
        self.ready_path = ready_path
        self.kernel_name = kernel_name
        self.startup_timeout = startup_timeout
        self.tls = tls  # an _tls.Certificates: serve https/wss with it
        if tls is not None:
            self.env = dict(env, **tls.env())
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        self.ws_base = f"{'wss' if tls else 'ws'}://127.0.0.1:{port}"
        self.logfile = logdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.http = requests.Session()
        self.http.trust_env = False  # never through a proxy
        if tls is not None:
            self.http.verify = tls.ca

    def start(self) -> None:
        with open(self.logfile, "wb") as out:
            try:
                self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=subprocess.STDOUT, cwd=self.cwd, env=self.env,
                                             start_new_session=True)
            except OSError as e:
                raise Unavailable(f"cannot run {self.cmd[0]}: {e}") from e
        _LIVE.append(self)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise Unavailable(f"exited with {self.proc.returncode}; log:\n{self._tail()}")
            try:
                if self.http.get(self.base + self.ready_path, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise Unavailable(f"no answer on port {self.port}; log:\n{self._tail()}")
            time.sleep(0.2)
        candidates = [self.proc.pid] + _proc.descendants(self.proc.pid)
        self.pid = _proc.listening_pid(self.port, candidates) or self.proc.pid
        log(f"[{self.name}] up on port {self.port}, pid {self.pid}: {_proc.cmdline(self.pid)[:90]}")

    def _tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def new_kernel(self) -> str:
        r = self.http.post(self.base + "/api/kernels", json={"name": self.kernel_name}, timeout=90)
        if r.status_code not in (200, 201):
            raise RuntimeError(f"POST /api/kernels -> {r.status_code}: {r.text[:200]}")
        return r.json()["id"]

    def delete_kernel(self, kid: str) -> None:
        try:
            self.http.delete(f"{self.base}/api/kernels/{kid}", timeout=30)
        except requests.RequestException as e:
            log(f"[{self.name}] DELETE kernel failed: {e!r}")

    def connections(self, kid: str) -> int | None:
        try:
            r = self.http.get(f"{self.base}/api/kernels/{kid}", timeout=10)
            return r.json().get("connections") if r.status_code == 200 else None
        except (requests.RequestException, ValueError):
            return None

    async def connect(self, kid: str, fmt: str) -> _client.WSClient:
        url = f"{self.ws_base}/api/kernels/{kid}/channels?session_id={uuid.uuid4().hex}"
        return await _client.WSClient.open(url, fmt, ssl=self.tls.client_context() if self.tls else None)

    listener = connect

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _proc.stop_tree(self.proc)
        if self in _LIVE:
            _LIVE.remove(self)


def _twistd() -> str:
    candidate = Path(sys.executable).parent / "twistd"
    return str(candidate) if candidate.exists() else (shutil.which("twistd") or "twistd")


def jkg(name: str, tree: Path, logdir: Path, env: dict | None = None, args: list[str] = (), tls=None) -> Gateway:
    """jkg from source tree ``tree`` (``PYTHONPATH=tree``), with extra ``env`` and command-line ``args``."""
    tree = Path(tree).resolve()
    if not (tree / "jkg").is_dir():
        raise Unavailable(f"{tree} is not a jkg source tree")
    check = subprocess.run([sys.executable, "-c", "import jkg.tap"], cwd=str(tree), capture_output=True,
                           text=True, env=dict(os.environ, PYTHONPATH=str(tree)), timeout=60, check=False)
    if check.returncode:
        raise Unavailable(f"`import jkg.tap` fails in {tree}: {check.stderr.strip().splitlines()[-1:]}")
    port = free_port()
    full_env = dict(os.environ, PYTHONPATH=str(tree), **(env or {}))
    cmd = [_twistd(), "-n", "--pidfile=", "jkg", "--ip", "127.0.0.1", "--port", str(port),
           "--state-db", "none", *args]
    return Gateway(name, cmd, full_env, str(tree), port, logdir, tls=tls)


def _kg_exe() -> Path:
    try:
        return _kg_venv.ensure_kg()
    except _kg_venv.Unavailable as error:
        raise Unavailable(str(error)) from error


def kg_exe() -> Path:
    """jupyter-kernel-gateway 3.0.1's executable, installed into the benchmark venv when missing."""
    return _kg_exe()


def kg(logdir: Path, tls=None) -> Gateway:
    """jupyter-kernel-gateway 3.0.1 with its iopub rate limiter off (it would drop the floods)."""
    port = free_port()
    cmd = [str(_kg_exe()), "--KernelGatewayApp.ip=127.0.0.1", f"--KernelGatewayApp.port={port}",
           "--KernelGatewayApp.port_retries=0",
           "--ZMQChannelsWebsocketConnection.limit_rate=False",
           "--ZMQChannelsWebsocketConnection.iopub_msg_rate_limit=0",
           "--ZMQChannelsWebsocketConnection.iopub_data_rate_limit=0"]
    env = dict(os.environ, KG_LIST_KERNELS="True", JUPYTER_RUNTIME_DIR=str(logdir / "runtime-kg"))
    env.pop("PYTHONPATH", None)
    return Gateway("kg", cmd, env, str(logdir), port, logdir, tls=tls)
