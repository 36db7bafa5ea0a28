"""Test helpers: a real ``twistd jkg`` process and a real WebSocket kernel client.

Everything talks to 127.0.0.1 on ephemeral ports; every loop is bounded in
time; every process started here is stopped (and its kernels checked gone).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests
import websocket

from jkg import wire

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
_PORT_LINE = re.compile(rb"GatewaySite (?:\(TLS\) )?starting on (\d+)")


def kernel_pids() -> set[int]:
    """PIDs of every ipykernel process on the machine."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"ipykernel_launcher" in cmdline:
                pids.add(int(entry.name))
    return pids


def children_of(pid: int) -> set[int]:
    """Direct children of ``pid`` (kernels the gateway started)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_process(process: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``grace`` seconds; reaped either way."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


# Settings an in-process gateway (test_embedding) puts into the test process's environment for
# gateway_provisioners: a gateway started later must get only the ones its own test passes.
ENGINE_SETTINGS = ("GP_", "DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")


def inherited_environment() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not name.startswith(ENGINE_SETTINGS)}


class GatewayProcess:
    """``twistd -n jkg`` on an ephemeral loopback port.

    :param args: extra jkg options.
    :param env: extra environment variables.
    """

    def __init__(self, *args: str, env: dict | None = None, token: str = ""):
        self.args = list(args)
        self.token = token
        self.env = inherited_environment()
        self.env.update(env or {})
        # each gateway gets its own runtime directory (hence its own state database), removed in stop()
        self._own_runtime_dir = "JUPYTER_RUNTIME_DIR" not in (env or {})
        if self._own_runtime_dir:
            self.env["JUPYTER_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="jkg-runtime-")
        self.runtime_dir = self.env["JUPYTER_RUNTIME_DIR"]
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.output = bytearray()
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> "GatewayProcess":
        os.makedirs(self.runtime_dir, mode=0o700, exist_ok=True)  # again, when restarted after stop()
        has_listener = any(a.startswith("--listen") for a in self.args)
        cmd = [*TWISTD, "-n", "--pidfile=", "jkg", *([] if has_listener else ["--ip", "127.0.0.1", "--port", "0"]),
               *self.args]
        if self.token:
            cmd += ["--auth-token", self.token]
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env)
        found = threading.Event()

        def read():
            for line in iter(self.process.stdout.readline, b""):
                self.output += line
                match = _PORT_LINE.search(line)
                if match and not found.is_set():
                    self.port = int(match.group(1))
                    found.set()
            found.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not found.wait(timeout) or not self.port:
            self.stop()
            raise RuntimeError(f"gateway did not start:\n{self.output.decode(errors='replace')}")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def headers(self) -> dict:
        return {"Authorization": f"token {self.token}"} if self.token else {}

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {**self.headers(), **kwargs.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=kwargs.pop("timeout", 60), **kwargs)

    def start_kernel(self, **body) -> dict:
        response = self.request("POST", "/api/kernels", json=body)
        assert response.status_code == 201, f"{response.text}\n--- gateway output ---\n{self.output_tail()}"
        return response.json()

    def output_tail(self, limit: int = 4000) -> str:
        """The end of what the gateway printed: why a test's request failed, in the test's report."""
        return bytes(self.output[-limit:]).decode(errors="replace")

    def connect(self, kernel_id: str, session_id: str | None = None, v1: bool = False, **kwargs) -> "KernelClient":
        return KernelClient(self, kernel_id, session_id=session_id, v1=v1, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.process is None:
            self._remove_runtime_dir()
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        self._remove_runtime_dir()
        return self.process.returncode

    def _remove_runtime_dir(self):
        if self._own_runtime_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class KernelClient:
    """A Jupyter kernel WebSocket client (legacy JSON or v1 binary framing)."""

    def __init__(self, gateway: GatewayProcess, kernel_id: str, session_id: str | None = None, v1: bool = False,
                 token_in_query: bool = False, timeout: float = 30.0, ws_url: str | None = None, sslopt=None):
        self.session_id = session_id or uuid.uuid4().hex
        self.v1 = v1
        url = f"{ws_url or gateway.ws_url}/api/kernels/{kernel_id}/channels?session_id={self.session_id}"
        headers = []
        if gateway.token:
            if token_in_query:
                url += f"&token={gateway.token}"
            else:
                headers.append(f"Authorization: token {gateway.token}")
        self.ws = websocket.create_connection(
            url, header=headers, timeout=timeout,
            subprotocols=[wire.V1_PROTOCOL] if v1 else None, sslopt=sslopt)

    # -- sending ---------------------------------------------------------------
    def send(self, channel: str, msg_type: str, content: dict, buffers=(), parent: dict | None = None) -> str:
        msg_id = uuid.uuid4().hex
        header = {"msg_id": msg_id, "msg_type": msg_type, "username": "test", "session": self.session_id,
                  "date": "2026-01-01T00:00:00.000000Z", "version": "5.3"}
        if self.v1:
            parts = [json.dumps(x).encode() for x in (header, parent or {}, {}, content)] + [bytes(b) for b in buffers]
            self.ws.send_binary(wire.encode_v1(channel, parts))
        else:
            msg = {"header": header, "parent_header": parent or {}, "metadata": {}, "content": content,
                   "channel": channel}
            if buffers:
                frame = _legacy_binary(msg, list(buffers))
                self.ws.send_binary(frame)
            else:
                self.ws.send(json.dumps(msg))
        return msg_id

    def execute(self, code: str, allow_stdin: bool = False) -> str:
        return self.send("shell", "execute_request", {
            "code": code, "silent": False, "store_history": True, "user_expressions": {},
            "allow_stdin": allow_stdin, "stop_on_error": True})

    # -- receiving -------------------------------------------------------------
    def recv(self, timeout: float = 30.0) -> dict:
        """The next message as a dict with channel, header, parent_header, msg_type, content, buffers."""
        self.ws.settimeout(timeout)
        opcode, data = self.ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise ConnectionError("closed by server")
        if self.v1:
            channel, parts = wire.decode_v1(data)
            header = json.loads(parts[0])
            return {"channel": channel, "header": header, "msg_type": header["msg_type"],
                    "parent_header": json.loads(parts[1]), "metadata": json.loads(parts[2]),
                    "content": json.loads(parts[3]), "buffers": parts[4:]}
        if opcode == websocket.ABNF.OPCODE_BINARY:
            msg, buffers = _parse_legacy_binary(data)
            msg["buffers"] = buffers
            return msg
        return json.loads(data)

    def collect(self, msg_id: str, timeout: float = 60.0, reply_channel: str = "shell") -> list[dict]:
        """Messages answering ``msg_id`` until its reply and its iopub idle have arrived."""
        deadline = time.monotonic() + timeout
        got_reply = got_idle = False
        messages = []
        while not (got_reply and got_idle):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete answer to {msg_id}; got {[m['msg_type'] for m in messages]}")
            msg = self.recv(remaining)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            messages.append(msg)
            if msg["channel"] == reply_channel and msg["msg_type"].endswith("_reply"):
                got_reply = True
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                got_idle = True
        return messages

    def run(self, code: str, timeout: float = 60.0) -> list[dict]:
        return self.collect(self.execute(code), timeout)

    def wait_for(self, predicate, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("expected message did not arrive")
            msg = self.recv(remaining)
            if predicate(msg):
                return msg

    def start_sleep(self, seconds: float) -> str:
        """Execute a long ``time.sleep`` and return once the kernel is inside it.

        The cell prints first and the test waits for that output, then half a
        second more: ``print(flush=True)`` returns only after ipykernel's IO
        thread has answered the main thread, and a SIGINT that lands in that
        hand-over is ipykernel's to lose or garble.  A user pressing interrupt
        never hits that window; an interrupt test should not either.
        """
        msg_id = self.execute(f"import time; print('sleeping', flush=True); time.sleep({seconds})")
        self.wait_for(lambda m: m["msg_type"] == "stream" and "sleeping" in m["content"]["text"])
        time.sleep(0.5)
        return msg_id

    def close(self):
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def stdout_of(messages: list[dict]) -> str:
    return "".join(m["content"]["text"] for m in messages
                   if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")


def interrupted(messages: list[dict]) -> bool:
    """Whether the execute these messages answer was stopped by KeyboardInterrupt.

    Judged by the execute_reply, as @jupyterlab/services and nbclient judge a
    cell, not by the iopub ``error``: once in a few hundred interrupts IPython
    fails to format the KeyboardInterrupt's traceback and prints "Unexpected
    exception formatting exception" to stdout in place of the ``error``
    message, while the reply still says KeyboardInterrupt.
    """
    replies = [m["content"] for m in messages if m["msg_type"] == "execute_reply"]
    return bool(replies) and replies[-1].get("status") == "error" and replies[-1].get("ename") == "KeyboardInterrupt"


def _legacy_binary(msg: dict, buffers: list[bytes]) -> bytes:
    import struct

    payload = json.dumps(msg).encode()
    parts = [payload, *buffers]
    count = len(parts)
    offsets, position = [], 4 * (count + 1)
    for part in parts:
        offsets.append(position)
        position += len(part)
    return struct.pack(f">{count + 1}I", count, *offsets) + b"".join(parts)


def _parse_legacy_binary(data: bytes) -> tuple[dict, list[bytes]]:
    import struct

    (count,) = struct.unpack_from(">I", data)
    offsets = list(struct.unpack_from(f">{count}I", data, 4)) + [len(data)]
    parts = [data[offsets[i]:offsets[i + 1]] for i in range(count)]
    return json.loads(parts[0]), parts[1:]


def make_certificate(directory: Path, stem: str, issuer: tuple | None = None, ca: bool = True) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, self-signed or signed by ``issuer`` (cert path, key path)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1" if ca else stem)])
    issuer_name, issuer_key = name, key
    if issuer is not None:
        issuer_cert = x509.load_pem_x509_certificate(Path(issuer[0]).read_bytes())
        issuer_key = serialization.load_pem_private_key(Path(issuer[1]).read_bytes(), None)
        issuer_name = issuer_cert.subject
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256()))
    key_path, cert_path = directory / f"{stem}-key.pem", directory / f"{stem}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key."""
    return make_certificate(directory, "cert")
