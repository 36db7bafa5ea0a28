"""``python -m jkg.client execute NB.ipynb``: run a notebook on a remote gateway's kernel.

The same thing nbclient does locally, with the kernel on the gateway named by
``JKG_GATEWAY_URL`` (credentials from ``JKG_GATEWAY_TOKEN`` or
``JKG_GATEWAY_USER``/``JKG_GATEWAY_PASSWORD``): secrets stay out of the command
line, where other users of the machine could read them.  nbclient is an
optional dependency (the ``client`` extra), imported only here.

Exit status: 0 success, 1 a cell raised (the notebook is still written, with
the error in it), 2 the gateway or the arguments failed.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys

from .errors import GatewayClientError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jkg.client",
        description="Use a remote Jupyter gateway's kernels (JKG_GATEWAY_URL, JKG_GATEWAY_TOKEN, ...).")
    commands = parser.add_subparsers(dest="command", required=True)
    execute = commands.add_parser("execute", help="execute a notebook on the gateway and save the result")
    execute.add_argument("notebook", help="the .ipynb file to run")
    execute.add_argument("--output", "-o", help="where to write the executed notebook (default: in place)")
    execute.add_argument("--kernel", "-k", default="",
                         help="kernel name (default: the notebook's, else the gateway's default)")
    execute.add_argument("--timeout", type=float, default=None, help="seconds allowed per cell (default: none)")
    execute.add_argument("--startup-timeout", type=float, default=60.0, help="seconds for the kernel to start")
    execute.add_argument("--allow-errors", action="store_true",
                         help="keep going after a cell raises (exit status 0)")
    return parser


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _say(text: str) -> None:
    """A line on stderr; colour codes (from kernels' tracebacks) only when stderr is a terminal."""
    if not sys.stderr.isatty():
        text = _ANSI.sub("", text)
    print(text, file=sys.stderr, flush=True)


class _Progress:
    """An nbclient ``on_cell_execute`` hook saying which code cell runs, e.g. ``[2/5] cell 4: import x``."""

    def __init__(self, notebook):
        self.code_cells = [index for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
        self.current: int | None = None

    def __call__(self, cell, cell_index):
        self.current = cell_index
        position = self.code_cells.index(cell_index) + 1 if cell_index in self.code_cells else "?"
        first = next((line.strip() for line in cell.source.splitlines() if line.strip()), "")
        _say(f"[{position}/{len(self.code_cells)}] cell {cell_index + 1}: {first[:60]}")


def execute(args: argparse.Namespace) -> int:
    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    except ImportError:
        _say("error: executing notebooks needs nbclient: pip install '.[client]' in the jkg checkout")
        return 2
    from .manager import GatewayKernelManager

    try:
        notebook = nbformat.read(args.notebook, as_version=4)
    except (OSError, ValueError) as error:
        _say(f"error: cannot read {args.notebook}: {error}")
        return 2
    progress = _Progress(notebook)
    runner = NotebookClient(notebook, kernel_manager_class=GatewayKernelManager, kernel_name=args.kernel,
                            timeout=args.timeout, startup_timeout=args.startup_timeout,
                            allow_errors=args.allow_errors, on_cell_execute=progress)
    status = 0
    try:
        runner.execute()
    except CellTimeoutError:
        # nbclient's message is a 60-line dump of the cell; what ran so far is kept and written below.
        # Its output-polling task ends with the closed channel: not worth asyncio's "never retrieved" dump.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        where = f"cell {progress.current + 1}" if progress.current is not None else "a cell"
        _say(f"error: {where} did not finish within --timeout {args.timeout:g} s; "
             "the notebook is written with what ran")
        status = 1
    except DeadKernelError as error:
        _say(f"error: the kernel died: {error}")
        status = 1
    except CellExecutionError as error:
        _say(f"error: a cell raised:\n{error}")
        status = 1
    except GatewayClientError as error:
        _say(f"error: {type(error).__name__}: {error}")
        return 2
    output = args.output or args.notebook
    nbformat.write(notebook, output)
    _say(f"wrote {output}")
    return status


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "execute":
            return execute(args)
    except GatewayClientError as error:  # configuration errors raised before any request
        _say(f"error: {type(error).__name__}: {error}")
        return 2
    return 2
