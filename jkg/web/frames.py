"""Server WebSocket frames built once per message and format, shared by every client of that format.

Server frames are unmasked (RFC 6455 5.1), so the bytes are the same for
every client: a message fanned out to many clients costs one encoding, not
one per client (the frame is cached on the message, ``KernelMessage.encoded``).
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




def encode_v1_frame(message) -> Frame:
    return Frame(wire.encode_v1_pieces(message.channel, message.parts), True)


def encode_legacy_frame(message) -> Frame:
    pieces, binary = wire.encode_legacy_pieces(message.channel, message.parts, message.msg_id, message.msg_type)
    return Frame(pieces, binary)

