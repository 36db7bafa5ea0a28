"""What environment a kernel gets: pure policy over hostile client input.

jupyter_server's gateway client sends its *whole* process environment in the
``env`` of ``POST /api/kernels``.  A kernel must see only ``PATH``, the
gateway variables an operator whitelisted, the client's ``KERNEL_*`` values
(validated, bounded) and ``KERNEL_GATEWAY=1`` -- never the rest, and never the
gateway's auth token.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from ..errors import BadRequest

MAX_VALUE_LENGTH = 8192
MAX_VARIABLES = 256
_KERNEL_VAR = re.compile(r"KERNEL_[A-Za-z0-9_]{1,128}\Z")
_PLAIN_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_SECRET_NAMES = frozenset({"KG_AUTH_TOKEN", "JKG_AUTH_TOKEN"})


def validate_client_env(env: Any) -> dict[str, str]:
    """Check the type and size of a request's ``env``; return it as a dict.

    :raises BadRequest: when ``env`` is not an object of strings or is too big.
    """
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise BadRequest("env must be a JSON object of strings")
    if len(env) > 4096:
        raise BadRequest("env has too many variables")
    return env


def kernel_env(
    client_env: Mapping[str, Any],
    process_env: Mapping[str, str],
    process_whitelist: Iterable[str] = (),
    client_whitelist: Iterable[str] = (),
) -> dict[str, str]:
    """The environment a new kernel is started with.

    :raises BadRequest: for a ``KERNEL_*`` (or whitelisted) value that is not
        a string, contains a NUL, or is longer than :data:`MAX_VALUE_LENGTH`.
    """
    env: dict[str, str] = {}
    if "PATH" in process_env:
        env["PATH"] = process_env["PATH"]
    for name in process_whitelist:
        if name in process_env and name not in _SECRET_NAMES:
            env[name] = process_env[name]
    allowed_plain = {name for name in client_whitelist if _PLAIN_VAR.match(name)} - _SECRET_NAMES
    taken = 0
    for name, value in client_env.items():
        if not isinstance(name, str) or not (_KERNEL_VAR.match(name) or name in allowed_plain):
            continue  # silently dropped, as jupyter-kernel-gateway does
        if not isinstance(value, str):
            raise BadRequest(f"env value for {name} must be a string")
        if len(value) > MAX_VALUE_LENGTH or "\x00" in value:
            raise BadRequest(f"env value for {name} is too long or contains NUL")
        taken += 1
        if taken > MAX_VARIABLES:
            raise BadRequest("too many KERNEL_* variables")
        env[name] = value
    env["KERNEL_GATEWAY"] = "1"
    return env


def launch_timeout(client_env: Mapping[str, str], default: float) -> float:
    """Honour ``KERNEL_LAUNCH_TIMEOUT`` within sane bounds (1 s .. 10x the gateway's)."""
    raw = client_env.get("KERNEL_LAUNCH_TIMEOUT")
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest("KERNEL_LAUNCH_TIMEOUT must be a number of seconds") from None
    if not value > 0:
        raise BadRequest("KERNEL_LAUNCH_TIMEOUT must be positive")
    return min(max(value, 1.0), default * 10)
