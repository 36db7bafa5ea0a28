"""From a cell's output to an HTTP response (pure).

The reference's precedence: an ``error`` gives 500 with ``Error <ename>:
<evalue> \\n``; else the cell's stdout (stderr is dropped); else the
``execute_result`` mimebundle as JSON; else an empty body -- all as
``text/plain``, status 200, unless a ResponseInfo cell printed
``{"status": ..., "headers": {...}}``.

jkg adds rich responses: when a cell printed nothing but displayed something
(``display_data``, which the reference drops), the richest representation
becomes the body with its own content type -- an image or PDF as bytes
(Jupyter carries them base64-encoded), HTML, SVG or JSON as text.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field

#: representations tried in order for a display_data response
RICH_ORDER = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "application/pdf",
              "image/svg+xml", "text/html", "application/json", "text/markdown", "text/latex")
MAX_OUTPUT = 64 * 1024 * 1024
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
#: framing headers the gateway owns; a ResponseInfo cell setting them is ignored for them
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
                      "trailer"})


class ResponseInfoError(ValueError):
    """What a ResponseInfo cell printed cannot be applied; ``str()`` says why."""


class OutputTooLarge(ValueError):
    """A cell produced more output than a response may carry."""


@dataclass
class CellOutput:
    """What one execution produced on iopub (only what a response can use)."""

    stdout: list = field(default_factory=list)
    result: dict | None = None
    displays: list = field(default_factory=list)
    error: tuple[str, str] | None = None
    size: int = 0

    def add(self, msg_type: str, content: dict) -> None:
        """Take one iopub message's content (hostile: only expected shapes are used)."""
        if not isinstance(content, dict):
            return
        if msg_type == "stream":
            if content.get("name", "stdout") == "stdout" and isinstance(content.get("text"), str):
                self._grow(len(content["text"]))
                self.stdout.append(content["text"])
        elif msg_type == "execute_result" and isinstance(content.get("data"), dict):
            self._grow(sum(len(v) for v in content["data"].values() if isinstance(v, str)))
            self.result = content["data"]
        elif msg_type == "display_data" and isinstance(content.get("data"), dict):
            self._grow(sum(len(v) for v in content["data"].values() if isinstance(v, str)))
            self.displays.append(content["data"])
        elif msg_type == "error":
            self.error = (str(content.get("ename", "")), str(content.get("evalue", "")))

    def _grow(self, amount: int) -> None:
        self.size += amount
        if self.size > MAX_OUTPUT:
            raise OutputTooLarge(f"the cell's output exceeds {MAX_OUTPUT} bytes")

    def text(self) -> str:
        """The reference's text result: stdout, else the execute_result bundle as JSON, else ""."""
        if self.stdout:
            return "".join(self.stdout)
        if self.result:
            return json.dumps(self.result)
        return ""


@dataclass
class Response:
    status: int = 200
    headers: dict = field(default_factory=lambda: {"Content-Type": "text/plain"})
    body: bytes = b""


def error_text(error: tuple[str, str]) -> str:
    return f"Error {error[0]}: {error[1]} \n"


def _rich(bundle: dict) -> tuple[str, bytes] | None:
    for mimetype in RICH_ORDER:
        if mimetype in bundle:
            return mimetype, _decode(mimetype, bundle[mimetype])
    for mimetype, value in bundle.items():  # anything else but plain text, e.g. application/octet-stream
        if mimetype != "text/plain" and "/" in mimetype:
            return mimetype, _decode(mimetype, value)
    return None


def _is_text(mimetype: str) -> bool:
    return (mimetype.startswith("text/") or mimetype == "application/json" or mimetype.endswith("+json")
            or mimetype.endswith("+xml") or mimetype == "application/javascript")


def _decode(mimetype: str, value) -> bytes:
    if _is_text(mimetype):
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return "".join(value).encode("utf-8")
        return json.dumps(value).encode("utf-8")
    if not isinstance(value, str):
        raise ResponseInfoError(f"display data {mimetype} is not base64 text")
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError):
        raise ResponseInfoError(f"display data {mimetype} is not valid base64") from None


def build_response(output: CellOutput) -> Response:
    """The response for a cell's output, before ResponseInfo."""
    if output.error is not None:
        return Response(500, {"Content-Type": "text/plain"}, error_text(output.error).encode("utf-8"))
    if not output.stdout and output.displays:
        for bundle in reversed(output.displays):
            try:
                rich = _rich(bundle)
            except ResponseInfoError as error:
                return Response(500, {"Content-Type": "text/plain"}, f"Error {error}\n".encode())
            if rich is not None:
                mimetype, body = rich
                content_type = mimetype + ("; charset=utf-8" if _is_text(mimetype) else "")
                return Response(200, {"Content-Type": content_type}, body)
    return Response(200, {"Content-Type": "text/plain"}, output.text().encode("utf-8"))


def apply_response_info(response: Response, printed: str) -> Response:
    """Apply what a ResponseInfo cell printed: JSON ``{"status"?: int, "headers"?: {str: str}}``.

    :raises ResponseInfoError: for anything else (the caller answers 500 with the reason).
    """
    try:
        info = json.loads(printed)
    except ValueError:
        raise ResponseInfoError(f"the ResponseInfo cell printed no JSON object: {printed[:200]!r}") from None
    if not isinstance(info, dict):
        raise ResponseInfoError("the ResponseInfo cell must print a JSON object")
    status = info.get("status", response.status)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ResponseInfoError(f"ResponseInfo status must be an integer from 100 to 599, got {status!r}")
    headers = info.get("headers", {})
    if not isinstance(headers, dict):
        raise ResponseInfoError("ResponseInfo headers must be an object")
    merged = dict(response.headers)
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise ResponseInfoError(f"ResponseInfo header name {name!r} is not valid")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or "\r" in value or "\n" in value or "\0" in value:
            raise ResponseInfoError(f"ResponseInfo header {name} must be a one-line string")
        if name.lower() in _FRAMING:
            continue
        for existing in [key for key in merged if key.lower() == name.lower()]:
            del merged[existing]
        merged[name] = value
    return Response(status, merged, response.body)
