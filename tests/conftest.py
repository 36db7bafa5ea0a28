"""Shared fixtures: one real gateway per module where tests can share it."""
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
