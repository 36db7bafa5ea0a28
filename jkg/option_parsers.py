"""The parsers of option values: one raw string in, one validated value out.

Each parser takes the text a user typed (command line or environment) and
returns the typed value the configuration holds, or raises ``ValueError``
with a short reason; :func:`jkg.config.build_config` turns that into a
one-line :class:`~jkg.config.ConfigError` naming the flag or variable.
Kept apart from the option table so the table reads as a list of settings
and the parsers can be tested on their own.  Pure: no Twisted, no I/O.
"""
from __future__ import annotations

from typing import Callable


def boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    return port


def non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"must not be negative: {number}")
    return number


def optional_limit(value: str) -> int | None:
    """A limit where 0 or an empty string means "no limit"."""
    if value.strip() == "":
        return None
    number = non_negative_int(value)
    return number or None


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(f"must be positive: {value}")
    return number


def non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError(f"must not be negative: {value}")
    return number


def comma_list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def base_url(value: str) -> str:
    """Normalise to ``/`` or ``/prefix/`` so routes can be joined blindly."""
    stripped = value.strip().strip("/")
    if any(c in stripped for c in "?#\\ ") or ".." in stripped.split("/"):
        raise ValueError(f"not a URL path: {value!r}")
    return "/" + stripped + "/" if stripped else "/"


def kernel_name(value: str) -> str:
    stripped = value.strip()
    if stripped and not all(c.isalnum() or c in "._-" for c in stripped):
        raise ValueError(f"not a kernel name: {value!r}")
    return stripped


def text(value: str) -> str:
    return value


def ip_address(value: str) -> str:
    """An IP address literal or ``localhost`` (``--ip``), so a typo is reported as one."""
    import ipaddress

    stripped = value.strip()
    if stripped == "localhost":
        return stripped
    try:
        return str(ipaddress.ip_address(stripped.strip("[]")))
    except ValueError:
        raise ValueError(f"not an IP address: {value!r}") from None


def choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        lowered = value.strip().lower()
        if lowered not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return lowered

    return parse


_PERSONALITIES = {"jupyter-websocket": "jupyter-websocket", "kernel_gateway.jupyter_websocket": "jupyter-websocket",
                  "notebook-http": "notebook-http", "kernel_gateway.notebook_http": "notebook-http"}


def personality(value: str) -> str:
    """The personality: the reference's module names and their short aliases."""
    try:
        return _PERSONALITIES[value.strip()]
    except KeyError:
        raise ValueError(f"unknown personality {value!r}; use jupyter-websocket or notebook-http") from None


def cell_parser(value: str) -> str:
    """The reference's two notebook-http parsers, by its module names ("" is the default)."""
    if value.strip() not in ("", "kernel_gateway.notebook_http.cell.parser",
                             "kernel_gateway.notebook_http.swagger.parser"):
        raise ValueError(f"{value!r} is not supported; use kernel_gateway.notebook_http.cell.parser (the "
                         "default) or kernel_gateway.notebook_http.swagger.parser")
    return value.strip()


def path_prefix(value: str) -> str:
    """``""`` (off) or ``/path`` without a trailing slash."""
    normalised = base_url(value)
    return "" if normalised == "/" else normalised.rstrip("/")


def file_mode(value: str) -> int:
    """An octal permission mode such as ``0600`` or ``660``."""
    mode = int(value.strip(), 8)
    if not 0 <= mode <= 0o777:
        raise ValueError(f"not a file mode: {value!r}")
    return mode

