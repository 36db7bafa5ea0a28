"""Pure lifecycle policy: when an idle kernel is culled, what a pooled kernel can honour.

Kept apart from the registry so the rules can be tested with plain values
(no clock, no processes) and read in one place.
"""
from __future__ import annotations

import datetime
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class CullPolicy:
    """jupyter_server's culling rules (``cull_idle_timeout`` and friends).

    A kernel is culled once it has been inactive for ``idle_timeout`` seconds,
    unless it has connections (and ``cull_connected`` is off) or is busy (and
    ``cull_busy`` is off).  A timeout of 0 turns culling off.
    """

    idle_timeout: float = 0
    cull_connected: bool = False
    cull_busy: bool = False

    @property
    def enabled(self) -> bool:
        return self.idle_timeout > 0

    def should_cull(self, last_activity: datetime.datetime, now: datetime.datetime, connections: int,
                    execution_state: str) -> bool:
        if not self.enabled:
            return False
        if connections and not self.cull_connected:
            return False
        if execution_state == "busy" and not self.cull_busy:
            return False
        return (now - last_activity).total_seconds() > self.idle_timeout


def parse_pool_sizes(entries, prespawn_count: int, default_name: str) -> dict[str, int]:
    """``--pool python3=4`` entries plus ``--prespawn-count`` (for the default kernelspec)."""
    sizes: dict[str, int] = {}
    if prespawn_count:
        sizes[default_name] = prespawn_count
    for entry in entries:
        name, sep, count = entry.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"pool entry {entry!r} is not NAME=COUNT")
        sizes[name.strip()] = int(count)
    return {name: count for name, count in sizes.items() if count > 0}


def env_injection(base_env: dict[str, str], wanted_env: dict[str, str]) -> dict[str, str] | None:
    """What a pooled kernel started with ``base_env`` lacks to look started with ``wanted_env``.

    ``None`` when the difference cannot be made up after the start (a
    variable would have to be removed or ``PATH`` changed): such a request
    needs a fresh kernel.
    """
    if any(name not in wanted_env for name in base_env):
        return None
    if wanted_env.get("PATH") != base_env.get("PATH"):
        return None
    return {name: value for name, value in wanted_env.items() if base_env.get(name) != value}


def python_env_update_code(variables: dict[str, str]) -> str:
    """Code that sets environment variables inside a Python kernel.

    The values are hostile client input: they travel as one JSON document in
    a Python string literal (``repr``), never spliced into code.
    """
    document = json.dumps(variables)
    return (f"import os as _jkg_os, json as _jkg_json\n"
            f"_jkg_os.environ.update(_jkg_json.loads({document!r}))\n"
            f"del _jkg_os, _jkg_json")


#: Launches of one start when the kernel lost a port to another process (see :func:`lost_a_port`).
PORT_RACE_ATTEMPTS = 3


def lost_a_port(exited: bool, stderr_tail: str) -> bool:
    """Whether a kernel that failed to start should simply be started again on new ports.

    jupyter_client finds free TCP ports by binding and closing them, then
    hands the numbers to the kernel; another process (another kernel, on a
    busy host) can take one in between, and the kernel exits at once with
    ZeroMQ's "Address already in use".  Only that failure is retried: a kernel
    that hung, or exited for any other reason, would fail again.
    """
    return exited and "Address already in use" in stderr_tail
