"""Which asyncio event loop the reactor runs on (``--event-loop``).

On a quiet gateway every kernel message is a wake-up of its own, and the
event loop's turn is a fixed part of each: measured side by side on this
project's 2-core machine, a bare forwarder (one ``recv`` and one ``send``
per wake-up) costs 51-65 µs of CPU per message on asyncio's pure-Python
loop and 38-52 µs on uvloop (libuv, compiled), and the whole gateway 2-20 %
less per execute and per small message on uvloop (benchmarks/README.md,
"The machine's floor, a core of its own, and the event loop").  So uvloop
is used when it can be imported (``auto``); ``asyncio`` is the standard
library's loop.

The choice only applies when jkg installs the reactor itself; a reactor
installed before (``twistd --reactor=asyncio``, an embedding application)
keeps its loop, and :func:`describe` says which one runs.
"""
from __future__ import annotations

import asyncio
from typing import Callable

CHOICES = ("auto", "asyncio", "uvloop")


class EventLoopError(Exception):
    """The loop asked for cannot be had; the message is one line for the operator."""


def _import_uvloop():
    import uvloop

    return uvloop


def resolve(choice: str, import_uvloop: Callable[[], object] = _import_uvloop) -> str:
    """``asyncio`` or ``uvloop``: ``auto`` is uvloop when it can be imported.

    :raises EventLoopError: ``uvloop`` was asked for and cannot be imported.
    """
    if choice == "asyncio":
        return choice
    try:
        import_uvloop()
    except ImportError as error:
        if choice == "auto":
            return "asyncio"
        raise EventLoopError(f"--event-loop uvloop: uvloop cannot be imported ({error}); "
                             "install it (pip install uvloop) or use --event-loop asyncio") from None
    return "uvloop"


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    """A new loop of kind ``name``, as :func:`resolve` returns it."""
    return _import_uvloop().new_event_loop() if name == "uvloop" else asyncio.new_event_loop()


def describe(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: the kind of a running loop, for the startup log."""
    return "uvloop" if type(loop).__module__.split(".")[0] == "uvloop" else "asyncio"
