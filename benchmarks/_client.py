"""asyncio clients, as a user's program would have them: all in the benchmark's one process.

:class:`WSClient` is a WebSocket to a gateway's ``/api/kernels/ID/channels``,
in the legacy JSON format (no subprotocol) or in
``v1.kernel.websocket.jupyter.org``, through `websockets
<https://websockets.readthedocs.io>`_ (the default) or aiohttp (``--ws-client
aiohttp``: its frame reader is compiled, and costs the client about a third of
websockets' CPU per 2 MB message).
:class:`ZMQClient` speaks ZeroMQ straight to the kernel with jupyter_client's
``Session`` (signatures checked): the floor.  Both decode only what a client
needs to follow an execution -- header and parent header, and the content of
``status``, ``execute_reply``, ``stream`` and ``error`` -- and both hand out
the same :class:`Msg`.  No gateway code is imported here: the clients never
share a process with the gateway they measure.
"""
from __future__ import annotations

import asyncio
import collections
import datetime
import struct
import time
import uuid

import orjson
import zmq
import zmq.asyncio
from websockets.asyncio.client import connect as ws_connect

V1 = "v1.kernel.websocket.jupyter.org"
FORMATS = ("json", "v1")
NEED_CONTENT = frozenset({"status", "execute_reply", "kernel_info_reply", "stream", "error"})
EXECUTE_DEFAULTS = {"silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True}

Msg = collections.namedtuple("Msg", "channel msg_type parent_id content nbytes")


class BenchError(Exception):
    """A measure went wrong (bad reply, kernel error, protocol mismatch)."""


def _header(msg_type: str, session: str) -> dict:
    return {"msg_id": uuid.uuid4().hex, "username": "bench", "session": session,
            "date": datetime.datetime.now(datetime.UTC).isoformat(),
            "msg_type": msg_type, "version": "5.3"}


# which WebSocket library the clients use: "websockets" or "aiohttp" (the harness's --ws-client)
LIBRARY = "websockets"


class _AiohttpSocket:
    """An aiohttp WebSocket with the few calls :class:`WSClient` makes of a websockets one."""

    def __init__(self, session, ws):
        self.session, self.ws = session, ws
        self.subprotocol = ws.protocol

    @classmethod
    async def connect(cls, url: str, subprotocols, ssl) -> _AiohttpSocket:
        import aiohttp

        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=30))
        try:
            ws = await session.ws_connect(url, protocols=subprotocols or (), max_msg_size=0, compress=0,
                                          heartbeat=None, ssl=ssl if ssl is not None else True)
        except BaseException:
            await session.close()
            raise
        return cls(session, ws)

    async def send(self, data) -> None:
        if isinstance(data, str):
            await self.ws.send_str(data)
        else:
            await self.ws.send_bytes(data)

    async def recv(self, decode=False):
        """The next data frame's payload: ``bytes``, or ``str`` for a text frame (aiohttp decodes those)."""
        import aiohttp

        msg = await self.ws.receive()
        if msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
            return msg.data
        raise ConnectionError(f"WebSocket ended: {msg.type.name} {msg.data!r} {msg.extra or ''}")

    async def close(self) -> None:
        try:
            await self.ws.close()
        finally:
            await self.session.close()


class WSClient:
    """One WebSocket to a kernel through a gateway."""

    def __init__(self, ws, fmt: str, session: str):
        self.ws, self.fmt, self.session = ws, fmt, session

    @classmethod
    async def open(cls, url: str, fmt: str, ssl=None) -> WSClient:
        subprotocols = [V1] if fmt == "v1" else None
        if LIBRARY == "aiohttp":
            ws = await _AiohttpSocket.connect(url, subprotocols, ssl)
        else:
            ws = await ws_connect(url, subprotocols=subprotocols, compression=None,
                                  max_size=None, ping_interval=None, proxy=None, open_timeout=30, ssl=ssl)
        if (ws.subprotocol or None) != (V1 if fmt == "v1" else None):
            await ws.close()
            raise BenchError(f"server selected subprotocol {ws.subprotocol!r} for format {fmt}")
        session = url.rsplit("session_id=", 1)[-1]
        return cls(ws, fmt, session)

    async def send(self, msg_type: str, content: dict, channel: str = "shell") -> str:
        header = _header(msg_type, self.session)
        if self.fmt == "json":
            await self.ws.send(orjson.dumps({"channel": channel, "header": header, "parent_header": {},
                                             "metadata": {}, "content": content, "buffers": []}).decode())
        else:
            parts = [channel.encode(), orjson.dumps(header), b"{}", b"{}", orjson.dumps(content)]
            offsets = [8 * (len(parts) + 2)]
            for part in parts:
                offsets.append(offsets[-1] + len(part))
            await self.ws.send(struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets) + b"".join(parts))
        return header["msg_id"]

    async def recv(self) -> Msg:
        data = await self.ws.recv(decode=False)
        if self.fmt == "v1":
            count = int.from_bytes(data[:8], "little")
            offs = struct.unpack_from(f"<{count}Q", data, 8)
            view = memoryview(data)
            header = orjson.loads(view[offs[1]:offs[2]])
            parent = orjson.loads(view[offs[2]:offs[3]])
            msg_type = header["msg_type"]
            content = orjson.loads(view[offs[4]:offs[5]]) if msg_type in NEED_CONTENT else None
            return Msg(bytes(view[offs[0]:offs[1]]).decode(), msg_type, parent.get("msg_id"), content, len(data))
        if isinstance(data, str) or data[:1] == b"{":
            m = orjson.loads(data)
        else:  # legacy binary framing (a message with buffers)
            count = int.from_bytes(data[:4], "big")
            offs = struct.unpack_from(f">{count}I", data, 4)
            m = orjson.loads(memoryview(data)[offs[0]:offs[1] if count > 1 else len(data)])
        return Msg(m.get("channel"), m["header"]["msg_type"], (m.get("parent_header") or {}).get("msg_id"),
                   m.get("content"), len(data))

    def stop_reading(self) -> None:
        """Nothing to do: nobody calls :meth:`recv`, so websockets stops reading its socket
        once its small frame queue is full."""

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.ws.close(), 2)
        except Exception:  # noqa: BLE001, S110 - closing is best effort
            pass

    async def execute(self, code: str) -> str:
        return await self.send("execute_request", dict(EXECUTE_DEFAULTS, code=code))


class ZMQClient:
    """ZeroMQ straight to the kernel's shell and iopub, with jupyter_client's Session."""

    _context: zmq.asyncio.Context | None = None

    def __init__(self, info: dict, iopub_only: bool = False):
        from jupyter_client.session import Session

        if ZMQClient._context is None:
            ZMQClient._context = zmq.asyncio.Context()
        self.session = Session(key=info["key"] if isinstance(info["key"], bytes) else info["key"].encode(),
                               signature_scheme=info.get("signature_scheme", "hmac-sha256"))
        url = f"{info.get('transport', 'tcp')}://{info['ip']}:"
        self.queue: asyncio.Queue = asyncio.Queue()
        self.sockets = []
        iopub = self._context.socket(zmq.SUB)
        iopub.setsockopt(zmq.SUBSCRIBE, b"")
        iopub.connect(url + str(info["iopub_port"]))
        self.sockets.append(iopub)
        self.shell = None
        if not iopub_only:
            self.shell = self._context.socket(zmq.DEALER)
            self.shell.connect(url + str(info["shell_port"]))
            self.sockets.append(self.shell)
        self.tasks = [asyncio.ensure_future(self._read(iopub, "iopub"))]
        if self.shell is not None:
            self.tasks.append(asyncio.ensure_future(self._read(self.shell, "shell")))

    async def _read(self, sock, channel: str) -> None:
        session, put = self.session, self.queue.put_nowait
        while True:
            parts = await sock.recv_multipart(copy=True)
            _, msg_list = session.feed_identities(parts, copy=True)
            m = session.deserialize(msg_list, content=False, copy=True)
            msg_type = m["header"]["msg_type"]
            content = orjson.loads(m["content"]) if msg_type in NEED_CONTENT else None
            put(Msg(channel, msg_type, m["parent_header"].get("msg_id"), content, sum(map(len, parts))))

    async def send(self, msg_type: str, content: dict, channel: str = "shell") -> str:
        msg = self.session.msg(msg_type, content)
        await self.shell.send_multipart(self.session.serialize(msg))
        return msg["header"]["msg_id"]

    async def recv(self) -> Msg:
        return await self.queue.get()

    async def execute(self, code: str) -> str:
        return await self.send("execute_request", dict(EXECUTE_DEFAULTS, code=code))

    def stop_reading(self) -> None:
        """Leave whatever the kernel sends in the ZeroMQ socket (a client that stalled)."""
        for task in self.tasks:
            task.cancel()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for sock in self.sockets:
            sock.close(linger=0)


async def wait_execution(client, msg_id: str, on_iopub=None) -> dict:
    """Read until ``msg_id``'s ``execute_reply`` and iopub idle are in; the reply's content.

    ``on_iopub(msg)`` sees every other iopub message of that execution.
    """
    reply = None
    idle = False
    while reply is None or not idle:
        m = await client.recv()
        if m.parent_id != msg_id:
            continue
        if m.channel == "shell":
            if m.msg_type == "execute_reply":
                reply = m.content
        elif m.msg_type == "status":
            idle = idle or m.content.get("execution_state") == "idle"
        elif m.msg_type == "error":
            raise BenchError(f"kernel error: {m.content.get('ename')}: {m.content.get('evalue')}")
        elif on_iopub is not None:
            on_iopub(m)
    if reply.get("status") != "ok":
        raise BenchError(f"execute_reply {reply.get('status')}")
    return reply


async def run(client, code: str, on_iopub=None) -> dict:
    return await wait_execution(client, await client.execute(code), on_iopub)


async def wait_ready(client, timeout: float = 60) -> None:
    """``kernel_info_request`` until a reply comes (retried, as real clients do: iopub may not be live yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg_id = await client.send("kernel_info_request", {})
        try:
            async with asyncio.timeout(2):
                while True:
                    m = await client.recv()
                    if m.parent_id == msg_id and m.msg_type == "kernel_info_reply":
                        break
            # and iopub flows: one execution seen to its idle
            async with asyncio.timeout(10):
                await run(client, "pass")
            return
        except TimeoutError:
            continue
    raise BenchError("kernel never answered kernel_info")
