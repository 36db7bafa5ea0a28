"""Keeping the gateway's secrets out of its kernels' reach.

:func:`read_token_file` lets the shared token live in a file instead of the
command line or the environment (both readable in ``/proc`` by processes of
the same uid); :func:`make_non_dumpable` sets ``PR_SET_DUMPABLE`` to 0 so that
processes of the same uid can neither ptrace the gateway nor read its
``/proc/<pid>/environ``, ``mem`` or ``fd`` (the kernel also makes those files
root's).  Blocking; called once at startup.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import stat

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
MAX_TOKEN_FILE = 4096


class SecretsError(ValueError):
    """A token file that cannot be used; ``str()`` is one line."""


def read_token_file(path: str) -> str:
    """The token in ``path`` (first line, whitespace stripped); refuses files others can read."""
    try:
        info = os.stat(path)
        with open(path, encoding="utf-8") as handle:
            text = handle.read(MAX_TOKEN_FILE + 1)
    except OSError as error:
        raise SecretsError(f"cannot read the token file {path}: {error.strerror}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretsError(f"the token file {path} is readable by others (mode {stat.S_IMODE(info.st_mode):o}); "
                           "chmod 600 it")
    if len(text) > MAX_TOKEN_FILE:
        raise SecretsError(f"the token file {path} is too large")
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise SecretsError(f"the token file {path} is empty")
    return token


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def make_non_dumpable() -> bool:
    """prctl(PR_SET_DUMPABLE, 0); False where the platform has no prctl."""
    try:
        libc = _libc()
    except OSError:
        return False
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        return False
    return libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0
