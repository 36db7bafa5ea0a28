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


# -- the seccomp filter of network "none" -----------------------------------------------------------------------
def _run_bpf(program: bytes, nr: int, arch: int, args=(0,) * 6) -> int:
    """A classic-BPF interpreter for the opcodes the filter uses, checking what the kernel's verifier checks."""
    import struct

    from jkg.sandbox import seccomp

    data = struct.pack("=iIQ6Q", nr, arch, 0, *args)
    code = [seccomp.INSTRUCTION.unpack_from(program, i) for i in range(0, len(program), 8)]
    assert len(program) % 8 == 0 and 0 < len(code) <= 4096
    pc, acc = 0, 0
    for _ in range(len(code)):  # jumps only go forward: at most one pass
        op, jt, jf, k = code[pc]
        if op == seccomp.LD_W_ABS:
            assert k % 4 == 0 and k + 4 <= len(data)
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif op in (seccomp.JEQ_K, seccomp.JGE_K):
            taken = acc == k if op == seccomp.JEQ_K else acc >= k
            pc += 1 + (jt if taken else jf)
        elif op == seccomp.RET_K:
            return k
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")
        assert pc < len(code), "fell off the end of the program"
    raise AssertionError("no return")


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_network_filter_allows_only_unix_sockets(machine):
    import errno
    import socket

    from jkg.sandbox import seccomp

    arch = seccomp.ARCHITECTURES[machine]
    program = seccomp.network_filter(machine)
    refused = seccomp.RET_ERRNO | errno.EAFNOSUPPORT
    for family in (socket.AF_INET, socket.AF_INET6, socket.AF_PACKET, 0, 0xFFFFFFFF):
        assert _run_bpf(program, arch.socket, arch.audit_arch, (family, 1, 0, 0, 0, 0)) == refused, family
    netlink = _run_bpf(program, arch.socket, arch.audit_arch, (socket.AF_NETLINK, 3, 0, 0, 0, 0))
    assert netlink == seccomp.RET_ERRNO | errno.EOPNOTSUPP  # what libzmq's getifaddrs() check survives
    assert _run_bpf(program, arch.socket, arch.audit_arch, (socket.AF_UNIX, 1, 0, 0, 0, 0)) == seccomp.RET_ALLOW
    # the kernel reads an int from the 64-bit slot: high bits do not turn AF_INET into anything else
    assert _run_bpf(program, arch.socket, arch.audit_arch, ((1 << 32) | socket.AF_INET,) + (0,) * 5) == refused
    for other in (0, 1, 57, 59, 231, arch.socket + 1):  # read, write, fork, execve, exit_group, socketpair ...
        if other != arch.socket and other not in seccomp.IO_URING:
            assert _run_bpf(program, other, arch.audit_arch, (socket.AF_INET,) + (0,) * 5) == seccomp.RET_ALLOW
    for number in seccomp.IO_URING:
        assert _run_bpf(program, number, arch.audit_arch) == seccomp.RET_ERRNO | errno.ENOSYS


def test_network_filter_kills_calls_through_another_syscall_table():
    from jkg.sandbox import seccomp

    program = seccomp.network_filter("x86_64")
    x86_64 = seccomp.ARCHITECTURES["x86_64"].audit_arch
    i386, arm = 0x40000003, 0x40000028
    assert _run_bpf(program, 359, i386, (2, 1, 0, 0, 0, 0)) == seccomp.RET_KILL_PROCESS  # i386 socket
    assert _run_bpf(program, 102, i386) == seccomp.RET_KILL_PROCESS                      # i386 socketcall
    assert _run_bpf(program, 0x40000000 | 41, x86_64, (2, 1, 0, 0, 0, 0)) == seccomp.RET_KILL_PROCESS  # x32
    assert _run_bpf(program, 41, seccomp.ARCHITECTURES["aarch64"].audit_arch) == seccomp.RET_KILL_PROCESS
    arm64 = seccomp.network_filter("aarch64")
    assert _run_bpf(arm64, 281, arm, (2, 1, 0, 0, 0, 0)) == seccomp.RET_KILL_PROCESS     # arm32 socket


def test_network_filter_is_refused_where_no_table_is_known():
    from jkg.sandbox import seccomp

    with pytest.raises(seccomp.SeccompUnavailable, match="use network 'loopback'"):
        seccomp.network_filter("riscv64")


def test_argv_passes_the_seccomp_fd_and_keeps_loopback_unfiltered():
    from dataclasses import replace

    argv = bwrap_argv(replace(PLAN, seccomp_fd=7))
    assert argv[argv.index("--seccomp") + 1] == "7" and argv.index("--seccomp") < argv.index("--")
    loopback = bwrap_argv(replace(PLAN, network="loopback"))
    assert "--unshare-net" in loopback and "--seccomp" not in loopback


# -- --kernel-uid-range ---------------------------------------------------------------------------------------
def test_uid_range_is_parsed_and_never_includes_root():
    from jkg.sandbox.uids import parse_uid_range

    assert parse_uid_range("200000-265535") == (200000, 265535) and parse_uid_range(" ") is None
    for bad in ("0-100", "5-4", "100", "a-b", "1-4294967295"):
        with pytest.raises(ValueError):
            parse_uid_range(bad)


def test_uids_are_distinct_stable_and_avoid_explicit_ones():
    from jkg.sandbox.uids import assign_uids, preferred_uid

    names = [f"tenant{i}" for i in range(40)]
    small = (1000, 1049)  # 50 uids for 40 names: collisions certain
    assigned = assign_uids(names, small, taken=(1000, 1001))
    assert len(set(assigned.values())) == 40 and all(1002 <= uid <= 1049 for uid in assigned.values())
    assert assign_uids(list(reversed(names)), small, taken=(1001, 1000)) == assigned  # order does not matter
    # adding a tenant that sorts after everyone moves nobody else
    grown = assign_uids([*names, "zz-late"], small, taken=(1000, 1001))
    assert {name: grown[name] for name in names} == assigned
    big = (200000, 265535)
    assert assign_uids(["alice"], big)["alice"] == preferred_uid("alice", big) == assign_uids(["alice", "b"], big)[
        "alice"]
    with pytest.raises(ValueError, match="free uids"):
        assign_uids(names, (1000, 1039), taken=(1000,))


def test_policy_gives_each_tenant_its_range_uid_unless_its_table_sets_one():
    from jkg.sandbox.settings import parse_sandbox_table

    table = parse_sandbox_table({"tenants": {"carol": {"uid": 4242}}})
    names = ("alice", "bob", "carol")
    policy = SandboxPolicy(SandboxProfile(mode="bwrap"), lambda: table, (300000, 300999), lambda: names)
    alice, bob, carol = (policy.profile_for(name, "python3") for name in names)
    assert 300000 <= alice.uid <= 300999 and alice.gid == alice.uid and bob.uid != alice.uid
    assert (carol.uid, carol.gid) == (4242, None)
    assert policy.profile_for(None, "python3").uid is None  # the pool's kernels keep --kernel-user
    assert not policy.poolable(alice, policy.profile_for(None, "python3"))
    assert policy.profile_for("alice", "python3") == alice
    with pytest.raises(ConfigError, match="needs jkg to run as root"):
        from jkg.sandbox.policy import kernel_uid_range

        kernel_uid_range(GatewayConfig(kernel_uid_range="300000-300999"), euid=1000)


def test_network_none_is_refused_before_anything_is_made_where_no_filter_is_known(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from jkg.sandbox.provisioner import Sandboxes
    from jkg.sandbox.workspace import SandboxError, Workspaces

    monkeypatch.setattr("jkg.sandbox.seccomp.platform.machine", lambda: "riscv64")
    sandboxes = Sandboxes(HostSupport("/usr/bin/bwrap", "/usr/bin/setpriv"), Workspaces(str(tmp_path / "ws")),
                          str(tmp_path / "ipc"), (65534, 65534))
    manager = SimpleNamespace(kernel_spec=SimpleNamespace(metadata={}, interrupt_mode="signal"), provisioner=None)
    with pytest.raises(SandboxError, match="riscv64.*use network 'loopback'"):
        sandboxes.install(manager, "k1", SandboxProfile(mode="bwrap", network="none"))
    assert manager.provisioner is None and manager.kernel_spec.interrupt_mode == "signal"
    assert not list(tmp_path.iterdir())
