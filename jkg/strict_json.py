"""Strict JSON for hostile input: exact parses (ints of any size stay ints), NaN/Infinity refused, compact output.

The fast parsers (msgspec, orjson) are accelerators only; whatever they
refuse or would read inexactly goes to :mod:`json`, so the result -- or the
refusal -- is always the standard library's.  Pure functions, used by
:mod:`jkg.wire` for client frames.
"""
from __future__ import annotations

import json
from typing import Any

import msgspec as _msgspec
import orjson as _orjson

# msgspec: a strict, exact decoder (ints of any size stay ints) 4x faster than json.
_fast_loads = _msgspec.json.Decoder().decode
_FAST_ERRORS: tuple = (_msgspec.DecodeError, _msgspec.ValidationError, ValueError, RecursionError)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # json.loads accepts NaN/Infinity otherwise


def loads_stdlib(data: str | bytes | memoryview) -> Any:
    """Exact parse (ints stay ints); strict UTF-8, and NaN/Infinity refused like orjson does."""
    if not isinstance(data, str):
        data = str(data, "utf-8")
    return json.loads(data, parse_constant=_reject_constant)


def pack_stdlib(obj: Any) -> bytes:
    """Compact UTF-8 JSON: no spaces, non-ASCII kept, NaN/Infinity refused.

    :raises ValueError: NaN/Infinity, or strings that cannot be UTF-8.
    :raises TypeError: objects JSON cannot represent.
    """
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


# Datetimes and dataclasses go to json (which refuses them): both paths accept the same.
_ORJSON_OPTIONS = _orjson.OPT_PASSTHROUGH_DATETIME | _orjson.OPT_PASSTHROUGH_DATACLASS


def pack_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON: no spaces, non-ASCII kept, NaN/Infinity refused.

    orjson is tried first; what it refuses (non-str keys, ints beyond 64 bits, lone
    surrogates) goes to :mod:`json`.  orjson writes NaN/Infinity as ``null``, so output
    containing ``null`` is redone with :mod:`json`, which refuses them.

    :raises ValueError: NaN/Infinity, or strings that cannot be UTF-8.
    :raises TypeError: objects JSON cannot represent.
    """
    try:
        out = _orjson.dumps(obj, option=_ORJSON_OPTIONS)
    except TypeError:
        out = b"null"
    return pack_stdlib(obj) if b"null" in out else out


def loads_header(raw: bytes) -> Any:
    """orjson as an accelerator only: it turns ints beyond 64 bits into floats and refuses
    some inputs json reads.  Standard header fields are all strings, which it reads
    exactly; any other header is re-read with the exact parser."""
    try:
        header = _orjson.loads(raw)
    except ValueError:
        header = None
    if type(header) is dict and all(type(v) is str for v in header.values()):
        return header
    return loads_stdlib(raw)


def loads_exact(data: str | bytes | memoryview) -> Any:
    """An exact parse: msgspec first; whatever it refuses (NaN, lone surrogates, numbers
    beyond float range, deep nesting) is left to :mod:`json`.

    :raises UnicodeDecodeError: not UTF-8.
    :raises ValueError: not JSON (RecursionError: nested too deep).
    """
    try:
        return _fast_loads(data)
    except _FAST_ERRORS:
        pass
    return loads_stdlib(data)
