"""Pure helpers for Jupyter messages as ZeroMQ frames.

The gateway forwards message bytes; it parses only what routing needs (the
header and the parent's ``msg_id``).  Everything here is a pure function of
bytes so it can be tested without sockets and reused by the benchmarks.
"""
from __future__ import annotations

import datetime
import uuid
from typing import Sequence

import orjson

# orjson parses small headers several times faster than json.
loads = orjson.loads


def dumps(obj) -> bytes:
    return orjson.dumps(obj)


DELIMITER = b"<IDS|MSG>"
PROTOCOL_VERSION = "5.3"


class MalformedMessage(ValueError):
    """Frames from a kernel that are not a signed Jupyter message."""


class KernelMessage:
    """A kernel message with its JSON parts still as bytes.

    ``parts`` is ``[header, parent_header, metadata, content, *buffers]``, as
    bytes -- except that large content and buffers from a kernel may be
    ``memoryview``\\ s of ZeroMQ's buffers (never copied on the way through);
    every consumer here accepts either.  ``msg_id``/``msg_type``/``parent_id``
    come from parsing only the two headers, which is all routing needs.
    It carries no web state (the WebSocket frames are the web layer's,
    :class:`jkg.web.frames.FrameCache`).  ``execution_state`` is set for iopub ``status`` messages (their
    content is small and parsed once, for the kernel's state and the rate
    limits).
    """

    __slots__ = ("channel", "signature", "parts", "msg_id", "msg_type", "parent_id", "execution_state")

    def __init__(self, channel: str, signature: bytes, parts: list, msg_id: str, msg_type: str,
                 parent_id: str | None):
        self.channel = channel
        self.signature = signature
        self.parts = parts
        self.msg_id = msg_id
        self.msg_type = msg_type
        self.parent_id = parent_id
        self.execution_state: str | None = None

    @property
    def size(self) -> int:
        return sum(len(part) for part in self.parts)


def split_frames(frames: Sequence[bytes]) -> tuple[bytes, list]:
    """Drop routing identities; return ``(signature, parts)``."""
    for index, frame in enumerate(frames):  # noqa: B007 - ``index`` is used after the loop
        if frame == DELIMITER:
            break
    else:
        raise MalformedMessage("no <IDS|MSG> delimiter")
    signature = frames[index + 1] if len(frames) > index + 1 else b""
    parts = list(frames[index + 2:])
    if len(parts) < 4:
        raise MalformedMessage(f"{len(parts)} message parts, need at least 4")
    return signature, parts


def parse_kernel_frames(channel: str, frames: Sequence[bytes]) -> KernelMessage:
    """Split frames and parse the header and parent header (not the content)."""
    signature, parts = split_frames(frames)
    try:
        header = loads(parts[0])
        parent = loads(parts[1])
        msg_id = header["msg_id"]
        msg_type = header["msg_type"]
    except (ValueError, KeyError, TypeError) as error:
        raise MalformedMessage(f"bad header: {error}") from None
    parent_id = parent.get("msg_id") if isinstance(parent, dict) else None
    return KernelMessage(channel, signature, parts, msg_id, msg_type, parent_id)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def isoformat(moment: datetime.datetime) -> str:
    """``%Y-%m-%dT%H:%M:%S.%fZ``, always with microseconds.

    jupyter_server's gateway client parses ``last_activity`` with exactly this
    format, so ``datetime.isoformat`` (which drops zero microseconds and writes
    ``+00:00``) is not good enough.
    """
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_header(msg_type: str, session: str, username: str = "jkg") -> dict:
    return {
        "msg_id": uuid.uuid4().hex,
        "msg_type": msg_type,
        "username": username,
        "session": session,
        "date": isoformat(utcnow()),
        "version": PROTOCOL_VERSION,
    }


def make_message_parts(msg_type: str, content: dict, session: str, parent: dict | None = None) -> list:
    """Build ``[header, parent, metadata, content]`` bytes for a message jkg itself sends."""
    return [dumps(make_header(msg_type, session)), dumps(parent or {}), b"{}", dumps(content)]


def status_parts(execution_state: str, session: str, reason: str = "") -> list:
    """An iopub ``status`` message the gateway injects (``restarting``, ``dead``, ...), with a reason if known."""
    content = {"execution_state": execution_state, **({"reason": reason} if reason else {})}
    return make_message_parts("status", content, session)


def local_message(channel: str, parts: list) -> KernelMessage:
    """Wrap parts jkg built itself (see :func:`status_parts`) for delivery."""
    header = loads(parts[0])
    message = KernelMessage(channel, b"", parts, header["msg_id"], header["msg_type"], None)
    if message.msg_type == "status":
        message.execution_state = loads(parts[3]).get("execution_state")
    return message
