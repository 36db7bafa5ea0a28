"""Listener endpoint strings (``tcp:8888:interface=...``, ``unix:/path``), read without Twisted.

The configuration and the startup checks need two facts about an endpoint
description before any endpoint is built: whether it can only be reached from
this machine (serving without credentials is refused otherwise, and ``--sandbox
auto`` turns the sandbox on), and which permissions a UNIX socket gets.
Pure string work, so the checks can run before the reactor is chosen.
"""
from __future__ import annotations

import ipaddress

_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback_endpoint(description: str) -> bool:
    """Whether a listener endpoint can only be reached from this machine.

    ``tcp``/``tcp6``/``ssl`` count as loopback only with an explicit
    ``interface=`` in 127.0.0.0/8 or ``::1``; UNIX sockets are local; anything
    else (``systemd:`` sockets, no interface, other addresses) is not.
    """
    kind, _, rest = description.partition(":")
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    fields = {}
    for item in rest.replace("\\:", "\0").split(":"):
        key, sep, value = item.partition("=")
        if sep:
            fields[key] = value.replace("\0", ":")
    interface = fields.get("interface", "")
    if interface in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def with_socket_mode(description: str, mode: int) -> str:
    """A ``unix:`` endpoint string with ``mode=`` set, unless it sets one already.

    Twisted creates UNIX sockets 0666 by default: any local user could
    connect, which matters most when no credentials are configured.
    """
    kind, _, rest = description.partition(":")
    if kind != "unix":
        return description
    keys = {item.partition("=")[0] for item in rest.replace("\\:", "\0").split(":")}
    if "mode" in keys:
        return description
    return f"{description}:mode={mode:o}"

