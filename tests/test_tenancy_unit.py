"""Isolation, quotas and credentials as fast unit tests: fake launcher, fake checkers, a fake clock."""
import pytest
from twisted.cred.portal import Portal
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from jkg.auth.checkers import GatewayChecker
from jkg.auth.credentials import TokenCredentials, credentials_from_request
from jkg.auth.lockout import FailureLimiter
from jkg.auth.realm import ITenant, Tenant, make_portal
from jkg.auth.tenants import (
    TenantRecord, TenantsFileError, TenantTable, hash_token, parse_tenants, render_tenants)
from jkg.config import ConfigError, GatewayConfig
from jkg.endpoints import is_loopback_endpoint
from jkg.preflight import check_exposure
from jkg.errors import ResourceLimit, UnknownKernel, UnknownKernelSpec
from jkg.interfaces import IKernelRegistry
from jkg.kernels.registry import KernelRegistry
from jkg.testing import AnsweringChannels, FakeLauncher, FakeSpecs, InMemoryTokenChecker

ALICE = Tenant("alice", max_kernels=3, named=True)
BOB = Tenant("bob", named=True)
ADMIN = Tenant("root", admin=True, named=True)


def make_registry(max_kernels=None, specs=("python3",)):
    launcher = FakeLauncher(FakeSpecs(specs))
    registry = KernelRegistry(launcher, AnsweringChannels, GatewayConfig(max_kernels=max_kernels), Clock(),
                              environ={"PATH": "/bin"})
    return registry, launcher


def started(registry, launcher, tenant, n=1, name=None):
    results = [registry.start(name, {}, tenant) for _ in range(n)]
    launcher.finish_all()
    return [r.result for r in results]


def test_registry_provides_the_interface():
    assert verifyObject(IKernelRegistry, make_registry()[0])


def test_twenty_concurrent_starts_against_a_limit_of_three():
    registry, launcher = make_registry()
    admitted, refused = [], []
    for _ in range(20):
        try:
            admitted.append(registry.start(None, {}, ALICE))
        except ResourceLimit as error:
            refused.append(error)
    assert len(admitted) == 3 and len(refused) == 17  # in-flight starts count
    assert refused[0].message == "tenant alice reached its limit of 3 kernels"
    launcher.finish_all()
    assert len(registry.owned_by("alice")) == 3
    assert len(launcher.launched) == 3


def test_global_limit_counts_every_tenant():
    registry, launcher = make_registry(max_kernels=2)
    registry.start(None, {}, ALICE)
    registry.start(None, {}, BOB)
    with pytest.raises(ResourceLimit):
        registry.start(None, {}, BOB)


def test_other_tenants_kernels_do_not_exist():
    registry, launcher = make_registry()
    (kernel,) = started(registry, launcher, ALICE)
    assert registry.get(kernel.id, ALICE) is kernel
    assert registry.get(kernel.id, ADMIN) is kernel
    for call in (registry.get, registry.shutdown, registry.interrupt, registry.restart):
        with pytest.raises(UnknownKernel) as error:
            call(kernel.id, BOB)
        assert error.value.message == f"Kernel does not exist: {kernel.id}"
    assert registry.list_kernels(BOB) == [] and registry.list_kernels(ALICE) == [kernel]
    assert registry.list_kernels(ADMIN) == [kernel]


def test_kernel_username_is_forced_for_named_tenants():
    registry, launcher = make_registry()
    started(registry, launcher, ALICE)
    assert launcher.launched[0].env["KERNEL_USERNAME"] == "alice"
    started(registry, launcher, Tenant("default", admin=True), name=None)
    assert "KERNEL_USERNAME" not in launcher.launched[1].env


def test_kernelspec_allow_list():
    registry, launcher = make_registry(specs=("python3", "r"))
    restricted = Tenant("erin", kernelspecs=("r",), named=True)
    with pytest.raises(UnknownKernelSpec):
        registry.start("python3", {}, restricted)
    (kernel,) = started(registry, launcher, restricted)
    assert kernel.name == "r"


def test_evicting_a_tenant_shuts_down_only_its_kernels():
    registry, launcher = make_registry()
    mine = started(registry, launcher, ALICE, 2)
    (theirs,) = started(registry, launcher, BOB)
    registry.evict("alice")
    assert registry.owned_by("alice") == [] and registry.list_kernels() == [theirs]
    assert all(k.launched.shutdowns == 1 for k in mine)


def test_lockout_is_per_address_and_expires():
    clock = Clock()
    limiter = FailureLimiter(clock, limit=10, window=60)
    for _ in range(10):
        limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 0  # ten failures are still allowed
    limiter.failed("10.0.0.1")
    wait = limiter.retry_after("10.0.0.1")
    assert 0 < wait <= 61
    assert limiter.retry_after("10.0.0.2") == 0
    clock.advance(61)
    assert limiter.retry_after("10.0.0.1") == 0


def test_portal_with_fake_checker_yields_tenants():
    table = TenantTable({"alice": TenantRecord("alice", max_kernels=2)})
    from jkg.auth.realm import GatewayRealm

    portal = Portal(GatewayRealm(lambda: table), [InMemoryTokenChecker({"t-alice": "alice"})])
    results = []
    portal.login(TokenCredentials("t-alice"), None, ITenant).addCallback(results.append)
    assert results[0][1] == Tenant("alice", max_kernels=2, named=True)
    failures = []
    portal.login(TokenCredentials("nope"), None, ITenant).addErrback(failures.append)
    assert failures


def test_gateway_checker_tokens():
    table = parse_tenants(f'[tenants.alice]\ntokens = ["{hash_token("secret-a")}"]\n')
    checker = GatewayChecker("shared", lambda: table)
    outcome = []
    for token in ("secret-a", "shared", "secret-b"):
        checker.requestAvatarId(TokenCredentials(token)).addCallbacks(outcome.append, lambda f: outcome.append(None))
    assert outcome == ["alice", "default", None]


def test_open_portal_only_without_credentials():
    open_portal = make_portal("", lambda: None)
    results = []
    open_portal.login(credentials_from_request(b"token ", None), None, ITenant).addCallback(results.append)
    assert results[0][1].name == "anonymous"
    closed = make_portal("tok")
    failures = []
    closed.login(credentials_from_request(None, None), None, ITenant).addErrback(failures.append)
    assert failures


@pytest.mark.parametrize("text,fragment", [
    ("[tenants.alice]\ntokens = ['plain-token']\n", "sha256"),
    ("[tenants.default]\n", "invalid tenant name"),
    ("[tenants.alice]\nmax_kernels = -1\n", "max_kernels"),
    ("[tenants.alice]\nadmin = 'yes'\n", "admin"),
    ("[tenants.alice]\nshell = 'rm -rf'\n", "unknown keys"),
    ("[tenants.alice\n", "TOML"),
    (f"[tenants.a]\ntokens = ['{hash_token('x')}']\n[tenants.b]\ntokens = ['{hash_token('x')}']\n", "share"),
])
def test_tenants_file_validation(text, fragment):
    with pytest.raises(TenantsFileError, match=fragment):
        parse_tenants(text)


def test_tenants_file_round_trip():
    table = TenantTable({"alice": TenantRecord("alice", (hash_token("t"),), None, 2, 5, ("python3",), False),
                         "root": TenantRecord("root", (hash_token("u"),), admin=True)})
    assert parse_tenants(render_tenants(table)) == table


@pytest.mark.parametrize("endpoint,loopback", [
    ("tcp:8888:interface=127.0.0.1", True), ("tcp:8888:interface=127.1.2.3", True),
    ("tcp6:8888:interface=\\:\\:1", True), ("unix:/run/jkg.sock", True), ("tcp:8888", False),
    ("tcp:8888:interface=0.0.0.0", False), ("systemd:domain=INET:index=0", False),
    ("ssl:8443:privateKey=k.pem:interface=127.0.0.1", True),
])
def test_loopback_endpoints(endpoint, loopback):
    assert is_loopback_endpoint(endpoint) is loopback


def test_exposure_check():
    check_exposure(GatewayConfig())
    with pytest.raises(ConfigError, match="--allow-unauthenticated"):
        check_exposure(GatewayConfig(ip="0.0.0.0"))
    check_exposure(GatewayConfig(ip="0.0.0.0", allow_unauthenticated=True))
    check_exposure(GatewayConfig(ip="0.0.0.0", auth_token="t"))


def test_culling_on_a_fake_clock():
    import datetime

    from jkg.testing import RecordingClient

    clock = Clock()
    launcher = FakeLauncher()
    config = GatewayConfig(cull_idle_timeout=60, cull_interval=10)
    registry = KernelRegistry(launcher, AnsweringChannels, config, clock, environ={"PATH": "/bin"})
    idle, connected, busy = started(registry, launcher, None, 3)
    connected.attach(RecordingClient("s"))
    busy.execution_state = "busy"
    long_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=120)
    for kernel in (idle, connected, busy):
        kernel.last_activity = long_ago
    registry.startService()
    try:
        clock.advance(5)
        assert len(registry.kernels) == 3  # the first check comes after one interval
        clock.advance(5)
        assert set(registry.kernels) == {connected.id, busy.id}
        assert idle.launched.shutdowns == 1
    finally:
        registry.timers.stopService()


def test_heartbeat_marks_silent_kernels_dead_and_revives_them():
    from jkg.testing import RecordingClient

    clock = Clock()
    launcher = FakeLauncher()
    registry = KernelRegistry(launcher, AnsweringChannels, GatewayConfig(heartbeat_interval=1), clock,
                              environ={"PATH": "/bin"})
    (kernel,) = started(registry, launcher, None)
    client = RecordingClient("s")
    kernel.attach(client)
    registry.startService()
    try:
        kernel.channels.heartbeat = False
        clock.advance(1)
        clock.advance(1)
        assert kernel.model()["execution_state"] == "idle"  # two misses are not enough
        clock.advance(1)
        assert kernel.model()["execution_state"] == "dead"
        assert client.delivered[-1].msg_type == "status" and b"dead" in client.delivered[-1].parts[3]
        kernel.channels.heartbeat = True
        clock.advance(1)
        assert kernel.model()["execution_state"] == "idle"
    finally:
        registry.timers.stopService()


def test_admins_see_who_owns_each_session_as_in_their_kernel_listing():
    from jkg.sessions import SessionStore
    from jkg.testing import FakeRegistry

    sessions = SessionStore(FakeRegistry())
    results = []
    sessions.create({"path": "a.ipynb"}, ALICE).addCallback(results.append)  # fires at once: fake kernels
    sessions.create({"path": "b.ipynb"}, BOB).addCallback(results.append)
    (mine, _), _ = results
    assert "owner" not in mine and "owner" not in mine["kernel"]
    listed = {entry["path"]: entry for entry in sessions.list(ADMIN)}
    assert listed["a.ipynb"]["owner"] == "alice" and listed["a.ipynb"]["kernel"]["owner"] == "alice"
    assert listed["b.ipynb"]["owner"] == "bob" and listed["b.ipynb"]["kernel"]["owner"] == "bob"
    assert sessions.get(mine["id"], ADMIN)["owner"] == "alice"
    assert ["owner" in entry for entry in sessions.list(ALICE)] == [False]


def _dying_kernel(clock, restart_limit: int, lifetime: float):
    """A registry watching one kernel whose process dies ``lifetime`` seconds after every start."""
    launcher = FakeLauncher()
    config = GatewayConfig(restart_limit=restart_limit, kernel_poll_interval=0.5)
    registry = KernelRegistry(launcher, AnsweringChannels, config, clock, environ={"PATH": "/bin"})
    (kernel,) = started(registry, launcher, None)
    launched = kernel.launched
    restart = launched.restart

    def restart_and_die_again(now=False):
        clock.callLater(lifetime, setattr, launched, "alive", False)
        return restart(now)

    launched.restart = restart_and_die_again
    clock.callLater(lifetime, setattr, launched, "alive", False)
    registry.startService()
    return registry, kernel


def _stop_loops(registry):
    registry.timers.stopService()


def test_a_kernel_that_dies_a_second_after_every_start_is_dead_at_the_restart_limit():
    from jkg.testing import RecordingClient

    clock = Clock()
    registry, kernel = _dying_kernel(clock, restart_limit=2, lifetime=1.0)
    client = RecordingClient("s")
    kernel.attach(client)
    try:
        for _ in range(150):  # 75 s, as in the report of 37 restarts
            clock.advance(0.5)
        assert kernel.launched.restarts == 2
        assert kernel.model()["execution_state"] == "dead"
        assert b"dead" in client.delivered[-1].parts[3]
    finally:
        _stop_loops(registry)


def test_restarts_stop_counting_once_a_kernel_stayed_up_a_while():
    clock = Clock()
    registry, kernel = _dying_kernel(clock, restart_limit=1, lifetime=15.0)  # > STABLE_AFTER
    try:
        for _ in range(100):  # 50 s: three deaths, each after a stable run
            clock.advance(0.5)
        assert kernel.launched.restarts == 3
        assert kernel.model()["execution_state"] != "dead"
    finally:
        _stop_loops(registry)
