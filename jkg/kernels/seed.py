"""Seed notebooks: code every new kernel runs before anyone gets it.

The notebook is read once at startup (a local path or ``file://`` URL); its
code cells run in each new kernel, pooled ones included, through the
gateway's private request path.  A cell that fails fails the start with a
message naming the cell, and the kernel is shut down.
"""
from __future__ import annotations

import json
from urllib.parse import urlsplit

from twisted.internet.defer import inlineCallbacks

from ..errors import KernelLaunchError


class SeedError(ValueError):
    """A seed notebook that cannot be read; ``str()`` is a one-line reason."""


def read_seed(uri: str) -> list[str]:
    """The sources of the notebook's code cells, in order (blocking: call at startup)."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        raise SeedError("fetching a seed notebook over http(s) is not supported; download it and give its path")
    path = parts.path if parts.scheme == "file" else uri
    try:
        with open(path, encoding="utf-8") as handle:
            notebook = json.load(handle)
    except OSError as error:
        raise SeedError(f"cannot read seed notebook {path}: {error.strerror}") from None
    except ValueError as error:
        raise SeedError(f"seed notebook {path} is not JSON: {error}") from None
    cells = notebook.get("cells") if isinstance(notebook, dict) else None
    if not isinstance(cells, list):
        raise SeedError(f"seed notebook {path} has no cells list")
    sources = []
    for cell in cells:
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            source = cell.get("source", "")
            sources.append("".join(source) if isinstance(source, list) else str(source))
    return sources


@inlineCallbacks
def run_seed(kernel, cells: list[str], timeout: float):
    """Run every seed cell in ``kernel``; raise KernelLaunchError naming the first that fails."""
    for number, code in enumerate(cells, start=1):
        if not code.strip():
            continue
        reply = yield kernel.execute_quietly(code, timeout)
        if reply.get("status") != "ok":
            raise KernelLaunchError(
                f"seed notebook cell {number} failed: {reply.get('ename', 'error')}: {reply.get('evalue', '')}")
