"""Kernel message dicts to WebSocket frames and back, on the client side.

The gateway's own codecs (:mod:`jkg.wire`) do the framing: ``encode_v1`` /
``decode_v1`` for ``v1.kernel.websocket.jupyter.org``, ``encode_legacy`` for the
legacy JSON format (the layout is the same in both directions).  What is left
here is turning parts into the message dicts jupyter_client's API hands out
(the shape ``Session.deserialize`` produces: dates parsed, buffers as
memoryviews) and back.  No signature is added or checked: the gateway signs
what it forwards to the kernel and has verified what it forwards to us.

Incoming legacy JSON is parsed leniently (``json.loads``): a gateway such as
jupyter_server writes it with Python's defaults, which allow ``NaN``.
"""
from __future__ import annotations

import json
from typing import Any

from jupyter_client.jsonutil import extract_dates
from jupyter_client.session import json_packer

from ..wire import V1_PROTOCOL, WireError, decode_v1, encode_legacy, encode_v1, split_legacy_binary

__all__ = ["V1_PROTOCOL", "encode_message", "decode_frame", "message_from_parts", "CodecError"]

class CodecError(ValueError):
    """A frame from the gateway that is not a kernel message."""


def message_parts(msg: dict) -> list[bytes]:
    """``[header, parent_header, metadata, content, *buffers]`` as bytes, dates ISO-formatted."""
    parts = [json_packer(msg["header"]), json_packer(msg.get("parent_header") or {}),
             json_packer(msg.get("metadata") or {}), json_packer(msg.get("content") or {})]
    parts.extend(bytes(buffer) for buffer in msg.get("buffers") or ())
    return parts


def encode_message(channel: str, msg: dict, v1: bool) -> tuple[bytes | str, bool]:
    """The frame for ``msg`` on ``channel``: ``(payload, is_binary)``.

    Legacy frames without buffers are text (``str``), as the format requires.
    """
    parts = message_parts(msg)
    if v1:
        return encode_v1(channel, parts), True
    header = msg["header"]
    payload, binary = encode_legacy(channel, parts, header["msg_id"], header["msg_type"])
    return (payload, True) if binary else (payload.decode("utf-8"), False)


def _message(header: Any, parent: Any, metadata: Any, content: Any, buffers: list) -> dict:
    if not isinstance(header, dict) or "msg_type" not in header or "msg_id" not in header:
        raise CodecError("message without a valid header")
    return {
        "header": extract_dates(header),
        "msg_id": header["msg_id"],
        "msg_type": header["msg_type"],
        "parent_header": extract_dates(parent if isinstance(parent, dict) else {}),
        "metadata": metadata if isinstance(metadata, dict) else {},
        "content": content if isinstance(content, dict) else {},
        "buffers": [memoryview(bytes(b)) for b in buffers],
    }


def message_from_parts(parts: list[bytes]) -> dict:
    """The message dict for raw parts (as a v1 frame carries them)."""
    try:
        header, parent, metadata, content = (json.loads(bytes(p).decode("utf-8")) for p in parts[:4])
    except (ValueError, UnicodeDecodeError) as error:
        raise CodecError(f"message part is not JSON: {error}") from None
    return _message(header, parent, metadata, content, list(parts[4:]))


def _split_legacy_binary(frame: bytes) -> tuple[dict, list[bytes]]:
    """The JSON message (parsed leniently) and the buffers of a legacy binary frame."""
    try:
        data, buffers = split_legacy_binary(frame)
    except WireError as error:
        raise CodecError(f"bad legacy binary frame: {error}") from None
    try:
        return json.loads(bytes(data).decode("utf-8")), buffers
    except (ValueError, UnicodeDecodeError):
        raise CodecError("legacy binary frame does not start with JSON") from None


def decode_frame(frame: bytes | str, v1: bool) -> tuple[str, dict]:
    """``(channel, message)`` for one frame from the gateway.

    :raises CodecError: a frame that is not a kernel message.
    """
    if v1 and isinstance(frame, bytes):
        try:
            channel, parts = decode_v1(frame)
        except ValueError as error:
            raise CodecError(f"bad v1 frame: {error}") from None
        return channel, message_from_parts(parts)
    if isinstance(frame, str):
        try:
            data, buffers = json.loads(frame), []
        except ValueError:
            raise CodecError("legacy text frame is not JSON") from None
    else:
        data, buffers = _split_legacy_binary(frame)
    if not isinstance(data, dict):
        raise CodecError("legacy frame is not a JSON object")
    channel = data.get("channel") or "shell"
    return channel, _message(data.get("header"), data.get("parent_header"), data.get("metadata"),
                             data.get("content"), buffers)
