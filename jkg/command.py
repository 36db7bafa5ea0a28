"""``jkg ARGS`` (the console script) and ``python -m jkg ARGS``: ``twistd -n --pidfile= jkg ARGS``.

A convenience with the same flags; ``twistd jkg`` stays the way to run jkg
(daemonizing, logfiles, ``--reactor``).  twistd runs in this very process,
not as a child, so the pid systemd names in ``LISTEN_PID`` for socket
activation stays right, and signals reach the gateway directly.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    sys.argv = ["twistd", "-n", "--pidfile=", "jkg", *args]
    from twisted.scripts.twistd import run

    run()
