"""systemd readiness: ``READY=1`` on ``$NOTIFY_SOCKET`` once the listeners are up.

Twisted has no ``sd_notify``; the protocol is one datagram on a UNIX socket
(a leading ``@`` names the abstract namespace), so a unit with
``Type=notify`` knows the gateway accepts connections only when it really
does.
"""
from __future__ import annotations

import os
import socket

from twisted.application.service import Service


def notify(message: str, environ=os.environ) -> bool:
    """Send ``message`` to systemd; False when not running under a notify-aware unit."""
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
        except OSError:
            return False
    return True


class ReadyNotifier(Service):
    """Added last to the service tree, so it starts after every listener."""

    def startService(self):  # noqa: N802 - Twisted API
        super().startService()
        notify("READY=1\nSTATUS=serving kernels")

    def stopService(self):  # noqa: N802 - Twisted API
        notify("STOPPING=1")
        return super().stopService()
