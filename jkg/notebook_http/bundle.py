"""The ``REQUEST`` a cell sees, built from an HTTP request (pure).

The format is jupyter-kernel-gateway's, byte for byte, because notebook code
parses it: ``{"body", "args", "path", "headers"}`` JSON-encoded, then encoded
again as a string literal and assigned to ``REQUEST`` (``my $REQUEST`` in
Perl, ``REQUEST=`` in bash).  ``body`` is parsed JSON for exactly
``application/json`` (the raw text when it does not parse), a dict of lists
for ``application/x-www-form-urlencoded`` and ``multipart/form-data`` (files
left out), and the UTF-8 text otherwise; ``args`` is the query as a dict of
lists; ``path`` the path parameters; ``headers`` a dict whose repeated headers
become lists, names in ``Title-Case`` as Tornado writes them.
"""
from __future__ import annotations

import json
from email.parser import BytesParser
from email.policy import HTTP
from typing import Iterable
from urllib.parse import parse_qs, unquote_to_bytes

from ..errors import BadRequest

FORM_URLENCODED = "application/x-www-form-urlencoded"
MULTIPART_FORM_DATA = "multipart/form-data"
APPLICATION_JSON = "application/json"
MAX_FORM_FIELDS = 1000


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"the {what} is not UTF-8") from None


def query_args(query: bytes) -> dict[str, list[str]]:
    """``a=1&a=2&b=`` -> ``{"a": ["1", "2"], "b": [""]}`` (blank values kept, as Tornado does)."""
    if not query:
        return {}
    text = _text(query, "query string")
    try:
        return parse_qs(text, keep_blank_values=True, errors="strict", max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError) as error:
        raise BadRequest(f"bad query string: {error}") from None


def _multipart(body: bytes, content_type: str) -> dict[str, list[str]]:
    """Form fields of a multipart body; uploaded files are not part of REQUEST (as in the reference)."""
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1")
                                                  + b"\r\n\r\n" + body)
    fields: dict[str, list[str]] = {}
    if not message.is_multipart():
        return fields
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name is None or part.get_filename() is not None:
            continue
        payload = part.get_payload(decode=True) or b""
        fields.setdefault(str(name), []).append(_text(payload, "form field"))
        if len(fields) > MAX_FORM_FIELDS:
            raise BadRequest("too many form fields")
    return fields


def parse_body(body: bytes, content_type: str | None):
    """The ``body`` member of REQUEST."""
    content_type = content_type or "text/plain"
    if content_type == FORM_URLENCODED:
        return query_args(body)
    if content_type.startswith(MULTIPART_FORM_DATA):
        return _multipart(body, content_type)
    text = _text(body, "request body") if body else ""
    if content_type == APPLICATION_JSON:
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def header_name(raw: str) -> str:
    """``x-custom-header`` -> ``X-Custom-Header`` (Tornado's normalisation)."""
    return "-".join(word.capitalize() for word in raw.split("-"))


def headers_dict(pairs: Iterable[tuple[str, str]]) -> dict:
    """Header pairs in arrival order; a repeated name collects its values in a list."""
    headers: dict = {}
    for raw_name, value in pairs:
        name = header_name(raw_name)
        if name not in headers:
            headers[name] = value
        elif isinstance(headers[name], list):
            headers[name].append(value)
        else:
            headers[name] = [headers[name], value]
    return headers


def path_params(raw: dict[str, str]) -> dict[str, str]:
    """Percent-decoded path parameters (``+`` stays a plus, as in Tornado's routing)."""
    return {name: _text(unquote_to_bytes(value), "path") for name, value in raw.items()}


def request_bundle(body, args: dict, path: dict, headers: dict) -> str:
    """The JSON text of REQUEST, keys in the reference's order and with its separators."""
    return json.dumps({"body": body, "args": args, "path": path, "headers": headers})


def assignment(bundle: str, language: str = "") -> str:
    """The statement that sets REQUEST in the kernel: the bundle as a string literal."""
    literal = json.dumps(bundle)
    lowered = language.lower()
    if lowered == "perl":
        return f"my $REQUEST = {literal}"
    if lowered == "bash":
        return f"REQUEST={literal}"
    return f"REQUEST = {literal}"


def combinable(language: str) -> bool:
    """Whether the assignment can run in the same execute request as the cell (one round trip).

    Only for Python, where a newline ends the statement and the cell's last
    expression stays the last one; other kernels get two requests, as in the reference.
    """
    return language.lower() in ("python", "")
