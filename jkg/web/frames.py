"""Server WebSocket frames built once per message and format, shared by every client of that format.

Server frames are unmasked (RFC 6455 5.1), so the bytes are the same for
every client: a message fanned out to many clients costs one encoding, not
one per client (:class:`FrameCache`).
Small frames are one joined ``bytes``; large ones stay a list of pieces (the
kernel's parts are never copied into a joined frame unless a client is behind
and its bytes must wait in Twisted's buffer).
"""
from __future__ import annotations

from .. import wire


#: Frames smaller than this are joined into one ``bytes`` (one write per client);
#: larger ones keep the kernel's parts as separate pieces (no copy).
JOIN_BELOW = 64 * 1024
MAX_PIECES = 512  # well under IOV_MAX


class Frame:
    """One server-to-client WebSocket frame, shared by every client of a format.

    Server frames are unmasked (RFC 6455 5.1), so the bytes are the same for
    every client.  ``pieces`` concatenated are the frame; ``size`` its length.
    """

    __slots__ = ("pieces", "size", "_joined")

    def __init__(self, payload_pieces: list, binary: bool):
        size = sum(map(len, payload_pieces))
        header = wire.server_frame_header(size, binary)
        size += len(header)
        if size < JOIN_BELOW or len(payload_pieces) > MAX_PIECES:
            self._joined = b"".join([header, *payload_pieces])
            self.pieces = (self._joined,)
        else:
            self._joined = None
            self.pieces = (header, *payload_pieces)
        self.size = size

    def joined(self) -> bytes:
        """The whole frame as one ``bytes`` (what Twisted's buffer accepts); made once."""
        if self._joined is None:
            self._joined = b"".join(self.pieces)
        return self._joined


class FrameCache:
    """The frames of what is being fanned out, per format: built by its first client of a format.

    A kernel hands one message, or one read's list of messages, to all its
    clients in one go before the next (``ManagedKernel._broadcast_all``), so
    remembering only the last message and the last list is enough for every
    client of a format to write the same frames -- and the kernel's message
    type carries no web state.  It keeps them alive until the next (at most
    one read's worth per gateway).  A message delivered again later (from a
    replay buffer) is simply encoded again.
    """

    __slots__ = ("_message", "_frames", "_batch", "_batch_frames")

    def __init__(self):
        self._message = None
        self._frames: dict = {}
        self._batch = None  # the last list of messages fanned out together
        self._batch_frames: dict = {}  # its frames, per format

    def frames(self, messages: list, wire_format: str, encode) -> list:
        """The frames of ``messages`` (one list, handed to every client in turn) for ``wire_format``."""
        if messages is not self._batch:
            self._batch = messages
            frames = [encode(message) for message in messages]
            self._batch_frames = {wire_format: frames}
            return frames
        frames = self._batch_frames.get(wire_format)
        if frames is None:
            frames = self._batch_frames[wire_format] = [encode(message) for message in messages]
        return frames

    def frame(self, message, wire_format: str, encode) -> Frame:
        """``message``'s frame for ``wire_format``, made with ``encode(message)`` when not made yet."""
        if message is not self._message:
            self._message = message
            frame = encode(message)
            self._frames = {wire_format: frame}
            return frame
        frame = self._frames.get(wire_format)
        if frame is None:
            frame = self._frames[wire_format] = encode(message)
        return frame


def encode_v1_frame(message) -> Frame:
    return Frame(wire.encode_v1_pieces(message.channel, message.parts), True)


def encode_legacy_frame(message) -> Frame:
    pieces, binary = wire.encode_legacy_pieces(message.channel, message.parts, message.msg_id, message.msg_type)
    return Frame(pieces, binary)

