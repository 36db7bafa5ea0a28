"""One kernel's channel set: the gateway's ZMTP connections to it, with signing and checking.

One SUB connection receives the kernel's iopub stream (fanned out by the
kernel object to every client), and one DEALER connection per request
channel (shell, control, stdin) carries every client's requests.  The DEALERs
share one identity so that the kernel's stdin ``input_request`` -- addressed
to whoever sent the shell request -- arrives on our stdin connection.  Replies
are routed to clients by the parent ``msg_id``, which is why one set of
connections serves all clients.  The heartbeat connection is opened by the
first ping.

Messages are checked and signed here (:class:`~jkg.kernels.signer.Signer`)
with the kernel's key; the key never leaves this module and the launcher.
On a connection that cannot be tampered with in transit -- a UNIX socket or
loopback TCP, where only root could splice into it -- the first correctly
signed message proves that the peer holds the key, and the rest of that
connection is not checked again (the HMAC of every byte was over half the
gateway's CPU on large outputs); each new connection, after a reconnect too,
proves itself again.  On any other address every message is checked.
(jupyter_server's v1 WebSocket path checks no kernel signature at all.)
The connections themselves are :mod:`jkg.kernels.zmtp`'s.
"""
from __future__ import annotations

import ipaddress
import uuid
from typing import Callable, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from ..interfaces import IKernelChannels
from .messages import DELIMITER, KernelMessage, MalformedMessage, parse_kernel_frames
from .pacing import IopubPacer
from .signer import Signer
from .zmtp import ZmqContext, ZmtpConnection

log = Logger()

REQUEST_CHANNELS = ("shell", "control", "stdin")


def is_local_connection(info: dict) -> bool:
    """Whether the kernel's sockets are reached over UNIX sockets or loopback TCP (no one in between)."""
    if info.get("transport", "tcp") == "ipc":
        return True
    try:
        return ipaddress.ip_address(str(info.get("ip", "")).strip("[]")).is_loopback
    except ValueError:  # a host name: whatever it resolves to, treat it as remote
        return False


def _address(info: dict, channel: str) -> str:
    port = info[f"{channel}_port"]
    if info.get("transport", "tcp") == "ipc":
        return f"ipc://{info['ip']}-{port}"
    ip = info["ip"]
    return f"tcp://[{ip}]:{port}" if ":" in ip else f"tcp://{ip}:{port}"


@implementer(IKernelChannels)
class KernelChannels:
    """The gateway's connections to one kernel, with message signing and checking.

    :param zmq_context: the gateway's :class:`ZmqContext` (see :func:`make_factory`).
    :param on_messages: called as ``on_messages([KernelMessage, ...])`` with
        the correctly signed messages that one read from one of the kernel's
        sockets brought, in order (so a burst of output is handled, and
        written to each client, as one batch).
    :param iopub_hold: seconds iopub is left unread after each read while
        the kernel streams output (``--iopub-batch-ms``; 0: never), see
        :mod:`jkg.kernels.pacing`.
    :param label: names the kernel in logs (the kernel passes its id);
        empty: the shell address.
    """

    def __init__(self, zmq_context: ZmqContext, connection_info: dict,
                 on_messages: Callable[[list], None], iopub_hold: float = 0.0, label: str = ""):
        key = connection_info.get("key", b"")
        if isinstance(key, str):
            key = key.encode("ascii")
        self._signer = Signer(key, connection_info.get("signature_scheme", "hmac-sha256"))
        self._on_messages = on_messages
        self._batch: list[KernelMessage] = []  # the checked messages of the read under way
        self._pacer = IopubPacer(hold=iopub_hold) if iopub_hold > 0 else None
        self._local = is_local_connection(connection_info)
        self._proven: set[str] = set()  # channels whose current connection showed it holds the key
        #: names the kernel in logs: the ``label`` given (its id), else its shell address
        self.label = label or _address(connection_info, "shell")
        self.identity = uuid.uuid4().hex.encode("ascii")
        self._zmq = zmq_context
        self._info = connection_info
        self.on_connected: Callable[[], None] | None = None
        self.closed = False
        self._hb: ZmtpConnection | None = None  # opened by the first ping
        self._pings: dict[bytes, Deferred] = {}
        self._waiting = {"iopub", *REQUEST_CHANNELS}  # handshakes not yet completed
        self._sockets: dict[str, ZmtpConnection] = {}
        self._sockets["iopub"] = ZmtpConnection(
            zmq_context, b"SUB", _address(connection_info, "iopub"),
            lambda frames: self._frames_received("iopub", frames), subscribe=True,
            on_ready=lambda: self._connected("iopub"), on_read_done=self._iopub_read_done)
        for channel in REQUEST_CHANNELS:
            self._sockets[channel] = ZmtpConnection(
                zmq_context, b"DEALER", _address(connection_info, channel),
                lambda frames, channel=channel: self._frames_received(channel, frames),
                identity=self.identity, on_ready=lambda channel=channel: self._connected(channel),
                on_read_done=self._read_done)

    @property
    def all_connected(self) -> bool:
        """Whether every connection has completed its handshake with the kernel.

        A kernel's stdin ROUTER drops an ``input_request`` addressed to a
        peer whose handshake is not done yet, so a kernel is not ready for
        clients until all four are connected, not just shell.
        """
        return not self._waiting

    def _connected(self, channel: str) -> None:
        self._proven.discard(channel)  # a new connection: it proves itself again
        if channel not in self._waiting:
            return
        self._waiting.discard(channel)
        if not self._waiting and self.on_connected is not None:
            self.on_connected()

    def sign(self, parts: Sequence) -> bytes:
        return self._signer.sign(parts)

    def ping(self, timeout: float) -> Deferred:
        """Ping the kernel's heartbeat channel; fire ``True`` on the echo, ``False`` after ``timeout``.

        The heartbeat is an echo (a ROUTER device in ipykernel, a REP socket in
        others): ``[b"", token]`` -- a REQ-style envelope both understand --
        comes back as it went.  The connection is opened by the first ping and
        kept; pings to an unreachable kernel wait (bounded) until it answers.
        """
        if self.closed or "hb_port" not in self._info:
            return succeed(False)
        if self._hb is None:
            self._hb = ZmtpConnection(self._zmq, b"DEALER", _address(self._info, "hb"), self._echo)
        token = b"jkg-ping-" + uuid.uuid4().hex.encode("ascii")
        answered: Deferred = Deferred(lambda d: self._pings.pop(token, None))
        answered.addTimeout(timeout, self._zmq.reactor, onTimeoutCancel=lambda result, timeout: False)
        self._pings[token] = answered
        self._hb.send([b"", token])
        return answered

    def _echo(self, frames: list) -> None:
        answered = self._pings.pop(bytes(frames[-1]), None) if frames else None
        if answered is not None:
            answered.callback(True)

    def pause_iopub(self) -> None:
        """Stop reading iopub (flow control: the clients are behind); it waits in the sockets."""
        socket = self._sockets.get("iopub")
        if socket is not None:
            socket.pause_reading()

    def resume_iopub(self) -> None:
        socket = self._sockets.get("iopub")
        if socket is not None:
            socket.resume_reading()

    def send(self, channel: str, parts: Sequence) -> None:
        """Sign ``[header, parent, metadata, content, *buffers]`` and send it.

        Only the four JSON parts' bytes are signed; nothing is re-encoded.
        """
        if self.closed:
            return
        self._sockets[channel].send([DELIMITER, self._signer.sign(parts), *parts])

    def _frames_received(self, channel: str, frames: list) -> None:
        try:
            message = parse_kernel_frames(channel, frames)
        except MalformedMessage as error:
            self._zmq.errors.report(self.label, f"malformed {channel} message", str(error))
            return
        if channel not in self._proven:
            if not self._signer.verify(message.parts, message.signature):
                self._zmq.errors.report(self.label, f"badly signed {channel} message")
                return
            if self._local:
                self._proven.add(channel)
        self._batch.append(message)

    def _read_done(self) -> None:
        batch = self._batch
        if batch:
            self._batch = []
            if not self.closed:
                self._on_messages(batch)

    def _iopub_read_done(self) -> None:
        pacer = self._pacer
        if pacer is not None and self._batch:
            hold = pacer.after_read(self._batch)
            if hold:
                self._sockets["iopub"].hold_reading(hold)
        self._read_done()

    def close(self) -> None:
        """Close every connection; late sends become no-ops."""
        if self.closed:
            return
        self.closed = True
        for connection in [*self._sockets.values(), *([self._hb] if self._hb is not None else [])]:
            try:
                connection.close()
            except Exception:  # noqa: BLE001 - closing must not fail the caller
                log.failure("closing a kernel connection")
        self._sockets.clear()
        self._hb = None
        pings, self._pings = self._pings, {}
        for answered in pings.values():
            answered.callback(False)  # (its timeout is cancelled with it)
