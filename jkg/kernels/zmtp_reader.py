"""The reading half of a ZMTP connection: frames out of the socket, messages to the consumer.

:class:`ZmtpReader` is mixed into :class:`jkg.kernels.zmtp.ZmtpConnection`,
which owns the socket, the state and the buffers; it is kept apart because it
is the hot path and the part measured against pyzmq's reader.  Small frames
are copied out of one read buffer; a large frame (``LARGE_FRAME`` or more) is
received straight into a buffer of its own (from the gateway's
:class:`~jkg.kernels.zmtp_wire.BufferPool`) and handed on as a read-only view.

Every byte from a kernel is hostile: each frame header is checked against the
gateway's :class:`~jkg.kernels.zmtp_wire.ReadLimits` (frame size, message
size, frames per message) before anything is stored, a large frame's buffer
starts at ``FIRST_ALLOCATION`` and grows only as its bytes arrive, and each
frame costs ``FRAME_COST`` bytes of the read budget, so a flood of tiny frames
yields to other kernels as often as a flood of bytes does.
"""
from __future__ import annotations

from twisted.logger import Logger

from .zmtp_wire import (CLOSED, COMMAND, FIRST_ALLOCATION, FRAME_COST, FRAME_SLICE, GREETING_WAIT, HANDSHAKE,
                        LARGE_FRAME, LONG, MORE, READ_BUDGET, READY, RECONNECT_FIRST, ProtocolError, check_greeting,
                        command, frame_refusal, parse_properties)

log = Logger()


class ZmtpReader:
    """``doRead`` and the frame parser of :class:`~jkg.kernels.zmtp.ZmtpConnection`."""

    def doRead(self) -> None:  # noqa: N802 - Twisted API
        budget = READ_BUDGET
        while budget > 0:
            sock = self._sock
            if sock is None:
                return
            big = self._big
            try:
                if big is not None:
                    wanted = len(big) - self._big_filled
                    count = sock.recv_into(big[self._big_filled:])
                else:
                    if self._end == len(self._buf):
                        self._compact()
                    wanted = len(self._buf) - self._end
                    count = sock.recv_into(self._view[self._end:])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self._lost(error)
                return
            if not count:
                self._lost("closed by the kernel")
                return
            budget -= count
            full = count == wanted
            if big is not None:
                self._big_filled += count
                if not full:
                    return  # drained for now (epoll is level-triggered: more data wakes us again)
                if self._big_filled < self._big_size:
                    self._grow_big()
                    continue
                self._big = None
                self._frame(self._big_flags, big.toreadonly())
                if self._sock is None:
                    return
            else:
                self._end += count
            try:
                budget -= self._parse() * FRAME_COST
            except ProtocolError as error:
                self._owner.errors.report(self._address, "ZMTP protocol error", str(error))
                self._lost(error)
                return
            if self._sliced:
                self._later()  # frames are left in the buffer: go on in a later turn, after the others
                return
            if not full:
                return  # the socket is drained (epoll is level-triggered: more data wakes us again)

    def _later(self) -> None:
        if self._drain_call is None:
            self._drain_call = self._reactor.callLater(0, self._drain)

    def _drain(self) -> None:
        """Go on with frames left in the read buffer by a sliced :meth:`_parse`."""
        self._drain_call = None
        if self._sock is None or self._paused or not self._sliced:
            return
        try:
            self._parse()
        except ProtocolError as error:
            self._owner.errors.report(self._address, "ZMTP protocol error", str(error))
            self._lost(error)
            return
        if self._sliced:
            self._later()

    def _grow_big(self) -> None:
        """Double the large frame's buffer (up to its size): memory follows the bytes that came."""
        big = self._big
        size = min(self._big_size, 2 * len(big))
        grown = memoryview(bytearray(size))
        grown[:self._big_filled] = big[:self._big_filled]
        self._big = grown

    def _compact(self) -> None:
        start, end = self._start, self._end
        if start:
            self._buf[:end - start] = self._view[start:end]
            self._start, self._end = 0, end - start

    # -- frames ------------------------------------------------------------------------
    def _parse(self) -> int:
        """Handle every complete frame in the read buffer; dispatch complete messages.

        :returns: how many frames were seen (for the read budget).
        """
        buf, view = self._buf, self._view
        pos, end = self._start, self._end
        state = self._state
        if state == GREETING_WAIT:
            if end - pos < 64:
                return 0
            check_greeting(bytes(view[pos:pos + 64]))
            pos += 64
            self._state = state = HANDSHAKE
        messages = []
        frames = self._frames
        limits = self._owner.limits
        max_frame, max_frames, max_message = limits.max_frame, limits.max_frames, limits.max_message
        message_bytes = self._message_bytes
        seen = 0
        self._sliced = False
        while True:
            if seen >= FRAME_SLICE:
                self._sliced = True
                break
            avail = end - pos
            if avail < 2:
                break
            flags = buf[pos]
            if flags & LONG:
                if avail < 9:
                    break
                size = int.from_bytes(view[pos + 1:pos + 9], "big")
                start = pos + 9
            else:
                size = buf[pos + 1]
                start = pos + 2
            stop = start + size
            if flags & COMMAND:
                if size > 0xFFFF:
                    raise ProtocolError(f"command of {size} bytes")
                if stop > end:
                    break
                pos = stop
                self._command(bytes(view[start:stop]))
                state = self._state
                continue
            if size > max_frame or len(frames) >= max_frames or message_bytes + size > max_message:
                self._frames, self._message_bytes = [], 0
                if messages:  # the complete ones before it are fine
                    self._dispatch(messages)
                raise ProtocolError(frame_refusal(limits, size, len(frames), message_bytes))
            if stop > end:
                if size >= LARGE_FRAME:
                    if state != READY:
                        raise ProtocolError("message before the handshake")
                    first = min(size, FIRST_ALLOCATION)
                    big = self._owner.buffers.get(first)[:first]
                    big[:end - start] = view[start:end]
                    self._big, self._big_filled, self._big_flags, self._big_size = big, end - start, flags, size
                    message_bytes += size
                    pos = end
                break
            if state != READY:
                raise ProtocolError("message before the handshake")
            frames.append(bytes(view[start:stop]) if size < LARGE_FRAME else memoryview(bytes(view[start:stop])))
            seen += 1
            pos = stop
            if flags & MORE:
                message_bytes += size
            else:
                messages.append(frames)
                frames = []
                message_bytes = 0
        self._frames = frames
        self._message_bytes = message_bytes
        if pos == end:
            pos = end = 0
        self._start, self._end = pos, end
        if messages:
            self._dispatch(messages)
        return seen

    def _frame(self, flags: int, body) -> None:
        """A large frame received into its own buffer."""
        self._frames.append(body)
        if not flags & MORE:
            messages, self._frames = [self._frames], []
            self._message_bytes = 0
            self._dispatch(messages)

    def _dispatch(self, messages: list) -> None:
        on_message = self.on_message
        for frames in messages:
            if self._state == CLOSED:
                break
            try:
                on_message(frames)
            except Exception:  # noqa: BLE001 - one bad message must not stop the connection
                log.failure("handling a message from a kernel")
        on_read_done = self.on_read_done
        if on_read_done is not None:
            try:
                on_read_done()
            except Exception:  # noqa: BLE001 - nor one bad batch
                log.failure("handling the messages of a read from a kernel")

    def _command(self, data: bytes) -> None:
        if not data:
            raise ProtocolError("empty command")
        name = data[1:1 + data[0]]
        body = data[1 + data[0]:]
        if name == b"READY":
            if self._state != HANDSHAKE:
                raise ProtocolError("READY after the handshake")
            props = parse_properties(body)
            peer = props.get("socket-type", b"")
            expected = {b"DEALER": (b"ROUTER", b"DEALER", b"REP"),
                        b"SUB": (b"PUB", b"XPUB")}.get(self._socket_type, ())
            if peer not in expected:
                raise ProtocolError(f"a {peer.decode('ascii', 'replace')} socket cannot talk to a "
                                    f"{self._socket_type.decode()} socket")
            self._state = READY
            self._delay = RECONNECT_FIRST
            if self._subscribe:
                # A one-byte message subscribes to everything (ZMTP 3.0).  It may only
                # follow the kernel's READY: before that, libzmq would take it for a
                # malformed handshake command and drop the connection.
                self._write([b"\x00\x01\x01"])
            self._flush_queued()
            if self.on_ready is not None:
                self.on_ready()
        elif name == b"ERROR":
            raise ProtocolError(f"kernel refused the connection: {body[1:1 + body[:1][0]] if body else b''!r}")
        elif name == b"PING":  # ZMTP 3.1 heartbeat: answer with its context
            self._write([command(b"PONG", body[2:])])
        # PONG and anything else: nothing to do
