"""Shared fixtures: one real gateway per module where tests can share it."""
import pytest

from support import GatewayProcess, children_of, pid_alive

TOKEN = "test-token-5f1e2d"


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
