"""Pure parts of the sandbox: the bwrap command line, the [sandbox] table, the startup decision, limits."""
import resource

import pytest

from jkg.auth.tenants import TenantsFileError, parse_tenants, render_tenants
from jkg.config import ConfigError, GatewayConfig
from jkg.sandbox.argv import WORKSPACE, SandboxPlan, bwrap_argv
from jkg.sandbox.host import HostSupport
from jkg.sandbox.limits import describe_enforcement, rlimits_for
from jkg.sandbox.policy import SandboxPolicy, resolve_mode
from jkg.sandbox.settings import Limits, SandboxProfile, parse_size

PLAN = SandboxPlan(bwrap="/usr/bin/bwrap", command=("python3", "-m", "ipykernel_launcher", "-f", "/tmp/rt/k.json"),
                   connection_file="/tmp/rt/k.json", workspace="/tmp/rt/ws/k", ipc_dir="/tmp/rt/ipc/k",
                   hide=("/tmp/rt",), expose=(), network="none", setpriv="/usr/bin/setpriv", uid=65534, gid=65534)


def _pairs(argv, flag):
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


def test_argv_walls_and_order():
    argv = bwrap_argv(PLAN)
    for flag in ("--unshare-pid", "--unshare-net", "--die-with-parent", "--new-session"):
        assert flag in argv
    assert argv[argv.index("--ro-bind") + 1:argv.index("--ro-bind") + 3] == ["/", "/"]
    tmpfs = [argv[i + 1] for i, a in enumerate(argv) if a == "--tmpfs"]
    assert "/tmp" in tmpfs and "/tmp/rt" not in tmpfs  # nested hidden dirs are covered by /tmp
    assert ("/tmp/rt/k.json", "/tmp/rt/k.json") in _pairs(argv, "--ro-bind")
    assert ("/tmp/rt/ws/k", WORKSPACE) in _pairs(argv, "--bind")
    assert ("/tmp/rt/ipc/k", "/tmp/rt/ipc/k") in _pairs(argv, "--bind")
    # parents of what is bound are made searchable for the kernel's uid
    assert argv[argv.index("/tmp/rt") - 3:argv.index("/tmp/rt")] == ["--perms", "0755", "--dir"]
    separator = argv.index("--")
    assert argv[separator + 1:separator + 3] == ["/usr/bin/setpriv", "--reuid=65534"]
    assert "--no-new-privs" in argv and "--bounding-set=-all" in argv
    assert argv[-5:] == list(PLAN.command)


def test_argv_full_network_keeps_the_host_network_and_keep_kernels_drops_die_with_parent():
    from dataclasses import replace

    argv = bwrap_argv(replace(PLAN, network="full", die_with_parent=False, uid=None, ipc_dir=None))
    assert "--unshare-net" not in argv and "--die-with-parent" not in argv and "/usr/bin/setpriv" not in argv


def test_sandbox_table_precedence_and_round_trip():
    table = parse_tenants("""
        [tenants.alice]
        tokens = []
        [sandbox.defaults]
        network = "loopback"
        memory = "1G"
        [sandbox.kernelspecs.python3]
        network = "full"
        processes = 64
        [sandbox.tenants.alice]
        network = "none"
        uid = 20001
    """)
    base = SandboxProfile(mode="bwrap")
    alice = table.sandbox.profile_for(base, "alice", "python3")
    assert (alice.network, alice.uid, alice.limits.memory, alice.limits.processes) == ("none", 20001, 1 << 30, 64)
    other = table.sandbox.profile_for(base, "bob", "python3")
    assert (other.network, other.uid) == ("full", None)
    assert parse_tenants(render_tenants(table)) == table


@pytest.mark.parametrize("text, where", [
    ("[sandbox.tenants.a]\nnetwork = 'wifi'", "network"),
    ("[sandbox.tenants.a]\nmemory = 'lots'", "memory"),
    ("[sandbox.tenants.a]\nshell = true", "unknown keys shell"),
    ("[sandbox.other]\nx = 1", "unknown keys other"),
])
def test_bad_sandbox_tables_are_refused(text, where):
    with pytest.raises(TenantsFileError, match=where):
        parse_tenants(text)


def test_sizes():
    assert parse_size("512M") == 512 << 20 and parse_size("2GiB") == 2 << 30 and parse_size(1000) == 1000
    with pytest.raises(ValueError):
        parse_size("-1")


def test_auto_refuses_where_a_sandbox_is_expected_but_missing():
    missing = HostSupport(None, None, "bubblewrap (bwrap) is not installed")
    working = HostSupport("/usr/bin/bwrap", "/usr/bin/setpriv")
    tenants = GatewayConfig(tenants="/etc/jkg/tenants.toml")
    exposed = GatewayConfig(listen=("tcp:8888:interface=0.0.0.0",))
    with pytest.raises(ConfigError, match="refusing to start: tenants are configured .* --sandbox none"):
        resolve_mode(tenants, missing)
    with pytest.raises(ConfigError, match="not a loopback listener"):
        resolve_mode(exposed, missing)
    assert resolve_mode(tenants, working) == "bwrap"
    assert resolve_mode(GatewayConfig(), working) == "none"  # single-user loopback: off unless asked
    assert resolve_mode(GatewayConfig(sandbox="bwrap"), working) == "bwrap"
    assert resolve_mode(tenants.replace(sandbox="none"), missing) == "none"
    with pytest.raises(ConfigError, match="--sandbox bwrap"):
        resolve_mode(GatewayConfig(sandbox="bwrap"), missing)


def test_pool_serves_only_the_same_profile():
    policy = SandboxPolicy(SandboxProfile(mode="bwrap"))
    pooled = policy.profile_for(None, "python3")
    assert policy.poolable(policy.profile_for("alice", "python3"), pooled)
    assert not policy.poolable(SandboxProfile(mode="bwrap", network="none"), pooled)
    assert not policy.poolable(SandboxProfile(mode="bwrap", persist_workspace=True), pooled)


def test_rlimits_cover_what_cgroups_do_not():
    limits = Limits(memory=1 << 30, processes=50, cpu_time=60, open_files=256)
    with_cgroups = dict(rlimits_for(limits, ("memory", "pids")))
    assert with_cgroups == {resource.RLIMIT_CPU: 60, resource.RLIMIT_NOFILE: 256}
    without = dict(rlimits_for(limits, ()))
    assert without[resource.RLIMIT_AS] == 1 << 30 and without[resource.RLIMIT_NPROC] == 50
    assert describe_enforcement(limits, None) == "memory, processes, cpu_time, open_files by rlimit"
