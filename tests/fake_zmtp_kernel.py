"""A hostile kernel: plain sockets speaking just enough ZMTP 3.0 to be served in bridge mode.

``python fake_zmtp_kernel.py CONNECTION_FILE`` listens on the five ports of a
connection file (written here), answers ``kernel_info_request`` on shell with a
correctly signed reply and an iopub ``status``, and echoes heartbeats, so a
gateway adopts it as a ready kernel.  An ``execute_request`` whose code names
an attack makes it misbehave on iopub:

* ``huge``: a frame header announcing 1 GiB, then a trickle of bytes;
* ``flood N``: N MiB of two-byte single-frame messages;
* ``junk N``: N well-framed but unsigned, malformed messages.

It then answers the request normally, so the test sees it is alive.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import selectors
import socket
import sys
import uuid

GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
MORE, LONG, COMMAND = 1, 2, 4


def frame(data: bytes, flags: int = 0) -> bytes:
    if len(data) < 256:
        return bytes((flags, len(data))) + data
    return bytes((flags | LONG,)) + len(data).to_bytes(8, "big") + data


def message(frames) -> bytes:
    return b"".join(frame(f, MORE if i < len(frames) - 1 else 0) for i, f in enumerate(frames))


def ready(socket_type: bytes) -> bytes:
    body = bytes((5,)) + b"READY" + bytes((11,)) + b"Socket-Type" + len(socket_type).to_bytes(4, "big") + socket_type
    return frame(body, COMMAND)


class Peer:
    def __init__(self, sock, channel):
        self.sock, self.channel, self.buf, self.greeted, self.frames = sock, channel, b"", False, []

    def messages(self, data: bytes):
        self.buf += data
        if not self.greeted:
            if len(self.buf) < 64:
                return
            self.buf, self.greeted = self.buf[64:], True
        while len(self.buf) >= 2:
            flags = self.buf[0]
            if flags & LONG:
                if len(self.buf) < 9:
                    return
                size, start = int.from_bytes(self.buf[1:9], "big"), 9
            else:
                size, start = self.buf[1], 2
            if len(self.buf) < start + size:
                return
            body, self.buf = self.buf[start:start + size], self.buf[start + size:]
            if flags & COMMAND:
                continue
            self.frames.append(body)
            if not flags & MORE:
                frames, self.frames = self.frames, []
                yield frames


def main(path: str) -> None:
    key = uuid.uuid4().hex
    listeners, info = {}, {"ip": "127.0.0.1", "transport": "tcp", "key": key, "signature_scheme": "hmac-sha256",
                           "kernel_name": "fake"}
    for channel in ("shell", "iopub", "stdin", "control", "hb"):
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        server.setblocking(False)
        listeners[server] = channel
        info[f"{channel}_port"] = server.getsockname()[1]
    with open(path, "w") as handle:
        json.dump(info, handle)

    def sign(parts):
        mac = hmac.new(key.encode(), digestmod=hashlib.sha256)
        for part in parts:
            mac.update(part)
        return mac.hexdigest().encode()

    def kernel_message(msg_type, parent, content):
        header = {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "session": "fake", "username": "fake",
                  "date": "2026-01-01T00:00:00.000000Z", "version": "5.3"}
        parts = [json.dumps(x).encode() for x in (header, parent, {}, content)]
        return message([b"<IDS|MSG>", sign(parts), *parts])

    selector = selectors.DefaultSelector()
    for server in listeners:
        selector.register(server, selectors.EVENT_READ)
    iopub: list[socket.socket] = []

    def publish(data: bytes) -> None:
        for sock in list(iopub):
            try:
                sock.setblocking(True)
                sock.sendall(data)
                sock.setblocking(False)
            except OSError:
                iopub.remove(sock)

    def attack(code: str) -> None:
        words = code.split()
        if words[0] == "huge":
            publish(bytes((LONG,)) + (1 << 30).to_bytes(8, "big") + b"h" * 65536)
        elif words[0] == "flood":
            chunk = frame(b"z") * 65536
            for _ in range(int(words[1]) * 1024 * 1024 // len(chunk) + 1):
                publish(chunk)
        elif words[0] == "junk":
            publish(message([b"<IDS|MSG>", b"bad", b"{", b"}", b"x", b"y"]) * int(words[1]))

    while True:
        for key_, _ in selector.select():
            sock = key_.fileobj
            if sock in listeners:
                conn, _ = sock.accept()
                channel = listeners[sock]
                conn.sendall(GREETING + ready(b"PUB" if channel == "iopub" else b"ROUTER"))
                conn.setblocking(False)
                if channel == "iopub":
                    iopub.append(conn)
                selector.register(conn, selectors.EVENT_READ, Peer(conn, channel))
                continue
            peer = key_.data
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                selector.unregister(sock)
                sock.close()
                if sock in iopub:
                    iopub.remove(sock)
                continue
            for frames in peer.messages(data):
                if peer.channel == "hb":
                    sock.sendall(message(frames))
                    continue
                if peer.channel not in ("shell", "control") or b"<IDS|MSG>" not in frames:
                    continue
                parts = frames[frames.index(b"<IDS|MSG>") + 2:]
                header = json.loads(parts[0])
                msg_type = header["msg_type"]
                publish(kernel_message("status", header, {"execution_state": "busy"}))
                if msg_type == "execute_request":
                    attack(json.loads(parts[3]).get("code", "") or "none")
                    reply = ("execute_reply", {"status": "ok", "execution_count": 1, "user_expressions": {}})
                else:
                    reply = (msg_type.replace("_request", "_reply"),
                             {"status": "ok", "protocol_version": "5.3", "implementation": "fake",
                              "implementation_version": "0", "language_info": {"name": "fake"}, "banner": ""})
                sock.setblocking(True)
                sock.sendall(kernel_message(reply[0], header, reply[1]))
                sock.setblocking(False)
                publish(kernel_message("status", header, {"execution_state": "idle"}))


if __name__ == "__main__":
    main(sys.argv[1])
