"""Shared fixtures: one real gateway per module where tests can share it."""
from pathlib import Path

import pytest
import zmq

from jkg.kernels.zmtp import make_factory
from support import GatewayProcess, children_of, pid_alive

TOKEN = "test-token-5f1e2d"


@pytest.fixture(scope="session", autouse=True)
def bubblewrap_installed():
    """Gateways with tenants sandbox their kernels with bwrap (``--sandbox auto``): install it where missing.

    Debian's package, with a lock timeout since other installs may run at the same time; a machine
    without apt-get or root keeps what it has (tests/test_sandbox.py then skips, saying why).
    """
    import os
    import shutil
    import subprocess

    if shutil.which("bwrap") is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-o", "DPkg::Lock::Timeout=600", "bubblewrap"],
                       capture_output=True, timeout=900, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's worker reads the groups off the items
def pytest_collection_modifyitems(config, items):
    """Keep a module's tests together, in their order, on one pytest-xdist worker (``--dist loadgroup``).

    A module shares one gateway (the fixture below), which then starts once, not once per worker, and
    some tests read what the module's earlier ones left in its log; the engine modules share one group,
    so the private dockerd and sshd (session fixtures) start once.
    """
    for item in items:
        module = item.nodeid.split("::")[0]
        group = "engines" if Path(module).name.startswith("test_engines_") else module
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session", autouse=True)
def private_runtime_dir(tmp_path_factory):
    """Give this test process a Jupyter runtime directory of its own.

    Gateways a test starts without one (``twistd jkg`` on its defaults) keep their default state
    database and connection files there, not in the user's ``~/.local/share/jupyter/runtime``; and two
    pytest-xdist workers never find each other's gateway holding the same default state database.
    """
    import os

    before = os.environ.get("JUPYTER_RUNTIME_DIR")
    os.environ["JUPYTER_RUNTIME_DIR"] = str(tmp_path_factory.mktemp("jupyter-runtime"))
    yield
    if before is None:
        os.environ.pop("JUPYTER_RUNTIME_DIR", None)
    else:
        os.environ["JUPYTER_RUNTIME_DIR"] = before


@pytest.fixture(scope="module")
def gateway():
    """A token-protected gateway shared by a module; checks it leaves no kernel behind."""
    process = GatewayProcess(token=TOKEN).start()
    kernels: set[int] = set()
    try:
        yield process
    finally:
        kernels = children_of(process.process.pid)
        process.stop()
    leftovers = [pid for pid in kernels if pid_alive(pid)]
    assert not leftovers, f"kernel processes survived the gateway: {leftovers}"


@pytest.fixture
def zctx():
    """A libzmq context (playing the kernel) and jkg's ZMTP side, both closed afterwards."""
    from twisted.internet import reactor  # pytest-twisted's, installed by now

    context = zmq.Context()
    ours = make_factory(reactor)
    yield context, ours
    ours.shutdown()
    context.destroy(linger=0)

# Session fixtures for the engine tests (a private dockerd, its network, the kernel image, an sshd).
from engines import docker_engine  # noqa: E402,F401
from ssh_hosts import ssh_host  # noqa: E402,F401
