"""``python -m jkg.kernelspecs``: write kernelspecs that start kernels on an engine.

::

    python -m jkg.kernelspecs docker --image jkg-kernel:latest [--network NET] [--name docker-python]
    python -m jkg.kernelspecs swarm  --image jkg-kernel:latest [--network NET] [--name swarm-python]
    python -m jkg.kernelspecs ssh    [--python /opt/kernel/bin/python] [--name ssh-python]

Each kernelspec names a gateway_provisioners provisioner (``pip install
'jkg[containers]'``); everything the gateway needs to reach the engine (the
Docker socket, the network, the response address, the SSH hosts) is a
gateway option, not part of the kernelspec (see docs/engines.md).  Where the
file goes follows ``jupyter kernelspec install``: system-wide by default,
``--user`` or ``--prefix DIR``.  Pure builders plus a thin CLI.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile

# Where jupyter-image-bootstrap puts the Python launcher inside a kernel image or on an SSH host.
LAUNCHER = "/usr/local/bin/kernel-launchers/python/scripts/launch_ipykernel.py"
KERNEL_CLASS = "ipykernel.ipkernel.IPythonKernel"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
# docker reference: [registry[:port]/]name[:tag][@digest], no blanks or shell characters
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}\Z")
_LAUNCH_ARGS = ["--kernel-id", "{kernel_id}", "--response-address", "{response_address}",
                "--public-key", "{public_key}", "--port-range", "{port_range}"]


def container_spec(image: str, swarm: bool = False, network: str = "", display_name: str = "",
                   python: str = sys.executable) -> dict:
    """A kernelspec whose kernels run in containers of ``image`` (Docker, or a Swarm service)."""
    if not _IMAGE.match(image):
        raise ValueError(f"not an image reference: {image!r}")
    if network and not _NAME.match(network):
        raise ValueError(f"not a network name: {network!r}")
    argv = [python, "-m", "jkg.provisioners.docker_launch", *_LAUNCH_ARGS, "--kernel-class-name", KERNEL_CLASS]
    if network:
        argv += ["--network", network]
    engine = "Docker Swarm" if swarm else "Docker"
    return {
        "argv": argv,
        "display_name": display_name or f"Python on {engine} ({image})",
        "language": "python",
        "metadata": {"kernel_provisioner": {
            "provisioner_name": "docker-swarm-provisioner" if swarm else "docker-provisioner",
            "config": {"image_name": image}}},
    }


def ssh_spec(python: str = "python3", launcher: str = LAUNCHER, display_name: str = "",
             hosts: tuple[str, ...] = ()) -> dict:
    """A kernelspec for gateway_provisioners' distributed (SSH) provisioner.

    ``python`` and ``launcher`` are paths on the remote hosts; the hosts
    themselves are normally the gateway's ``--remote-hosts``.
    """
    config = {"remote_hosts": list(hosts)} if hosts else {}
    return {
        "argv": [python, launcher, *_LAUNCH_ARGS, "--kernel-class-name", KERNEL_CLASS],
        "display_name": display_name or "Python on SSH hosts",
        "language": "python",
        "metadata": {"kernel_provisioner": {"provisioner_name": "distributed-provisioner", "config": config}},
    }


def install(spec: dict, name: str, user: bool = False, prefix: str | None = None) -> str:
    """Install ``spec`` as kernelspec ``name``; return the folder it went to."""
    from jupyter_client.kernelspec import KernelSpecManager

    if not _NAME.match(name):
        raise ValueError(f"not a kernelspec name: {name!r}")
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "kernel.json"), "w", encoding="utf-8") as handle:
            json.dump(spec, handle, indent=2)
        return KernelSpecManager().install_kernel_spec(folder, name, user=user, prefix=prefix)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jkg.kernelspecs", description=__doc__.split("\n\n")[0])
    engines = parser.add_subparsers(dest="engine", required=True)
    for engine in ("docker", "swarm"):
        sub = engines.add_parser(engine, help=f"kernels in {'Swarm services' if engine == 'swarm' else 'containers'}")
        sub.add_argument("--image", required=True, help="kernel image (see contrib/kernel-image)")
        sub.add_argument("--network", default="", help="refuse to start unless the gateway's --docker-network is this")
        sub.add_argument("--name", default=f"{engine}-python")
    sub = engines.add_parser("ssh", help="kernels on SSH hosts")
    sub.add_argument("--python", default="python3", help="Python on the remote hosts")
    sub.add_argument("--launcher", default=LAUNCHER, help="launch_ipykernel.py on the remote hosts")
    sub.add_argument("--host", action="append", default=[], help="remote host (repeatable; default: --remote-hosts)")
    sub.add_argument("--name", default="ssh-python")
    for sub in engines.choices.values():
        sub.add_argument("--display-name", default="")
        where = sub.add_mutually_exclusive_group()
        where.add_argument("--user", action="store_true", help="install for the current user")
        where.add_argument("--prefix", default=None, help="install under PREFIX/share/jupyter/kernels")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.engine == "ssh":
            spec = ssh_spec(args.python, args.launcher, args.display_name, tuple(args.host))
        else:
            spec = container_spec(args.image, args.engine == "swarm", args.network, args.display_name)
        folder = install(spec, args.name, user=args.user, prefix=args.prefix)
    except (ValueError, OSError) as error:
        sys.stderr.write(f"jkg.kernelspecs: error: {error}\n")
        return 2
    print(f"installed kernelspec {args.name} in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
