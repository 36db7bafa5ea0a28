#!/usr/bin/env python3
"""Benchmark a Jupyter kernel gateway against the direct ZeroMQ floor.

Run by hand (never by the test suite)::

    python benchmarks/bench_gateway.py --targets direct,kg,jkg --json-out /tmp/bench.json

Three targets run the same workloads, one after the other, so they never
compete for the two CPU cores:

``direct``
    jupyter_client talks ZeroMQ straight to an ipykernel: the floor.
``kg``
    jupyter-kernel-gateway 3.0.1 (tornado + jupyter_server 2.x), installed by
    this script into ``benchmarks/.venv-kg`` when missing, started on
    127.0.0.1 with its iopub rate limiter switched off.
``jkg``
    this project's gateway, ``twistd -n --pidfile= jkg --ip 127.0.0.1 --port P``
    (override with ``--jkg-cmd``).

A target that cannot be started is skipped with one clear line; a measure that
fails or times out is recorded as an error and the run goes on.  Every
subprocess and kernel started here is stopped at exit.  See README.md beside
this file for what each measure means.
"""
from __future__ import annotations

import argparse
import atexit
import collections
import datetime
import faulthandler
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

try:
    import orjson

    def loads(b):
        return orjson.loads(b)

    def dumps(o) -> bytes:
        return orjson.dumps(o)

except ImportError:  # pragma: no cover - orjson is expected to be present

    def loads(b):
        if isinstance(b, memoryview):
            b = bytes(b)
        return json.loads(b)

    def dumps(o) -> bytes:
        return json.dumps(o, separators=(",", ":")).encode()


import requests
import websocket
import zmq

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
V1 = "v1.kernel.websocket.jupyter.org"
KG_VERSION = "3.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
FORMATS = ("json", "v1")
# Message types whose content the clients decode (all others: header + parent only,
# except in legacy JSON where the whole frame is one JSON document).
NEED_CONTENT = frozenset(
    {"status", "execute_reply", "kernel_info_reply", "stream", "error"}
)


class BenchError(Exception):
    """A measure failed (bad reply, missing messages, protocol mismatch...)."""


class BenchTimeout(BenchError):
    """A measure ran past its deadline."""


class TargetUnavailable(Exception):
    """A target could not be started; it is skipped."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# process bookkeeping and cleanup
# --------------------------------------------------------------------------

_PROCS: list[subprocess.Popen] = []  # gateways (own process groups)
_KERNEL_MANAGERS: list = []  # direct kernels
_EXTRA_PIDS: set[int] = set()  # descendants seen of our gateways (kernels)


def _proc_stat_fields(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        s = f.read()
    # fields after "(comm)": index 0 is field 3 (state)
    return s[s.rindex(b")") + 2 :].split()


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads, not its children)."""
    fields = _proc_stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_bytes(pid: int | None) -> int | None:
    """Resident set size of one process (VmRSS), in bytes."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for ln in f:
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds in a thread; ``peak`` is the maximum."""

    def __init__(self, pid: int | None, interval: float = 0.02):
        import threading

        self.pid, self.interval = pid, interval
        self.peak = proc_rss_bytes(pid) or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.interval):
            rss = proc_rss_bytes(self.pid)
            if rss is None:
                return
            self.peak = max(self.peak, rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        rss = proc_rss_bytes(self.pid)
        if rss is not None:
            self.peak = max(self.peak, rss)
        return False


CpuSnap = collections.namedtuple("CpuSnap", "stat_s threads_ns")


def cpu_snapshot(pid: int | None) -> CpuSnap | None:
    """CPU used so far by one process, not its children: utime+stime from
    /proc/PID/stat (clock ticks, 10 ms) plus, for precision, the nanosecond
    run time of each thread from /proc/PID/task/*/schedstat."""
    if not pid:
        return None
    try:
        stat_s = proc_cpu_seconds(pid)
    except OSError:
        return None
    threads = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    threads[tid] = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        pass
    return CpuSnap(stat_s, threads)


def cpu_delta(after: CpuSnap | None, before: CpuSnap | None) -> float | None:
    """Seconds of CPU between two snapshots: the per-thread nanosecond sum
    when no thread went away in between, else the tick-based stat delta."""
    if after is None or before is None:
        return None
    if before.threads_ns and after.threads_ns and \
            set(before.threads_ns) <= set(after.threads_ns):
        return sum(ns - before.threads_ns.get(tid, 0)
                   for tid, ns in after.threads_ns.items()) / 1e9
    return after.stat_s - before.stat_s


def _children_map() -> dict[int, list[int]]:
    m: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ppid = int(_proc_stat_fields(int(d))[1])
        except (OSError, ValueError, IndexError):
            continue
        m.setdefault(ppid, []).append(int(d))
    return m


def descendants(pid: int) -> list[int]:
    m = _children_map()
    out, stack = [], [pid]
    while stack:
        for c in m.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    try:
        return _proc_stat_fields(pid)[0] != b"Z"
    except OSError:
        return False


def pid_listening_on(port: int, candidates: list[int]) -> int | None:
    """Which of ``candidates`` holds the listening TCP socket on ``port``."""
    inodes = set()
    for fn in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(fn) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            parts = ln.split()
            if len(parts) > 9 and parts[3] == "0A":
                if int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{parts[9]}]")
    if not inodes:
        return None
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


def _kill_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_process_tree(proc: subprocess.Popen, grace: float = 8.0) -> None:
    """SIGTERM the process group of ``proc``, then SIGKILL it and every
    descendant seen (kernels get their own sessions, so the group is not enough)."""
    if proc.poll() is None:
        tree = descendants(proc.pid)
        _EXTRA_PIDS.update(tree)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            _kill_pid(proc.pid, signal.SIGTERM)
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
    _reap_extra()


def _reap_extra() -> None:
    for pid in list(_EXTRA_PIDS):
        if pid_alive(pid):
            _kill_pid(pid, signal.SIGTERM)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and any(pid_alive(p) for p in _EXTRA_PIDS):
        time.sleep(0.05)
    for pid in list(_EXTRA_PIDS):
        if pid_alive(pid):
            _kill_pid(pid, signal.SIGKILL)
        _EXTRA_PIDS.discard(pid)


def cleanup_all() -> None:
    for km in list(_KERNEL_MANAGERS):
        try:
            km.shutdown_kernel(now=True)
        except Exception:
            pass
        _KERNEL_MANAGERS.remove(km)
    for proc in list(_PROCS):
        try:
            stop_process_tree(proc)
        except Exception:
            pass
        _PROCS.remove(proc)
    _reap_extra()


def _on_signal(signum, frame):
    raise SystemExit(128 + signum)


class HardLimit:
    """Last-resort bound on one step: SIGALRM raises BenchTimeout in the main
    thread even if a library call ignored our deadlines.  The stacks are dumped
    first so that such a hang can be diagnosed."""

    def __init__(self, seconds: float, what: str):
        self.seconds, self.what = seconds, what

    def _fire(self, signum, frame):
        log(f"hard limit of {self.seconds:.0f}s hit during {self.what}; stacks:")
        faulthandler.dump_traceback(all_threads=True)
        raise BenchTimeout(f"hard limit of {self.seconds:.0f}s hit ({self.what})")

    def __enter__(self):
        self._old = signal.signal(signal.SIGALRM, self._fire)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._old)
        return False


# --------------------------------------------------------------------------
# decoded message and connections
# --------------------------------------------------------------------------

Msg = collections.namedtuple("Msg", "channel msg_type parent_id content nbytes")


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


EXECUTE_CONTENT_DEFAULTS = {
    "silent": False,
    "store_history": False,
    "user_expressions": {},
    "allow_stdin": False,
    "stop_on_error": True,
}


class Conn:
    """Common interface of a client connection to one kernel."""

    label = "?"

    def send(self, msg_type: str, content: dict, channel: str = "shell") -> str:
        raise NotImplementedError

    def pollables(self) -> list:
        """Objects for zmq.Poller (zmq sockets or plain sockets)."""
        raise NotImplementedError

    def read_available(self) -> list[Msg]:
        """Messages readable now (called after the poller said readable)."""
        raise NotImplementedError

    def recv(self, deadline: float) -> Msg:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def execute(self, code: str) -> str:
        return self.send("execute_request", dict(EXECUTE_CONTENT_DEFAULTS, code=code))


class DirectConn(Conn):
    """jupyter_client Session over the kernel's ZeroMQ sockets.

    Uses the sockets of a BlockingKernelClient (or a bare iopub SUB socket)
    and decodes like the gateway clients do: signature checked, header and
    parent header unpacked, content only for the few types that need it.
    """

    label = "zmq"

    def __init__(self, km, iopub_only: bool = False):
        self.km = km
        self.kc = None
        if iopub_only:
            self.session = km.session
            self.shell = None
            self.iopub = km.connect_iopub()
        else:
            self.kc = km.client()
            self.kc.start_channels(hb=False)
            self.kc.wait_for_ready(timeout=60)
            self.session = self.kc.session
            self.shell = self.kc.shell_channel.socket
            self.iopub = self.kc.iopub_channel.socket
        self._socks = [(self.iopub, "iopub")]
        if self.shell is not None:
            self._socks.append((self.shell, "shell"))
        self.poller = zmq.Poller()
        for s, _ in self._socks:
            self.poller.register(s, zmq.POLLIN)
        self._q: collections.deque = collections.deque()

    def send(self, msg_type, content, channel="shell"):
        msg = self.session.msg(msg_type, content)
        self.session.send(self.shell, msg)
        return msg["header"]["msg_id"]

    def _decode(self, channel, parts) -> Msg:
        nbytes = sum(len(p) for p in parts)
        _idents, msg_list = self.session.feed_identities(parts, copy=True)
        m = self.session.deserialize(msg_list, content=False, copy=True)
        mt = m["header"]["msg_type"]
        content = loads(m["content"]) if mt in NEED_CONTENT else None
        return Msg(channel, mt, m["parent_header"].get("msg_id"), content, nbytes)

    def pollables(self):
        return [s for s, _ in self._socks]

    def read_available(self):
        out = []
        for sock, ch in self._socks:
            while True:
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK, copy=True)
                except zmq.Again:
                    break
                out.append(self._decode(ch, parts))
        return out

    def recv(self, deadline):
        while not self._q:
            self._q.extend(self.read_available())
            if self._q:
                break
            rem = deadline - time.monotonic()
            if rem <= 0:
                raise BenchTimeout("timed out waiting for a kernel message")
            self.poller.poll(min(rem, 5.0) * 1000)
        return self._q.popleft()

    def close(self):
        try:
            if self.kc is not None:
                self.kc.stop_channels()
            else:
                self.iopub.close(linger=0)
        except Exception:
            pass


class WSConn(Conn):
    """websocket-client connection to /api/kernels/{id}/channels.

    ``fmt`` "json": no subprotocol offered, legacy JSON text frames.
    ``fmt`` "v1": offers v1.kernel.websocket.jupyter.org and insists on it.
    """

    def __init__(self, ws_base: str, kernel_id: str, fmt: str, timeout: float = 30.0,
                 quickack: bool = False):
        self.fmt = fmt
        self.quickack = quickack
        self.label = fmt
        self.session_id = uuid.uuid4().hex
        url = f"{ws_base}/api/kernels/{kernel_id}/channels?session_id={self.session_id}"
        kwargs = dict(timeout=timeout, skip_utf8_validation=True)
        if fmt == "v1":
            kwargs["subprotocols"] = [V1]
        try:
            self.ws = websocket.create_connection(url, **kwargs)
        except Exception as e:
            raise BenchError(f"websocket connect failed: {e!r}") from e
        got = self.ws.subprotocol
        if fmt == "v1" and got != V1:
            self.close()
            raise BenchError(f"server did not select {V1} (selected {got!r})")
        if fmt == "json" and got:
            self.close()
            raise BenchError(f"server selected subprotocol {got!r} though none was offered")
        self.timeout = timeout
        self._cur_timeout = timeout

    def send(self, msg_type, content, channel="shell"):
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "username": "bench",
            "session": self.session_id,
            "date": _now_iso(),
            "msg_type": msg_type,
            "version": "5.3",
        }
        if self.fmt == "json":
            frame = dumps(
                {
                    "channel": channel,
                    "header": header,
                    "parent_header": {},
                    "metadata": {},
                    "content": content,
                    "buffers": [],
                }
            )
            self.ws.send(frame, opcode=websocket.ABNF.OPCODE_TEXT)
        else:
            parts = [channel.encode(), dumps(header), b"{}", b"{}", dumps(content)]
            n = len(parts) + 1  # offsets: start of each part + end of frame
            offsets = [8 * (n + 1)]
            for p in parts:
                offsets.append(offsets[-1] + len(p))
            frame = struct.pack(f"<{n + 1}Q", n, *offsets) + b"".join(parts)
            self.ws.send_binary(frame)
        return msg_id

    def _decode(self, opcode, data) -> Msg:
        nbytes = len(data)
        if self.fmt == "v1":
            if opcode != websocket.ABNF.OPCODE_BINARY:
                raise BenchError("text frame on a v1 connection")
            n = int.from_bytes(data[:8], "little")
            offs = struct.unpack_from(f"<{n}Q", data, 8)
            mv = memoryview(data)
            channel = bytes(mv[offs[0] : offs[1]]).decode()
            header = loads(mv[offs[1] : offs[2]])
            parent = loads(mv[offs[2] : offs[3]])
            mt = header["msg_type"]
            content = loads(mv[offs[4] : offs[5]]) if mt in NEED_CONTENT else None
            return Msg(channel, mt, parent.get("msg_id"), content, nbytes)
        if opcode == websocket.ABNF.OPCODE_TEXT:
            m = loads(data)
        else:  # legacy binary framing (message with buffers)
            nb = int.from_bytes(data[:4], "big")
            offs = struct.unpack_from(f">{nb}I", data, 4)
            end = offs[1] if nb > 1 else len(data)
            m = loads(memoryview(data)[offs[0] : end])
        mt = m["header"]["msg_type"]
        return Msg(m.get("channel"), mt, (m.get("parent_header") or {}).get("msg_id"),
                   m.get("content"), nbytes)

    def pollables(self):
        return [self.ws.sock]

    def _read_frame(self) -> Msg | None:
        """Read one frame. Control frames come back as None (websocket-client
        answers pings itself): they must return to us, or a server that pings
        more often than our socket timeout would keep recv() blocked forever."""
        op, data = self.ws.recv_data(control_frame=True)
        if self.quickack:
            self._ack()
        if op == websocket.ABNF.OPCODE_CLOSE:
            raise BenchError("server closed the websocket")
        if op in (websocket.ABNF.OPCODE_PING, websocket.ABNF.OPCODE_PONG):
            return None
        return self._decode(op, data)

    def read_available(self):
        m = self._read_frame()
        return [] if m is None else [m]

    def _ack(self):
        # Linux: ACK what was read now instead of delaying it up to 40 ms
        # (re-armed after every read, the flag is not permanent)
        try:
            self.ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except (AttributeError, OSError):
            pass

    def recv(self, deadline):
        while True:
            rem = deadline - time.monotonic()
            if rem <= 0:
                raise BenchTimeout("timed out waiting for a websocket message")
            t = min(self.timeout, rem)
            if t != self._cur_timeout:
                self.ws.settimeout(t)
                self._cur_timeout = t
            try:
                m = self._read_frame()
            except websocket.WebSocketTimeoutException:
                continue  # the deadline is checked above
            except (websocket.WebSocketException, OSError) as e:
                raise BenchError(f"websocket error: {e!r}") from e
            if m is not None:
                return m

    def close(self):
        try:
            self.ws.close(timeout=0.5)
        except Exception:
            try:
                self.ws.shutdown()
            except Exception:
                pass


# --------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------


class Target:
    name = "?"
    has_gateway = True

    def start(self):
        pass

    def stop(self):
        pass

    def alive(self) -> bool:
        return True

    def new_kernel(self) -> str:
        raise NotImplementedError

    def delete_kernel(self, kid: str) -> None:
        raise NotImplementedError

    def connect(self, kid: str, fmt: str, quickack: bool = False) -> Conn:
        raise NotImplementedError

    def connect_listener(self, kid: str, fmt: str) -> Conn:
        return self.connect(kid, fmt)

    def gateway_cpu(self) -> CpuSnap | None:
        return None

    def gateway_pid(self) -> int | None:
        return None

    def connections(self, kid: str) -> int | None:
        """The kernel model's ``connections`` (open WebSockets), if the target has one."""
        return None

    def kernel_cpu(self, kid: str) -> CpuSnap | None:
        return None

    def info(self) -> dict:
        return {}


class DirectTarget(Target):
    name = "direct"
    has_gateway = False

    def __init__(self, kernel_name: str, logdir: Path):
        self.kernel_name = kernel_name
        self.logfile = logdir / "direct-kernels.log"
        self.kms: dict[str, object] = {}

    def new_kernel(self):
        from jupyter_client import KernelManager

        km = KernelManager(kernel_name=self.kernel_name)
        _KERNEL_MANAGERS.append(km)
        with open(self.logfile, "ab") as lf:  # kernel output goes to the log
            km.start_kernel(stdout=lf, stderr=subprocess.STDOUT, cwd=str(self.logfile.parent))
        kid = uuid.uuid4().hex
        self.kms[kid] = km
        return kid

    def delete_kernel(self, kid):
        km = self.kms.pop(kid, None)
        if km is None:
            return
        try:
            km.shutdown_kernel(now=True)
        finally:
            if km in _KERNEL_MANAGERS:
                _KERNEL_MANAGERS.remove(km)

    def connect(self, kid, fmt, quickack=False):
        return DirectConn(self.kms[kid])

    def connect_listener(self, kid, fmt):
        return DirectConn(self.kms[kid], iopub_only=True)

    def kernel_cpu(self, kid):
        km = self.kms.get(kid)
        try:
            return cpu_snapshot(km.provisioner.process.pid)
        except Exception:
            return None

    def stop(self):
        for kid in list(self.kms):
            try:
                self.delete_kernel(kid)
            except Exception:
                pass

    def info(self):
        import ipykernel
        import jupyter_client

        return {
            "jupyter_client": jupyter_client.__version__,
            "ipykernel": ipykernel.__version__,
            "python": sys.executable,
        }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayTarget(Target):
    def __init__(self, name: str, cmd: list[str], env: dict, cwd: str, port: int,
                 logdir: Path, kernel_name: str, startup_timeout: float):
        self.name = name
        self.cmd = cmd
        self.env = env
        self.cwd = cwd
        self.port = port
        self.kernel_name = kernel_name
        self.startup_timeout = startup_timeout
        self.base = f"http://127.0.0.1:{port}"
        self.ws_base = f"ws://127.0.0.1:{port}"
        self.logfile = logdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.cpu_pid: int | None = None
        self.http = requests.Session()
        self.http.trust_env = False  # never route loopback through a proxy
        self.kernels: dict[str, int | None] = {}  # id -> kernel pid (if found)
        self.version_info: dict = {}

    def start(self):
        log(f"[{self.name}] starting: {shlex.join(self.cmd)}  (log: {self.logfile})")
        lf = open(self.logfile, "wb")
        try:
            self.proc = subprocess.Popen(
                self.cmd, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                cwd=self.cwd, env=self.env, start_new_session=True,
            )
        except OSError as e:
            raise TargetUnavailable(f"cannot run {self.cmd[0]!r}: {e}") from e
        finally:
            lf.close()
        _PROCS.append(self.proc)
        deadline = time.monotonic() + self.startup_timeout
        last_err = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TargetUnavailable(
                    f"exited with code {self.proc.returncode} during startup; "
                    f"last log lines:\n{self._log_tail()}"
                )
            try:
                r = self.http.get(self.base + "/api/kernelspecs", timeout=2)
                if r.status_code == 200:
                    break
                last_err = f"GET /api/kernelspecs -> {r.status_code}"
            except requests.RequestException as e:
                last_err = repr(e)
            time.sleep(0.2)
        else:
            raise TargetUnavailable(
                f"not answering on port {self.port} after {self.startup_timeout:.0f}s "
                f"({last_err}); last log lines:\n{self._log_tail()}"
            )
        cands = [self.proc.pid] + descendants(self.proc.pid)
        self.cpu_pid = pid_listening_on(self.port, cands) or self.proc.pid
        try:
            self.version_info["api"] = self.http.get(self.base + "/api", timeout=5).json()
        except Exception:
            pass
        log(f"[{self.name}] up on port {self.port}, gateway pid {self.cpu_pid} "
            f"({cmdline(self.cpu_pid)[:100]})")

    def _log_tail(self, n: int = 15) -> str:
        try:
            lines = self.logfile.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return "    (no log)"
        if not lines:
            return "    (log is empty)"
        return "\n".join("    " + ln for ln in lines)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def _kernel_pids(self) -> set[int]:
        if self.proc is None:
            return set()
        return {p for p in descendants(self.proc.pid) if "ipykernel" in cmdline(p)}

    def new_kernel(self):
        before = self._kernel_pids()
        r = self.http.post(self.base + "/api/kernels", json={"name": self.kernel_name}, timeout=90)
        if r.status_code not in (200, 201):
            raise BenchError(f"POST /api/kernels -> {r.status_code}: {r.text[:200]}")
        if r.status_code != 201:
            log(f"[{self.name}] note: POST /api/kernels answered {r.status_code}, not 201")
        kid = r.json()["id"]
        new = self._kernel_pids() - before
        pid = new.pop() if len(new) == 1 else None
        if pid:
            _EXTRA_PIDS.add(pid)
        self.kernels[kid] = pid
        return kid

    def delete_kernel(self, kid):
        pid = self.kernels.pop(kid, None)
        try:
            r = self.http.delete(f"{self.base}/api/kernels/{kid}", timeout=30)
            if r.status_code not in (200, 204):
                log(f"[{self.name}] DELETE kernel {kid} -> {r.status_code}")
        except requests.RequestException as e:
            log(f"[{self.name}] DELETE kernel {kid} failed: {e!r}")
        if pid:
            deadline = time.monotonic() + 5
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid):
                log(f"[{self.name}] kernel pid {pid} still alive after DELETE; killing it")
                _kill_pid(pid, signal.SIGKILL)
            _EXTRA_PIDS.discard(pid)

    def connect(self, kid, fmt, quickack=False):
        return WSConn(self.ws_base, kid, fmt, quickack=quickack)

    def gateway_cpu(self):
        return cpu_snapshot(self.cpu_pid)

    def gateway_pid(self):
        return self.cpu_pid

    def connections(self, kid):
        try:
            r = self.http.get(f"{self.base}/api/kernels/{kid}", timeout=10)
            return r.json().get("connections") if r.status_code == 200 else None
        except (requests.RequestException, ValueError):
            return None

    def kernel_cpu(self, kid):
        pid = self.kernels.get(kid)
        try:
            return cpu_snapshot(pid)
        except OSError:
            return None

    def stop(self):
        for kid in list(self.kernels):
            if self.alive():
                self.delete_kernel(kid)
        if self.proc is not None:
            stop_process_tree(self.proc)
            if self.proc in _PROCS:
                _PROCS.remove(self.proc)

    def info(self):
        return dict(self.version_info, cmd=self.cmd, port=self.port, log=str(self.logfile))


# --------------------------------------------------------------------------
# setting up kg and jkg
# --------------------------------------------------------------------------


def ensure_kg_venv(venv: Path, timeout: float) -> Path:
    exe = venv / "bin" / "jupyter-kernelgateway"
    py = venv / "bin" / "python"

    def version():
        try:
            out = subprocess.run(
                [str(py), "-c", "import kernel_gateway, ipykernel; "
                 "print(kernel_gateway.__version__)"],
                capture_output=True, text=True, timeout=60,
            )
            return out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            return None

    if exe.exists() and version() == KG_VERSION:
        return exe
    log(f"[kg] installing jupyter-kernel-gateway=={KG_VERSION} into {venv} (one-off)...")
    t0 = time.monotonic()
    try:
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                           timeout=timeout, capture_output=True)
        out = subprocess.run(
            [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q",
             f"jupyter-kernel-gateway=={KG_VERSION}", "ipykernel"],
            timeout=timeout, capture_output=True, text=True,
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise TargetUnavailable(f"could not create {venv}: {e!r}") from e
    if out.returncode != 0 or version() != KG_VERSION:
        tail = "\n".join(("    " + ln) for ln in (out.stderr or out.stdout).splitlines()[-10:])
        raise TargetUnavailable(f"pip install into {venv} failed:\n{tail}")
    log(f"[kg] installed in {time.monotonic() - t0:.0f}s")
    return exe


def kg_versions(venv: Path) -> dict:
    py = venv / "bin" / "python"
    code = ("import json, kernel_gateway, jupyter_server, jupyter_client, ipykernel, tornado;"
            "print(json.dumps({'kernel_gateway': kernel_gateway.__version__,"
            "'jupyter_server': jupyter_server.__version__,"
            "'jupyter_client': jupyter_client.__version__,"
            "'ipykernel': ipykernel.__version__, 'tornado': tornado.version}))")
    try:
        out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=60)
        return json.loads(out.stdout)
    except Exception:
        return {}


def make_kg(args, logdir: Path) -> GatewayTarget:
    venv = Path(args.kg_venv)
    exe = ensure_kg_venv(venv, timeout=900)
    port = free_port()
    cmd = [
        str(exe),
        "--KernelGatewayApp.ip=127.0.0.1",
        f"--KernelGatewayApp.port={port}",
        "--KernelGatewayApp.port_retries=0",
        # iopub rate limiter off (checked: 20,000 display_data arrive, no
        # "IOPub message rate exceeded"; with defaults KG drops most of them)
        "--ZMQChannelsWebsocketConnection.limit_rate=False",
        "--ZMQChannelsWebsocketConnection.iopub_msg_rate_limit=0",
        "--ZMQChannelsWebsocketConnection.iopub_data_rate_limit=0",
    ]
    env = dict(os.environ, KG_LIST_KERNELS="True",
               JUPYTER_RUNTIME_DIR=str(logdir / "runtime-kg"))
    env.pop("PYTHONPATH", None)
    t = GatewayTarget("kg", cmd, env, str(logdir), port, logdir, args.kernel_name,
                      args.startup_timeout)
    t.version_info.update(kg_versions(venv))
    return t


def find_twistd() -> str:
    cand = Path(sys.executable).parent / "twistd"
    if cand.exists():
        return str(cand)
    return shutil.which("twistd") or "twistd"


def make_jkg(args, logdir: Path) -> GatewayTarget:
    port = free_port()
    if args.jkg_cmd:
        cmd = [part.replace("{port}", str(port)) for part in shlex.split(args.jkg_cmd)]
        if not any(str(port) in part for part in cmd):
            raise TargetUnavailable("--jkg-cmd must contain {port}")
    else:
        cmd = [find_twistd(), "-n", "--pidfile=", "jkg", "--ip", "127.0.0.1",
               "--port", str(port)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # a quick, clear reason to skip before spawning anything
    if not args.jkg_cmd:
        chk = subprocess.run([sys.executable, "-c", "import jkg.tap"], env=env,
                             cwd=str(REPO), capture_output=True, text=True, timeout=60)
        if chk.returncode != 0:
            last = (chk.stderr.strip().splitlines() or ["?"])[-1]
            raise TargetUnavailable(f"`import jkg.tap` fails: {last}")
    t = GatewayTarget("jkg", cmd, env, str(REPO), port, logdir, args.kernel_name,
                      args.startup_timeout)
    return t


# --------------------------------------------------------------------------
# workloads
# --------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def wait_exec(conn: Conn, msg_id: str, deadline: float, on_iopub=None,
              stats: dict | None = None, idle_grace: float | None = None) -> dict:
    """Wait for execute_reply and iopub idle of ``msg_id``; return reply content.

    With ``idle_grace``: once the reply is in, give up waiting for the idle
    status (iopub can drop it) when nothing of ours arrived for that long;
    ``stats`` then gets idle=False.  ``stats["t_last"]`` is the perf_counter
    time of the last message of ours, ``stats["t_idle"]`` that of idle."""
    reply = None
    idle = False
    t_last = time.perf_counter()
    while reply is None or not idle:
        if idle_grace is not None and reply is not None:
            sub = min(deadline, time.monotonic() + idle_grace - (time.perf_counter() - t_last))
            try:
                m = conn.recv(sub)
            except BenchTimeout:
                if time.monotonic() >= deadline:
                    raise
                break
        else:
            m = conn.recv(deadline)
        if m.parent_id != msg_id:
            continue
        t_last = time.perf_counter()
        if m.channel == "shell":
            if m.msg_type == "execute_reply":
                reply = m.content
        elif m.channel == "iopub":
            if m.msg_type == "status":
                if m.content.get("execution_state") == "idle":
                    idle = True
                    if stats is not None:
                        stats["t_idle"] = t_last
            elif m.msg_type == "error":
                raise BenchError(f"kernel error: {m.content.get('ename')}: "
                                 f"{m.content.get('evalue')}")
            elif on_iopub is not None:
                on_iopub(m)
    if stats is not None:
        stats["idle"] = idle
        stats["t_last"] = t_last
    if reply.get("status") != "ok":
        raise BenchError(f"execute_reply status {reply.get('status')}: "
                         f"{reply.get('ename')} {reply.get('evalue')}")
    return reply


def wait_ready(conn: Conn, deadline: float) -> None:
    """kernel_info_request until a reply arrives (retried, as real clients do)."""
    while True:
        mid = conn.send("kernel_info_request", {})
        step = min(deadline, time.monotonic() + 2.0)
        try:
            while True:
                m = conn.recv(step)
                if m.parent_id == mid and m.msg_type == "kernel_info_reply":
                    return
        except BenchTimeout:
            if time.monotonic() >= deadline:
                raise BenchTimeout("no kernel_info_reply") from None


def run_exec(conn, code, deadline, on_iopub=None):
    return wait_exec(conn, conn.execute(code), deadline, on_iopub)


class Measures:
    """Collects values[measure][target], details and errors."""

    def __init__(self):
        self.values: dict[str, dict[str, float | None]] = collections.OrderedDict()
        self.details: dict[str, dict[str, dict]] = collections.OrderedDict()
        self.errors: dict[str, dict[str, str]] = collections.OrderedDict()
        self.notes: dict[str, dict[str, str]] = collections.OrderedDict()

    def put(self, measure, target, value, **detail):
        self.values.setdefault(measure, {})[target] = value
        if detail:
            self.details.setdefault(measure, {})[target] = detail

    def err(self, measure, target, msg):
        self.values.setdefault(measure, {})[target] = None
        self.errors.setdefault(measure, {})[target] = msg


# Table rows: key, label, unit, kind ("time": lower is better, "speed": higher
# is better, "cost": lower is better, gateways only).
ROWS = [
    ("rt_json_p50", "execute round trip p50, legacy JSON", "ms", "time"),
    ("rt_json_p90", "execute round trip p90, legacy JSON", "ms", "time"),
    ("rt_v1_p50", "execute round trip p50, v1", "ms", "time"),
    ("rt_v1_p90", "execute round trip p90, v1", "ms", "time"),
    ("rtqa_json_p50", "round trip p50, JSON, client QUICKACK", "ms", "time"),
    ("rtqa_v1_p50", "round trip p50, v1, client QUICKACK", "ms", "time"),
    ("cpu_exec_json", "gateway CPU per execute, legacy JSON", "us", "cost"),
    ("cpu_exec_v1", "gateway CPU per execute, v1", "us", "cost"),
    ("small_json", "iopub small msgs, legacy JSON", "msg/s", "speed"),
    ("small_v1", "iopub small msgs, v1", "msg/s", "speed"),
    ("cpu_small_json", "gateway CPU per small msg, legacy JSON", "us", "cost"),
    ("cpu_small_v1", "gateway CPU per small msg, v1", "us", "cost"),
    ("large_json", "iopub 2 MB outputs, legacy JSON", "MB/s", "speed"),
    ("large_v1", "iopub 2 MB outputs, v1", "MB/s", "speed"),
    ("cpu_large_json", "gateway CPU per MB, legacy JSON", "ms", "cost"),
    ("cpu_large_v1", "gateway CPU per MB, v1", "ms", "cost"),
    ("par_json", "8 kernels in parallel, legacy JSON", "exec/s", "speed"),
    ("par_v1", "8 kernels in parallel, v1", "exec/s", "speed"),
    ("cpu_par_json", "gateway CPU per parallel execute, JSON", "us", "cost"),
    ("cpu_par_v1", "gateway CPU per parallel execute, v1", "us", "cost"),
    ("fanout_json", "1 print to 100 clients (last), JSON", "ms", "time"),
    ("fanout_v1", "1 print to 100 clients (last), v1", "ms", "time"),
    ("idle_ws_rss", "1000 idle WebSockets, gateway RSS growth", "MB", "cost"),
    ("slow_rss", "stalled client + 500 MB, gateway RSS growth", "MB", "cost"),
    ("slow_speed", "stalled client: reader speed vs unloaded", "ratio", "speed"),
]


class Runner:
    def __init__(self, args, measures: Measures):
        self.a = args
        self.m = measures

    # each workload gets a fresh kernel and a bounded deadline
    def _with_kernel(self, target: Target, fn, *fargs):
        limit = self.a.measure_timeout + self.a.startup_timeout + 30
        kid = None
        try:
            with HardLimit(limit, f"{target.name} {fn.__name__} {fargs}"):
                kid = target.new_kernel()
                return fn(target, kid, *fargs)
        finally:
            if kid is not None:
                try:
                    with HardLimit(60, f"{target.name} kernel shutdown"):
                        target.delete_kernel(kid)
                except Exception as e:
                    log(f"[{target.name}] kernel cleanup failed: {e!r}")

    def _cpu_pair(self, target, kid):
        return target.gateway_cpu(), target.kernel_cpu(kid)

    @staticmethod
    def _delta(after, before, div):
        d = cpu_delta(after, before)
        return None if d is None else d / div

    def round_trip(self, target, kid, fmt, quickack=False):
        a = self.a
        deadline = time.monotonic() + a.measure_timeout
        conn = target.connect(kid, fmt, quickack=quickack)
        try:
            wait_ready(conn, deadline)
            for _ in range(a.warmup):
                run_exec(conn, "pass", deadline)
            g0, k0 = self._cpu_pair(target, kid)
            c0 = time.process_time()
            lat = []
            t_all = time.perf_counter()
            for _ in range(a.n):
                t0 = time.perf_counter()
                wait_exec(conn, conn.execute("pass"), deadline)
                lat.append(time.perf_counter() - t0)
            t_all = time.perf_counter() - t_all
            g1, k1 = self._cpu_pair(target, kid)
            c1 = time.process_time()
        finally:
            conn.close()
        n = a.n
        p50, p90 = pct(lat, 50) * 1e3, pct(lat, 90) * 1e3
        detail = dict(n=n, mean_ms=sum(lat) / n * 1e3, p99_ms=pct(lat, 99) * 1e3,
                      min_ms=min(lat) * 1e3, max_ms=max(lat) * 1e3, loop_s=t_all,
                      client_cpu_us_per_exec=(c1 - c0) / n * 1e6,
                      kernel_cpu_us_per_exec=self._delta(k1, k0, n / 1e6),
                      gateway_cpu_s=self._delta(g1, g0, 1))
        cpu = self._delta(g1, g0, n / 1e6)
        if quickack:
            self.m.put(f"rtqa_{fmt}_p50", target.name, p50, p90_ms=p90, **detail)
        else:
            self.m.put(f"rt_{fmt}_p50", target.name, p50, **detail)
            self.m.put(f"rt_{fmt}_p90", target.name, p90)
            if target.has_gateway:
                self.m.put(f"cpu_exec_{fmt}", target.name, cpu)
        qa = " (client TCP_QUICKACK)" if quickack else ""
        log(f"[{target.name}] round trip {fmt}{qa}: p50 {p50:.3f} ms, p90 {p90:.3f} ms"
            + (f", gateway CPU {cpu:.0f} us/exec" if cpu is not None else ""))

    def _flood(self, target, kid, fmt, code, warm_code, expect: int, reps: int = 1):
        """Run ``code`` that emits ``expect`` display_data, ``reps`` times on one
        connection; return (median elapsed, n_display, payload_bytes, gw_cpu_s,
        kernel_cpu_s, client_cpu_s), counts and CPU summed over the repetitions
        and n_display the median per repetition."""
        deadline = time.monotonic() + self.a.measure_timeout
        conn = target.connect(kid, fmt)
        runs = []
        try:
            wait_ready(conn, deadline)
            run_exec(conn, warm_code, deadline)
            box = {"n": 0, "bytes": 0, "warn": 0}

            def on_iopub(m):
                if m.msg_type == "display_data":
                    box["n"] += 1
                    box["bytes"] += m.nbytes
                elif m.msg_type == "stream" and "rate exceeded" in str(
                        (m.content or {}).get("text", "")):
                    box["warn"] += 1

            g0, k0 = self._cpu_pair(target, kid)
            c0 = time.process_time()
            for _ in range(reps):
                st: dict = {}
                before = box["n"]
                t0 = time.perf_counter()
                wait_exec(conn, conn.execute(code), deadline, on_iopub, stats=st, idle_grace=5.0)
                # normally the idle status; if it was lost, the last message we got
                runs.append((st.get("t_idle", st["t_last"]) - t0, box["n"] - before))
                if not st["idle"]:
                    self.m.notes.setdefault(self._cur_key, {})[target.name] = (
                        "the idle status never arrived (dropped on iopub); timed to the last message")
            g1, k1 = self._cpu_pair(target, kid)
            c1 = time.process_time()
        finally:
            conn.close()
        if box["warn"]:
            raise BenchError(f"gateway rate-limited iopub ({box['warn']} warnings, "
                             f"{box['n']}/{expect * reps} display_data arrived)")
        if box["n"] > expect * reps:
            raise BenchError(f"{box['n']} display_data arrived, expected {expect * reps}")
        # the repetition with the median rate
        el, got = sorted(runs, key=lambda run: run[1] / run[0])[len(runs) // 2]
        self._cur_runs = runs
        return (el, got, box["bytes"], self._delta(g1, g0, 1), self._delta(k1, k0, 1),
                c1 - c0)

    def small(self, target, kid, fmt):
        n = self.a.small_count
        code = ("from IPython.display import display\n"
                f"for i in range({n}):\n"
                "    display({'text/plain': str(i)}, raw=True)\n")
        warm = code.replace(f"range({n})", "range(200)")
        self._cur_key = f"small_{fmt}"
        el, got, nbytes, g, k, c = self._flood(target, kid, fmt, code, warm, n)
        rate = got / el
        cpu = g / got * 1e6 if g is not None and got else None
        self.m.put(f"small_{fmt}", target.name, rate, elapsed_s=el, messages=n, received=got,
                   lost=n - got, wire_bytes=nbytes, gateway_cpu_s=g, kernel_cpu_s=k,
                   client_cpu_s=c)
        self._note_loss(f"small_{fmt}", target.name, n, got)
        if target.has_gateway:
            self.m.put(f"cpu_small_{fmt}", target.name, cpu)
        log(f"[{target.name}] iopub small {fmt}: {rate:,.0f} msg/s ({el:.2f} s)"
            + (f", gateway CPU {cpu:.1f} us/msg" if cpu is not None else ""))

    def large(self, target, kid, fmt):
        n, size = self.a.large_count, self.a.large_size
        code = ("from IPython.display import display\n"
                f"_s = 'x' * {size}\n"
                f"for i in range({n}):\n"
                "    display({'text/plain': _s}, raw=True)\n")
        warm = code.replace(f"range({n})", "range(2)")
        self._cur_key = f"large_{fmt}"
        reps = max(1, self.a.large_reps)
        el, got, nbytes, g, k, c = self._flood(target, kid, fmt, code, warm, n, reps)
        self._note_loss(f"large_{fmt}", target.name, n, got)
        runs = self._cur_runs
        rate = got * size / 1e6 / el
        mb_total = sum(r[1] for r in runs) * size / 1e6
        cpu = g / mb_total * 1e3 if g is not None and mb_total else None
        self.m.put(f"large_{fmt}", target.name, rate, elapsed_s=el, outputs=n, received=got,
                   output_bytes=size, wire_bytes=nbytes, gateway_cpu_s=g,
                   kernel_cpu_s=k, client_cpu_s=c, reps=reps,
                   all_mb_s=[r[1] * size / 1e6 / r[0] for r in runs])
        if target.has_gateway:
            self.m.put(f"cpu_large_{fmt}", target.name, cpu)
        log(f"[{target.name}] iopub large {fmt}: {rate:,.1f} MB/s ({el:.2f} s)"
            + (f", gateway CPU {cpu:.2f} ms/MB" if cpu is not None else ""))

    def _note_loss(self, key, target, sent, got):
        if got < sent:
            old = self.m.notes.get(key, {}).get(target)
            msg = (f"{sent - got} of {sent} display_data never arrived (dropped between "
                   f"kernel and client; ZMQ PUB drops at its high-water mark when the "
                   f"subscriber falls behind); rate counts delivered messages only")
            log(f"[{target}] {key}: {msg}")
            if old:
                msg += "; " + old
            self.m.notes.setdefault(key, {})[target] = msg

    # -- optional workloads -------------------------------------------------

    @staticmethod
    def _poller(conns):
        poller = zmq.Poller()
        owner = {}
        for c in conns:
            for p in c.pollables():
                poller.register(p, zmq.POLLIN)
                # pyzmq answers with the zmq socket itself, or with the fd
                # number for plain sockets
                owner[p] = c
                if not isinstance(p, zmq.Socket):
                    owner[p.fileno()] = c
        return poller, owner

    def parallel(self, target, kids, fmts):
        """One connection per kernel, each running ``par_execs`` sequential
        executes; all kernels at once, driven from one thread with a poller."""
        a = self.a
        for fmt in fmts:
            key = f"par_{fmt}"
            deadline = time.monotonic() + a.measure_timeout
            conns = []
            try:
                for kid in kids:
                    conns.append(target.connect(kid, fmt))
                for c in conns:
                    wait_ready(c, deadline)
                    for _ in range(5):
                        run_exec(c, "pass", deadline)
                poller, owner = self._poller(conns)
                state = {c: {"left": a.par_execs, "mid": None, "t": 0.0, "reply": False,
                             "idle": False} for c in conns}
                lat = []
                g0 = target.gateway_cpu()
                t0 = time.perf_counter()

                def fire(c):
                    s = state[c]
                    s["reply"] = s["idle"] = False
                    s["t"] = time.perf_counter()
                    s["mid"] = c.execute("pass")

                for c in conns:
                    fire(c)
                active = len(conns)
                while active:
                    rem = deadline - time.monotonic()
                    if rem <= 0:
                        raise BenchTimeout("parallel executes did not finish")
                    for p, _ev in poller.poll(min(rem, 5) * 1000):
                        c = owner[p]
                        s = state[c]
                        for m in c.read_available():
                            if m.parent_id != s["mid"]:
                                continue
                            if m.channel == "shell" and m.msg_type == "execute_reply":
                                if m.content.get("status") != "ok":
                                    raise BenchError(f"execute_reply {m.content.get('status')}")
                                s["reply"] = True
                            elif (m.channel == "iopub" and m.msg_type == "status"
                                  and m.content.get("execution_state") == "idle"):
                                s["idle"] = True
                            if s["reply"] and s["idle"]:
                                lat.append(time.perf_counter() - s["t"])
                                s["left"] -= 1
                                s["mid"] = None
                                if s["left"]:
                                    fire(c)
                                else:
                                    active -= 1
                el = time.perf_counter() - t0
                g1 = target.gateway_cpu()
            except Exception as e:
                self.m.err(key, target.name, _emsg(e))
                log(f"[{target.name}] parallel {fmt}: FAILED {_emsg(e)}")
                continue
            finally:
                for c in conns:
                    c.close()
            total = len(kids) * a.par_execs
            rate = total / el
            cpu = self._delta(g1, g0, total / 1e6)
            self.m.put(key, target.name, rate, kernels=len(kids), executes=total,
                       elapsed_s=el, p50_ms=pct(lat, 50) * 1e3, p90_ms=pct(lat, 90) * 1e3)
            if target.has_gateway:
                self.m.put(f"cpu_par_{fmt}", target.name, cpu)
            log(f"[{target.name}] parallel {fmt}: {rate:,.0f} exec/s on {len(kids)} kernels"
                f" (p50 {pct(lat, 50) * 1e3:.2f} ms)"
                + (f", gateway CPU {cpu:.0f} us/exec" if cpu is not None else ""))

    def fanout(self, target, kid, fmt):
        """``fanout_clients`` connections on one kernel; one of them runs
        print(); time until the last connection has the stream message."""
        a = self.a
        deadline = time.monotonic() + a.measure_timeout
        sender = target.connect(kid, fmt)
        listeners: list[Conn] = []
        try:
            wait_ready(sender, deadline)
            for _ in range(a.fanout_clients - 1):
                listeners.append(target.connect_listener(kid, fmt))
            everyone = [sender] + listeners
            poller, owner = self._poller(everyone)

            def one(code, want_type, timed):
                got: dict = {}
                idle: set = set()
                t0 = time.perf_counter()
                mid = sender.execute(code)
                reply = False
                last = None
                while len(got) < len(everyone) or len(idle) < len(everyone) or not reply:
                    rem = deadline - time.monotonic()
                    if rem <= 0:
                        raise BenchTimeout(
                            f"{len(got)}/{len(everyone)} clients got the output")
                    if not timed and rem > 0 and time.perf_counter() - t0 > 5:
                        return None  # warm-up: subscriptions not all live yet
                    for p, _ev in poller.poll(min(rem, 1) * 1000):
                        c = owner[p]
                        for m in c.read_available():
                            if m.parent_id != mid:
                                continue
                            if m.msg_type == want_type and c not in got:
                                got[c] = time.perf_counter()
                                if len(got) == len(everyone):
                                    last = got[c] - t0
                            elif m.msg_type == "status" and \
                                    m.content.get("execution_state") == "idle":
                                idle.add(c)
                            elif m.msg_type == "execute_reply":
                                reply = True
                return last

            # warm-up until every connection receives iopub (SUB slow joiner,
            # server-side nudges); bounded by the deadline
            while one("print('warm')", "stream", timed=False) is None:
                # drain stragglers of the abandoned warm-up
                time.sleep(0.2)
                for p, _ev in poller.poll(0):
                    owner[p].read_available()
            times = [one("print('x')", "stream", timed=True) for _ in range(a.fanout_reps)]
        finally:
            for c in [sender] + listeners:
                c.close()
        med = pct(times, 50) * 1e3
        self.m.put(f"fanout_{fmt}", target.name, med, clients=a.fanout_clients,
                   reps=a.fanout_reps, all_ms=[t * 1e3 for t in times])
        log(f"[{target.name}] fan-out {fmt}: last of {a.fanout_clients} clients after "
            f"{med:.2f} ms (median of {a.fanout_reps})")

    def idle_sockets(self, target, kid):
        """``idle_sockets`` WebSockets (distinct sessions) open on one kernel and
        left idle; the gateway's RSS growth from before the first to after the last."""
        a = self.a
        deadline = time.monotonic() + a.measure_timeout
        first = target.connect(kid, "v1")
        conns = [first]
        try:
            wait_ready(first, deadline)
            run_exec(first, "pass", deadline)
            time.sleep(0.5)
            pid = target.gateway_pid()
            before = proc_rss_bytes(pid)
            t0 = time.perf_counter()
            for i in range(a.idle_sockets):
                if time.monotonic() > deadline:
                    raise BenchTimeout(f"only {i} of {a.idle_sockets} WebSockets opened in time")
                conns.append(target.connect(kid, "v1" if i % 2 else "json"))
            opened = time.perf_counter() - t0
            time.sleep(1.0)  # let the gateway settle (nudges, handshakes)
            run_exec(first, "pass", deadline)  # the kernel still answers with them all attached
            after = proc_rss_bytes(pid)
            seen = target.connections(kid)
        finally:
            for c in conns:
                c.close()
        if before is None or after is None:
            raise BenchError("cannot read the gateway's RSS")
        growth = (after - before) / 1e6
        self.m.put("idle_ws_rss", target.name, growth, sockets=a.idle_sockets,
                   rss_before_mb=before / 1e6, rss_after_mb=after / 1e6,
                   kb_per_socket=(after - before) / 1024 / a.idle_sockets, open_s=opened,
                   connections_reported=seen)
        log(f"[{target.name}] {a.idle_sockets} idle WebSockets: gateway RSS +{growth:.1f} MB "
            f"({before / 1e6:.0f} -> {after / 1e6:.0f} MB, opened in {opened:.1f} s)")

    def _stream_mb(self, conn, code, deadline, size):
        """Run ``code`` on ``conn``; MB/s of display_data received until idle."""
        box = {"n": 0}

        def on_iopub(m):
            if m.msg_type == "display_data":
                box["n"] += 1

        t0 = time.perf_counter()
        st: dict = {}
        wait_exec(conn, conn.execute(code), deadline, on_iopub, stats=st, idle_grace=10.0)
        el = st.get("t_idle", st["t_last"]) - t0
        return box["n"] * size / 1e6 / el, box["n"]

    def slow_reader(self, target, kid):
        """One client streams ``slow_mb`` MB of output, first alone (unloaded), then
        with a second client on the kernel that never reads.  Reports the gateway's
        peak RSS growth during the loaded run and the reader's speed ratio."""
        a = self.a
        deadline = time.monotonic() + a.measure_timeout
        size = a.slow_chunk
        count = max(1, int(a.slow_mb * 1e6 // size))
        code = ("from IPython.display import display\n"
                f"_s = 'x' * {size}\n"
                f"for i in range({count}):\n"
                "    display({'text/plain': _s}, raw=True)\n")
        reader = target.connect(kid, a.slow_format)
        stalled = None
        try:
            wait_ready(reader, deadline)
            # a full stream first: the first big burst in fresh processes stalls
            # the reader (page faults, heap growth) and would be measured instead
            self._stream_mb(reader, code, deadline, size)
            unloaded, got0 = self._stream_mb(reader, code, deadline, size)
            pid = target.gateway_pid()
            stalled = target.connect_listener(kid, a.slow_format)  # never read from
            if isinstance(stalled, WSConn):
                time.sleep(0.3)
            else:  # a SUB socket: let it join
                time.sleep(1.0)
            before = proc_rss_bytes(pid)
            with RssSampler(pid) as rss:
                loaded, got1 = self._stream_mb(reader, code, deadline, size)
            conns_after = target.connections(kid)
        finally:
            reader.close()
            if stalled is not None:
                stalled.close()
        for got in (got0, got1):
            self._note_loss("slow_speed", target.name, count, got)
        growth = (rss.peak - before) / 1e6 if pid and before else None
        ratio = loaded / unloaded if unloaded else None
        dropped = None if conns_after is None else conns_after < 2
        self.m.put("slow_speed", target.name, ratio, unloaded_mb_s=unloaded, loaded_mb_s=loaded,
                   stream_mb=count * size / 1e6, format=a.slow_format,
                   stalled_client_disconnected=dropped)
        if target.has_gateway:
            self.m.put("slow_rss", target.name, growth, rss_before_mb=(before or 0) / 1e6,
                       rss_peak_mb=rss.peak / 1e6, stalled_client_disconnected=dropped)
        log(f"[{target.name}] stalled client during {count * size / 1e6:.0f} MB: reader "
            f"{unloaded:,.0f} -> {loaded:,.0f} MB/s (x{ratio:.2f})"
            + (f", gateway RSS +{growth:.1f} MB" if growth is not None else "")
            + ("" if dropped is None else
               f", stalled client {'disconnected' if dropped else 'still connected'}"))

    # -- driver ---------------------------------------------------------------

    def run_target(self, target: Target):
        a = self.a
        plan = []
        for fmt in FORMATS:
            plan.append((f"rt_{fmt}_p50", self.round_trip, fmt))
        for fmt in FORMATS:
            plan.append((f"small_{fmt}", self.small, fmt))
        for fmt in FORMATS:
            plan.append((f"large_{fmt}", self.large, fmt))
        if a.quickack:
            for fmt in FORMATS:
                plan.append((f"rtqa_{fmt}_p50", self.round_trip, fmt, True))
        for key, fn, *fargs in plan:
            if not target.alive():
                self.m.err(key, target.name, "gateway process is gone")
                continue
            try:
                self._with_kernel(target, fn, *fargs)
            except Exception as e:
                self.m.err(key, target.name, _emsg(e))
                log(f"[{target.name}] {key}: FAILED {_emsg(e)}")
                if a.verbose:
                    traceback.print_exc()
        if a.no_optional:
            return
        # parallel: 8 fresh kernels, both formats in turn on them
        if target.alive() and a.par_kernels > 0:
            kids = []
            try:
                limit = 2 * a.measure_timeout + a.startup_timeout * 2 + 60
                with HardLimit(limit, f"{target.name} parallel"):
                    for _ in range(a.par_kernels):
                        kids.append(target.new_kernel())
                    self.parallel(target, kids, FORMATS)
            except Exception as e:
                for fmt in FORMATS:
                    if target.name not in self.m.values.get(f"par_{fmt}", {}):
                        self.m.err(f"par_{fmt}", target.name, _emsg(e))
                log(f"[{target.name}] parallel: FAILED {_emsg(e)}")
            finally:
                for kid in kids:
                    try:
                        with HardLimit(60, f"{target.name} kernel shutdown"):
                            target.delete_kernel(kid)
                    except Exception:
                        pass
        if a.fanout_clients > 0:
            for fmt in FORMATS:
                key = f"fanout_{fmt}"
                if not target.alive():
                    self.m.err(key, target.name, "gateway process is gone")
                    continue
                try:
                    self._with_kernel(target, self.fanout, fmt)
                except Exception as e:
                    self.m.err(key, target.name, _emsg(e))
                    log(f"[{target.name}] {key}: FAILED {_emsg(e)}")
        extra = []
        if a.slow_mb > 0:
            extra.append(("slow_speed", self.slow_reader))
        if a.idle_sockets > 0 and target.has_gateway:
            extra.append(("idle_ws_rss", self.idle_sockets))
        for key, fn in extra:
            if not target.alive():
                self.m.err(key, target.name, "gateway process is gone")
                continue
            try:
                self._with_kernel(target, fn)
            except Exception as e:
                self.m.err(key, target.name, _emsg(e))
                if key == "slow_speed" and target.has_gateway:
                    self.m.err("slow_rss", target.name, _emsg(e))
                log(f"[{target.name}] {key}: FAILED {_emsg(e)}")
                if a.verbose:
                    traceback.print_exc()


def _emsg(e: BaseException) -> str:
    s = str(e) or type(e).__name__
    return f"{type(e).__name__}: {s}" if not isinstance(e, BenchError) else s


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------


def _fmt_val(v, unit):
    if v is None:
        return "-"
    if unit in ("msg/s", "exec/s"):
        return f"{v:,.0f}"
    if unit == "MB/s":
        return f"{v:,.1f}"
    if unit == "us":
        return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"
    if unit == "ratio":
        return f"{v:.2f}"
    if unit == "MB":
        return f"{v:,.1f}"
    return f"{v:.3f}" if v < 10 else f"{v:.2f}"


def _ratio(num, den):
    if num is None or den is None or den == 0:
        return None
    return num / den


def build_report(measures: Measures, args):
    rows = []
    for key, label, unit, kind in ROWS:
        label = label.replace("100 clients", f"{args.fanout_clients} clients")
        label = label.replace("8 kernels", f"{args.par_kernels} kernels")
        label = label.replace("1000 idle", f"{args.idle_sockets} idle")
        label = label.replace("+ 500 MB", f"+ {args.slow_mb:g} MB")
        vals = measures.values.get(key)
        if not vals:
            continue
        d, kg, jkg = vals.get("direct"), vals.get("kg"), vals.get("jkg")
        rows.append({
            "measure": key, "label": label, "unit": unit, "kind": kind,
            "direct": d, "kg": kg, "jkg": jkg,
            "jkg/direct": _ratio(jkg, d), "kg/direct": _ratio(kg, d),
            "jkg/kg": _ratio(jkg, kg),
        })
    return rows


def print_table(rows, measures: Measures):
    if not rows:
        print("\n(no measurements)")
    kind_txt = {"time": "time", "speed": "speed", "cost": "cost"}
    head = (f"{'measure':<42} {'unit':>6} {'direct':>10} {'kg':>10} {'jkg':>10}"
            f" {'kind':>5} {'jkg/dir':>8} {'kg/dir':>8} {'jkg/kg':>8}")
    print()
    print(head)
    print("-" * len(head))

    def r(x):
        return "-" if x is None else f"x{x:.2f}"

    for row in rows:
        print(f"{row['label']:<42} {row['unit']:>6} "
              f"{_fmt_val(row['direct'], row['unit']):>10} {_fmt_val(row['kg'], row['unit']):>10} "
              f"{_fmt_val(row['jkg'], row['unit']):>10} {kind_txt[row['kind']]:>5} "
              f"{r(row['jkg/direct']):>8} {r(row['kg/direct']):>8} {r(row['jkg/kg']):>8}")
    print()
    print("Ratios are value/value. kind=time or cost: lower is better, a ratio > 1 means")
    print("slower / more CPU than the denominator. kind=speed: higher is better, a ratio < 1")
    print("means less throughput than the denominator. 'cost' rows are CPU of the gateway")
    print("process only (not its kernels), so they have no direct value. QUICKACK rows: the")
    print("client ACKs every read at once (see README: Nagle).")
    if measures.notes:
        print()
        print("Notes:")
        for key, per in measures.notes.items():
            for tgt, msg in per.items():
                print(f"  {key} [{tgt}]: {msg}")
    if measures.errors:
        print()
        print("Errors / skipped:")
        for key, per in measures.errors.items():
            for tgt, msg in per.items():
                print(f"  {key} [{tgt}]: {msg.splitlines()[0][:160]}")


# The targets of issue 4: (what, measure, test, bound).  test "dir<=" / "dir>=" compares
# jkg/direct with the bound; "<=" / ">=" compares jkg's own value (in the row's unit).
TARGETS = [
    ("execute round trip p50, plain client", "rt_json_p50", "dir<=", 1.1),
    ("execute round trip p50, plain client", "rt_v1_p50", "dir<=", 1.1),
    ("gateway CPU per execute (us)", "cpu_exec_json", "<=", 400),
    ("gateway CPU per execute (us)", "cpu_exec_v1", "<=", 400),
    ("parallel executes, 8 kernels", "par_json", "dir>=", 0.95),
    ("parallel executes, 8 kernels", "par_v1", "dir>=", 0.95),
    ("gateway CPU per small iopub message (us)", "cpu_small_json", "<=", 50),
    ("gateway CPU per small iopub message (us)", "cpu_small_v1", "<=", 50),
    ("50 x 2 MB outputs, JSON format", "large_json", "dir>=", 0.9),
    ("50 x 2 MB outputs, v1 format", "large_v1", "dir>=", 1.0),
    ("one print to 100 clients, last delivery (ms)", "fanout_json", "<=", 100),
    ("one print to 100 clients, last delivery (ms)", "fanout_v1", "<=", 100),
    ("1,000 idle WebSockets: gateway RSS (MB)", "idle_ws_rss", "<=", 50),
    ("stalled client, 500 MB streams: RSS growth (MB)", "slow_rss", "<=", 64),
    ("stalled client: other client's speed vs unloaded", "slow_speed", ">=", 0.8),
]


def build_targets(measures: Measures, args):
    out = []
    units = {key: unit for key, _, unit, _ in ROWS}
    for what, key, test, bound in TARGETS:
        what = what.replace("8 kernels", f"{args.par_kernels} kernels")
        what = what.replace("100 clients", f"{args.fanout_clients} clients")
        what = what.replace("1,000 idle", f"{args.idle_sockets:,} idle")
        what = what.replace("500 MB", f"{args.slow_mb:g} MB")
        what = what.replace("50 x 2 MB", f"{args.large_count} x {args.large_size / 1e6:g} MB")
        vals = measures.values.get(key, {})
        jkg, d, kg = vals.get("jkg"), vals.get("direct"), vals.get("kg")
        tested = _ratio(jkg, d) if test.startswith("dir") else jkg
        if tested is None:
            verdict = "-"
        elif test.endswith("<="):
            verdict = "PASS" if tested <= bound else "FAIL"
        else:
            verdict = "PASS" if tested >= bound else "FAIL"
        out.append({"target": what, "measure": key, "unit": units.get(key, ""), "test": test,
                    "bound": bound, "jkg": jkg, "direct": d, "kg": kg,
                    "jkg/direct": _ratio(jkg, d), "jkg/kg": _ratio(jkg, kg), "result": verdict})
    return out


def print_targets(targets):
    if not any(t["jkg"] is not None for t in targets):
        return
    head = (f"{'target (issue 4)':<50} {'measure':<15} {'bound':>10} {'jkg':>9} {'jkg/dir':>8}"
            f" {'jkg/kg':>8} {'result':>6}")
    print()
    print(head)
    print("-" * len(head))

    def r(x):
        return "-" if x is None else f"x{x:.2f}"

    for t in targets:
        bound = ("jkg/dir " if t["test"].startswith("dir") else "") + t["test"][-2:] + f" {t['bound']:g}"
        print(f"{t['target']:<50} {t['measure']:<15} {bound:>10} {_fmt_val(t['jkg'], t['unit']):>9} "
              f"{r(t['jkg/direct']):>8} {r(t['jkg/kg']):>8} {t['result']:>6}")


def _loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        return None


def machine_info() -> dict:
    info = {"platform": platform.platform(), "cpus": os.cpu_count(),
            "python": sys.version.split()[0]}
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    info["cpu"] = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Benchmark direct ZMQ vs jupyter-kernel-gateway 3.0.1 vs jkg.")
    p.add_argument("--targets", default="direct,kg,jkg",
                   help="comma list of direct,kg,jkg (default: all three)")
    p.add_argument("--jkg-cmd", default=None,
                   help="command to start jkg; must contain {port} "
                        "(default: twistd -n --pidfile= jkg --ip 127.0.0.1 --port {port})")
    p.add_argument("--kg-venv", default=str(HERE / ".venv-kg"),
                   help="venv for jupyter-kernel-gateway (created when missing)")
    p.add_argument("--json-out", default=None, help="write results as JSON here")
    p.add_argument("--kernel-name", default="python3")
    p.add_argument("--n", type=int, default=300, help="round trips per format (300)")
    p.add_argument("--warmup", type=int, default=30, help="warm-up executes (30)")
    p.add_argument("--small-count", type=int, default=20000)
    p.add_argument("--large-count", type=int, default=50)
    p.add_argument("--large-size", type=int, default=2_000_000, help="bytes per large output")
    p.add_argument("--par-kernels", type=int, default=8)
    p.add_argument("--par-execs", type=int, default=100, help="executes per kernel")
    p.add_argument("--fanout-clients", type=int, default=100)
    p.add_argument("--fanout-reps", type=int, default=5)
    p.add_argument("--large-reps", type=int, default=3,
                   help="repetitions of the 2 MB workload on one connection; the median is reported (3)")
    p.add_argument("--idle-sockets", type=int, default=1000,
                   help="idle WebSockets opened for the RSS measure (1000; 0 skips it)")
    p.add_argument("--slow-mb", type=float, default=500,
                   help="MB of output streamed for the stalled-client measure (500; 0 skips it)")
    p.add_argument("--slow-chunk", type=int, default=2_000_000, help="bytes per output there")
    p.add_argument("--slow-format", choices=FORMATS, default="v1",
                   help="format of the reading and the stalled client (v1)")
    p.add_argument("--no-quickack", dest="quickack", action="store_false",
                   help="skip the extra round trips whose client sets TCP_QUICKACK")
    p.add_argument("--no-optional", action="store_true",
                   help="skip the parallel, fan-out, idle-WebSocket and stalled-client workloads")
    p.add_argument("--startup-timeout", type=float, default=60.0)
    p.add_argument("--measure-timeout", type=float, default=90.0,
                   help="deadline of one measure, seconds")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = set(args.targets) - {"direct", "kg", "jkg"}
    if bad:
        p.error(f"unknown targets: {', '.join(sorted(bad))}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid>: where is it stuck?
    atexit.register(cleanup_all)
    logdir = Path(tempfile.mkdtemp(prefix="jkg-bench-"))
    log(f"logs and kernel cwd: {logdir}")
    measures = Measures()
    runner = Runner(args, measures)
    meta = {"started": _now_iso(), "machine": machine_info(), "args": {
        k: v for k, v in vars(args).items()}, "targets": {}, "skipped": {}}
    t_start = time.monotonic()
    rc = 0
    meta["loadavg_start"] = _loadavg()
    if meta["loadavg_start"] and meta["loadavg_start"][0] > 0.5:
        log(f"warning: load average {meta['loadavg_start'][0]:.2f} at start; something "
            "else is using the CPUs and the numbers will be noisy")
    try:
        for name in args.targets:
            t0 = time.monotonic()
            try:
                # (the kg venv may be built here: pip gets up to 900 s)
                with HardLimit(args.startup_timeout + 960, f"starting {name}"):
                    if name == "direct":
                        target = DirectTarget(args.kernel_name, logdir)
                    elif name == "kg":
                        target = make_kg(args, logdir)
                    else:
                        target = make_jkg(args, logdir)
                    target.start()
            except (TargetUnavailable, BenchTimeout, OSError, subprocess.SubprocessError) as e:
                first, *rest = str(e).splitlines() or [""]
                print(f"SKIP {name}: {first}", flush=True)
                for ln in rest:
                    print(ln, flush=True)
                meta["skipped"][name] = str(e)
                if name != "direct":
                    for proc in list(_PROCS):
                        stop_process_tree(proc)
                        _PROCS.remove(proc)
                continue
            try:
                runner.run_target(target)
            finally:
                meta["targets"][name] = dict(target.info(), seconds=time.monotonic() - t0)
                try:
                    with HardLimit(120, f"stopping {name}"):
                        target.stop()
                except BenchTimeout as e:
                    log(f"[{name}] stop: {e}")
    except (KeyboardInterrupt, SystemExit) as e:
        rc = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 130
        log("interrupted: stopping everything, partial results follow")
        meta["interrupted"] = True
    finally:
        cleanup_all()
    meta["loadavg_end"] = _loadavg()
    meta["seconds"] = time.monotonic() - t_start
    rows = build_report(measures, args)
    print_table(rows, measures)
    targets = build_targets(measures, args)
    print_targets(targets)
    print(f"\ntotal {time.monotonic() - t_start:.0f}s; logs in {logdir}")
    if args.json_out:
        out = {"meta": meta, "rows": rows, "targets": targets, "values": measures.values,
               "details": measures.details, "errors": measures.errors,
               "notes": measures.notes}
        Path(args.json_out).write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(f"JSON written to {args.json_out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
