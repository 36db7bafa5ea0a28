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


def execute(args: argparse.Namespace) -> int:
    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError
    except ImportError:
        print("error: executing notebooks needs nbclient: pip install 'jkg[client]'", file=sys.stderr)
        return 2
    from .manager import GatewayKernelManager

    try:
        notebook = nbformat.read(args.notebook, as_version=4)
    except (OSError, ValueError) as error:
        print(f"error: cannot read {args.notebook}: {error}", file=sys.stderr)
        return 2
    runner = NotebookClient(notebook, kernel_manager_class=GatewayKernelManager, kernel_name=args.kernel,
                            timeout=args.timeout, startup_timeout=args.startup_timeout,
                            allow_errors=args.allow_errors)
    status = 0
    try:
        runner.execute()
    except CellExecutionError as error:
        print(f"error: a cell raised:\n{error}", file=sys.stderr)
        status = 1
    except GatewayClientError as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    output = args.output or args.notebook
    nbformat.write(notebook, output)
    print(f"wrote {output}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "execute":
            return execute(args)
    except GatewayClientError as error:  # configuration errors raised before any request
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    return 2
