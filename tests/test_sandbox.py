"""Kernels in bubblewrap: the attacks of issue 10, run from inside tenants' kernels, must not escape.

Every test drives real kernels through a real gateway over WebSocket and
asserts what the tenant's code can (and cannot) see or do.  The suite
installs bubblewrap where it is missing and skips, saying why, only where
this machine cannot make namespaces.
"""
import errno
import json
import os
import stat
import subprocess
import sys
import textwrap
import time

import pytest
import requests

from jkg.auth.tenants import hash_token
from support import TWISTD, GatewayProcess, children_of, pid_alive, stdout_of

ADMIN = "sandbox-admin-token-0d9c"
TOKENS = {"alice": "alice-token-7f3a9b", "bob": "bob-token-21c4e8", "hog": "hog-token-99aa01",
          "rooty": "rooty-token-5e5e5e", "disky": "disky-token-3b3b3b", "carol": "carol-token-6d6d6d"}
TENANTS = """
[tenants.alice]
tokens = ["{alice}"]
[tenants.bob]
tokens = ["{bob}"]
[tenants.hog]
tokens = ["{hog}"]
[tenants.rooty]
tokens = ["{rooty}"]
[tenants.disky]
tokens = ["{disky}"]
[tenants.carol]
tokens = ["{carol}"]
[tenants.ops]
tokens = ["{ops}"]
admin = true

[sandbox.tenants.bob]
network = "none"
[sandbox.tenants.carol]
network = "loopback"
[sandbox.tenants.hog]
memory = "160M"
processes = 40
[sandbox.tenants.rooty]
uid = 0
[sandbox.tenants.disky]
disk = "4M"
open_files = 200
"""


UID_RANGE = "310000-310999"


@pytest.fixture(scope="session")
def bwrap(bubblewrap_installed):
    """bubblewrap (installed by conftest where missing) able to make namespaces here."""
    from jkg.sandbox.host import probe_host

    host = probe_host()
    if not host.available:
        pytest.skip(f"no kernel sandbox on this machine: {host.problem}")
    return host


@pytest.fixture(scope="module")
def gateway(bwrap, tmp_path_factory):
    root = tmp_path_factory.mktemp("sandbox")
    tenants = root / "tenants.toml"
    tenants.write_text(TENANTS.format(ops=hash_token(ADMIN), **{k: hash_token(v) for k, v in TOKENS.items()}))
    tenants.chmod(0o600)
    uid_range = ("--kernel-uid-range", UID_RANGE) if os.geteuid() == 0 else ()  # only root hands out uids
    process = GatewayProcess("--tenants", str(tenants), *uid_range, env={"KG_AUTH_TOKEN": ADMIN}).start()
    process.tenants_file = str(tenants)
    try:
        yield process
    finally:
        kernels = children_of(process.process.pid)
        process.stop()
    assert not [pid for pid in kernels if pid_alive(pid)], "sandboxed kernels survived the gateway"


class Tenant:
    def __init__(self, gateway, name):
        self.gateway, self.name, self.token = gateway, name, TOKENS.get(name, ADMIN)

    def request(self, method, path, **kwargs):
        return requests.request(method, self.gateway.url + path, headers={"Authorization": f"token {self.token}"},
                                timeout=120, **kwargs)

    def start(self):
        response = self.request("POST", "/api/kernels", json={})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def run(self, kernel_id, code, timeout=60):
        self.gateway.token = self.token
        with self.gateway.connect(kernel_id) as client:
            messages = client.run(textwrap.dedent(code), timeout)
        errors = [m["content"] for m in messages if m["msg_type"] == "error"]
        assert not errors, errors
        return stdout_of(messages)

    def shutdown(self, kernel_id):
        assert self.request("DELETE", f"/api/kernels/{kernel_id}").status_code == 204


@pytest.fixture(scope="module")
def kernels(gateway):
    """A kernel each of alice (full network), bob (no network) and carol (loopback), shared by the attacks."""
    tenants = {name: Tenant(gateway, name) for name in ("alice", "bob", "carol")}
    ids = {name: tenant.start() for name, tenant in tenants.items()}
    yield ids
    for name, tenant in tenants.items():
        tenant.shutdown(ids[name])


def _own_connection(tenant, kernel_id):
    """What a kernel knows of itself: its connection file path and contents."""
    out = tenant.run(kernel_id, """
        import json, sys
        path = sys.argv[sys.argv.index("-f") + 1]
        print(json.dumps({"path": path, "info": json.load(open(path))}))
    """)
    return json.loads(out)


def test_kernel_runs_unprivileged_in_its_own_pid_namespace(gateway, kernels):
    out = Tenant(gateway, "alice").run(kernels["alice"], """
        import os
        print(os.getuid(), os.getgid(), os.getcwd(), os.environ["HOME"])
        print(sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
    """)
    ids, pids = out.splitlines()
    uid, gid, cwd, home = ids.split()
    assert uid != "0" and gid != "0"
    assert cwd == home == "/home/kernel"
    assert len(json.loads(pids)) <= 3  # bwrap's init, the kernel, maybe a helper: no gateway, no other kernel


@pytest.mark.skipif(os.geteuid() != 0, reason="--kernel-uid-range needs jkg to run as root")
def test_each_tenant_runs_as_its_own_uid_from_the_range(gateway, kernels):
    from jkg.sandbox.uids import assign_uids, parse_uid_range

    expected = assign_uids(["alice", "bob", "carol", "hog", "rooty", "disky", "ops"], parse_uid_range(UID_RANGE),
                           taken=(0,))
    for name in ("alice", "bob"):
        out = Tenant(gateway, name).run(kernels[name], "import os; print(os.getuid(), os.getgid())")
        assert out.split() == [str(expected[name])] * 2
        workspace = os.path.join(gateway.runtime_dir, "jkg-workspaces", "kernels", kernels[name])
        assert os.stat(workspace).st_uid == expected[name]
    assert expected["alice"] != expected["bob"]


def test_state_database_tenants_file_and_runtime_dir_are_invisible(gateway, kernels):
    state = os.path.join(gateway.runtime_dir, "jkg-state.sqlite")
    assert os.path.exists(state)
    out = Tenant(gateway, "bob").run(kernels["bob"], f"""
        import os
        for path in [{state!r}, {gateway.tenants_file!r}]:
            try:
                open(path, "rb").read(16)
                print("READ", path)
            except OSError as error:
                print("denied", type(error).__name__)
        for folder in [{gateway.runtime_dir!r}, {os.path.dirname(gateway.tenants_file)!r}]:
            try:
                print("listing", sorted(n for n in os.listdir(folder) if "state" in n or "tenants" in n))
            except OSError as error:
                print("denied", type(error).__name__)
    """)
    assert "READ" not in out
    assert "sqlite" not in out and "tenants.toml" not in out


def test_another_kernels_connection_file_key_and_workspace_are_out_of_reach(gateway, kernels):
    alice, bob = Tenant(gateway, "alice"), Tenant(gateway, "bob")
    own = _own_connection(alice, kernels["alice"])
    alice.run(kernels["alice"], "open('secret.txt', 'w').write('alice-secret-42')")
    workspace = os.path.join(gateway.runtime_dir, "jkg-workspaces", "kernels", kernels["alice"])
    assert os.path.isfile(os.path.join(workspace, "secret.txt"))
    out = bob.run(kernels["bob"], f"""
        import os, stat, sys
        for path in [{own['path']!r}, {workspace + '/secret.txt'!r}]:
            try:
                print("READ", open(path).read()[:40])
            except OSError as error:
                print("denied", type(error).__name__)
        key = {own['info']['key'][::-1]!r}[::-1].encode()  # reversed: this cell's own history must not hold it
        found = []
        for root in ["/tmp", "/run", "/home", "/root", "/var/tmp", "/dev/shm"]:
            for folder, subfolders, names in os.walk(root):
                # Not the kernel's own Python install, bound read-only from the host (under /root here, 1.2 GB):
                # the gateway never writes there, and reading it all took a minute on a busy machine.
                subfolders[:] = [d for d in subfolders if os.path.join(folder, d) != sys.base_prefix]
                for name in names:
                    path = os.path.join(folder, name)
                    try:
                        if stat.S_ISREG(os.lstat(path).st_mode):
                            with open(path, "rb") as file:
                                if key in file.read():
                                    found.append(path)
                    except OSError:
                        pass
        print("key found in", found)
    """)
    assert "READ" not in out
    assert "key found in []" in out


def test_a_stolen_key_does_not_reach_another_kernel_without_network(gateway, kernels):
    """Even handed alice's whole connection info, bob's kernel (network none) cannot talk to hers."""
    own = _own_connection(Tenant(gateway, "alice"), kernels["alice"])
    out = Tenant(gateway, "bob").run(kernels["bob"], f"""
        from jupyter_client import BlockingKernelClient
        client = BlockingKernelClient()
        client.load_connection_info({own['info']!r})
        client.start_channels()
        try:
            reply = client.execute_interactive("print('escaped')", timeout=5)
            print("ANSWERED", reply["content"]["status"])
        except Exception as error:
            print("no answer", type(error).__name__)
        finally:
            client.stop_channels()
    """, timeout=90)
    assert "ANSWERED" not in out and "no answer" in out


def test_the_gateway_is_neither_visible_nor_signalable(gateway, kernels):
    pid = gateway.process.pid
    out = Tenant(gateway, "alice").run(kernels["alice"], f"""
        import os, signal, glob
        leaks = []
        for path in glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline"):
            try:
                if {ADMIN!r}.encode() in open(path, "rb").read():
                    leaks.append(path)
            except OSError:
                pass
        print("leaks", leaks)
        try:
            os.kill({pid}, signal.SIGTERM)
            print("SIGNALLED")
        except OSError as error:
            print("kill", type(error).__name__)
        print("parent visible", os.path.exists("/proc/{pid}/environ"))
    """)
    assert "leaks []" in out
    assert "SIGNALLED" not in out
    assert gateway.process.poll() is None
    assert gateway.request("GET", "/api").status_code == 200


NO_INET = """
    import errno, socket
    for family in ("AF_INET", "AF_INET6", "AF_PACKET", "AF_NETLINK"):
        try:
            socket.socket(getattr(socket, family), socket.SOCK_DGRAM).close()
            print(family, "CREATED")
        except OSError as error:
            print(family, errno.errorcode[error.errno])
    try:
        print("connect", socket.create_connection(("127.0.0.1", {port}), timeout=3))
    except OSError as error:
        print("connect", errno.errorcode.get(error.errno, error))
    left, right = socket.socketpair()
    left.send(b"unix ok")
    print(right.recv(16).decode(), 6 * 7)
"""


def test_no_network_kernel_has_no_inet_socket_but_works_through_jkg(gateway, kernels):
    bob = Tenant(gateway, "bob")
    out = bob.run(kernels["bob"], NO_INET.format(port=gateway.port))
    for family in ("AF_INET", "AF_INET6", "AF_PACKET"):
        assert f"{family} EAFNOSUPPORT" in out
    assert f"AF_NETLINK {errno.errorcode[errno.EOPNOTSUPP]}" in out  # ENOTSUP: the same number on Linux
    assert "connect EAFNOSUPPORT" in out and "unix ok 42" in out
    gateway.token = bob.token
    with gateway.connect(kernels["bob"]) as client:  # stdin and interrupt go through ipc as well
        msg_id = client.execute("print(input('name? '))", allow_stdin=True)
        request = client.wait_for(lambda m: m["msg_type"] == "input_request")
        client.send("stdin", "input_reply", {"value": "bob"}, parent=request["header"])
        assert "bob" in stdout_of(client.collect(msg_id))
        msg_id = client.execute("import time; time.sleep(60)")
        client.wait_for(lambda m: m["msg_type"] == "status" and m["content"]["execution_state"] == "busy")
        assert bob.request("POST", f"/api/kernels/{kernels['bob']}/interrupt").status_code == 204
        replies = client.collect(msg_id, timeout=30)
        assert any(m["msg_type"] == "execute_reply" and m["content"]["status"] == "error" for m in replies)
    response = bob.request("POST", f"/api/kernels/{kernels['bob']}/restart")
    assert response.status_code == 200, response.text
    out = bob.run(kernels["bob"], "import subprocess, sys\n" + f"print(subprocess.run([sys.executable, '-c', "
                  f"{textwrap.dedent(NO_INET).format(port=gateway.port)!r}], capture_output=True, text=True).stdout)")
    assert "AF_INET EAFNOSUPPORT" in out and "unix ok 42" in out  # restarted, and its children, still filtered
    fds = f"/proc/{gateway.process.pid}/fd"
    held = [os.readlink(f"{fds}/{fd}") for fd in os.listdir(fds) if os.path.islink(f"{fds}/{fd}")]
    assert not [target for target in held if "jkg-seccomp" in target]  # each launch's program fd was closed


def test_loopback_kernel_has_its_own_loopback_but_not_the_hosts(gateway, kernels):
    import socket

    listener = socket.create_server(("127.0.0.1", 0))  # a service of the host, on the host's loopback
    probe = f"""
        import errno, socket
        try:
            socket.create_connection(("127.0.0.1", {listener.getsockname()[1]}), timeout=3).close()
            print("host service reached")
        except OSError as error:
            print("host service", errno.errorcode.get(error.errno, error))
    """
    try:
        assert "host service reached" in Tenant(gateway, "alice").run(kernels["alice"], probe)  # full: it can
        out = Tenant(gateway, "carol").run(kernels["carol"], probe + """
        server = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(server.getsockname(), timeout=3)
        peer, _ = server.accept()
        client.sendall(b"own loopback")
        print(peer.recv(32).decode())
        """)
    finally:
        listener.close()
    assert "host service ECONNREFUSED" in out and "own loopback" in out


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the other syscall tables tried here are x86_64's")
@pytest.mark.parametrize("table, code", [
    # push rbx; mov eax, 359 (i386 socket); mov ebx, AF_INET; mov ecx, SOCK_STREAM; xor edx, edx; int 0x80;
    # pop rbx; movsxd rax, eax; ret
    ("i386", "53b867010000bb02000000b90100000031d2cd805b4863c0c3"),
    # mov eax, 0x40000000 | 41 (x32 socket); mov edi, AF_INET; mov esi, SOCK_STREAM; xor edx, edx; syscall; ret
    ("x32", "b829000040bf02000000be0100000031d20f05c3"),
])
def test_no_network_filter_kills_sockets_made_through_another_syscall_table(bwrap, table, code):
    """The bypass a number-only filter would miss: the same socket() through the i386 or x32 table."""
    import signal

    from jkg.sandbox.seccomp import host_network_filter

    run = textwrap.dedent("""
        import ctypes, mmap, sys
        memory = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        memory.write(bytes.fromhex(sys.argv[1]))
        print("returned", ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(memory)))())
    """)
    results = {}
    for filtered in (False, True):
        fd = os.memfd_create("seccomp", os.MFD_CLOEXEC)
        os.write(fd, host_network_filter())
        os.lseek(fd, 0, os.SEEK_SET)
        seccomp = ["--seccomp", str(fd)] if filtered else []
        command = [bwrap.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid",
                   "--unshare-net", *seccomp, "--", sys.executable, "-c", run, code]
        try:
            results[filtered] = subprocess.run(command, pass_fds=(fd,), capture_output=True, text=True, timeout=60)
        finally:
            os.close(fd)
    if results[False].returncode != 0:  # e.g. a kernel booted with ia32_emulation=0: no such table to guard
        pytest.skip(f"the {table} syscall table is unusable here even without the filter: {results[False]}")
    assert "returned" in results[False].stdout  # the call itself works unfiltered
    assert results[True].returncode in (128 + signal.SIGSYS, -signal.SIGSYS), results[True]
    assert "returned" not in results[True].stdout


def test_workspace_is_made_for_the_kernel_and_removed_with_it(gateway):
    alice = Tenant(gateway, "alice")
    kernel_id = alice.start()
    workspace = os.path.join(gateway.runtime_dir, "jkg-workspaces", "kernels", kernel_id)
    info = os.stat(workspace)
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid != 0
    alice.run(kernel_id, "open('notes.txt', 'w').write('x')")
    alice.shutdown(kernel_id)
    assert not os.path.exists(workspace)


def test_memory_hog_is_killed_and_reported_dead_with_the_reason(gateway):
    hog = Tenant(gateway, "hog")
    kernel_id = hog.start()
    gateway.token = hog.token
    with gateway.connect(kernel_id) as client:
        client.execute("blocks = [b'x' * (1 << 20) for _ in range(600)]")
        status = client.wait_for(lambda m: m["msg_type"] == "status"
                                 and m["content"]["execution_state"] == "dead", timeout=60)
    assert "out of memory" in status["content"]["reason"]
    model = hog.request("GET", f"/api/kernels/{kernel_id}").json()
    assert model["execution_state"] == "dead" and "out of memory" in model["reason"]
    hog.shutdown(kernel_id)
    assert not os.path.exists(os.path.join(gateway.runtime_dir, "jkg-workspaces", "kernels", kernel_id))


def test_fork_bomb_is_contained(gateway):
    hog = Tenant(gateway, "hog")
    kernel_id = hog.start()
    out = hog.run(kernel_id, """
        import os, time
        children, failure = [], None
        for _ in range(500):
            try:
                pid = os.fork()
            except OSError as error:
                failure = type(error).__name__
                break
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        print(len(children), failure)
    """, timeout=120)
    count, failure = out.split()
    assert int(count) < 40 and failure == "BlockingIOError"
    assert "still here" in hog.run(kernel_id, "print('still here')")
    hog.shutdown(kernel_id)


def test_disk_quota_and_open_files_limit(gateway):
    disky = Tenant(gateway, "disky")
    kernel_id = disky.start()
    out = disky.run(kernel_id, """
        import errno, os, resource
        print("cwd", os.getcwd(), resource.getrlimit(resource.RLIMIT_NOFILE))
        try:
            with open("big.bin", "wb") as handle:
                for _ in range(16):
                    handle.write(b"x" * (1 << 20))
            print("WROTE 16 MiB")
        except OSError as error:
            print("disk", errno.errorcode[error.errno])
        os.remove("big.bin")
        handles = []
        try:
            for _ in range(400):
                handles.append(open("/dev/null"))
            print("OPENED 400")
        except OSError as error:
            print("files", errno.errorcode[error.errno])
        for handle in handles:
            handle.close()
    """)
    assert "cwd /home/kernel (200, 200)" in out
    assert "disk ENOSPC" in out and "files EMFILE" in out
    disky.shutdown(kernel_id)


def test_a_kernel_that_cannot_be_sandboxed_fails_with_500_and_leaves_nothing(gateway):
    rooty = Tenant(gateway, "rooty")
    before = set(os.listdir(os.path.join(gateway.runtime_dir, "jkg-workspaces", "kernels")))
    response = rooty.request("POST", "/api/kernels", json={})
    assert response.status_code == 500
    assert "root" in response.json()["message"]
    assert set(os.listdir(os.path.join(gateway.runtime_dir, "jkg-workspaces", "kernels"))) == before
    assert rooty.request("GET", "/api/kernels").json() == []


def test_auto_refuses_to_start_with_tenants_but_no_sandbox(tmp_path, gateway):
    env = {**os.environ, "PATH": str(tmp_path), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}
    command = [*TWISTD, "-n", "--pidfile=", "jkg", "--port", "0", "--tenants", gateway.tenants_file]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to start" in lines[0] and "--sandbox none" in lines[0]


def test_token_file_must_be_private(tmp_path):
    path = tmp_path / "token"
    path.write_text("file-token-abc\n")
    path.chmod(0o644)
    command = [*TWISTD, "-n", "--pidfile=", "jkg", "--port", "0", "--auth-token-file", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)})
    assert result.returncode == 2 and "readable by others" in result.stderr
    path.chmod(0o600)
    with GatewayProcess(env={"KG_AUTH_TOKEN_FILE": str(path)}) as gateway:
        assert gateway.request("GET", "/api/kernels").status_code == 401
        gateway.token = "file-token-abc"
        assert gateway.request("GET", "/api/kernels").status_code == 200
        assert "file-token-abc" not in open(f"/proc/{gateway.process.pid}/cmdline").read()
        assert "file-token-abc" not in open(f"/proc/{gateway.process.pid}/environ").read()


def test_make_non_dumpable_takes_effect():
    code = ("import ctypes, ctypes.util; from jkg.secrets import make_non_dumpable; ok = make_non_dumpable(); "
            "libc = ctypes.CDLL(ctypes.util.find_library('c')); print(ok, libc.prctl(3, 0, 0, 0, 0))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["True", "0"], result.stderr


def test_warm_pool_seed_and_reattach_stay_sandboxed(bwrap, tmp_path):
    """Pooled kernels are sandboxed; with --keep-kernels-on-exit a restarted gateway reattaches one."""
    seed = tmp_path / "seed.ipynb"
    seed.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "metadata": {}, "source": "SEEDED = 'yes'", "outputs": [], "execution_count": None}]}))
    state = str(tmp_path / "state.sqlite")
    args = ("--sandbox", "bwrap", "--prespawn-count", "1", "--seed-uri", str(seed), "--keep-kernels-on-exit",
            "--state-db", state)
    runtime = {"JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}  # shared, as by one service restarted
    try:
        _pool_seed_reattach(args, runtime)
    finally:  # kernels kept on exit must not outlive a failed test: end every sandbox of this runtime dir
        _kill_processes_naming(runtime["JUPYTER_RUNTIME_DIR"])


def _kill_processes_naming(text: str) -> None:
    import signal
    from pathlib import Path

    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass


def _pool_seed_reattach(args, runtime):
    first = GatewayProcess(*args, env=runtime).start()
    try:
        deadline = time.monotonic() + 60
        while "pooled kernel" not in first.output.decode(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.2)
        kernel_id = first.start_kernel()["id"]
        with first.connect(kernel_id) as client:
            out = stdout_of(client.run("import os; print(SEEDED, os.getuid(), os.getcwd())"))
        assert out.split() == ["yes", "65534" if os.geteuid() == 0 else str(os.geteuid()), "/home/kernel"]
    finally:
        first.stop()
    second = GatewayProcess(*args, env=runtime).start()
    try:
        deadline = time.monotonic() + 30
        while kernel_id not in [k["id"] for k in second.request("GET", "/api/kernels").json()]:
            assert time.monotonic() < deadline, second.output.decode(errors="replace")
            time.sleep(0.3)
        with second.connect(kernel_id) as client:
            assert stdout_of(client.run("print(SEEDED)")).strip() == "yes"
        workspace = os.path.join(runtime["JUPYTER_RUNTIME_DIR"], "jkg-workspaces", "kernels", kernel_id)
        assert os.path.isdir(workspace)
        assert second.request("DELETE", f"/api/kernels/{kernel_id}").status_code == 204
        assert not os.path.exists(workspace)
    finally:
        kernels = children_of(second.process.pid)
        second.stop()
    assert not [pid for pid in kernels if pid_alive(pid)]


def test_an_idle_sandboxed_kernel_is_culled_and_its_workspace_removed(bwrap):
    with GatewayProcess("--sandbox", "bwrap", "--cull-idle-timeout", "2", "--cull-interval", "0.5") as gateway:
        kernel_id = gateway.start_kernel()["id"]
        with gateway.connect(kernel_id) as client:
            assert "kept" in stdout_of(client.run("open('work.txt', 'w').write('x'); print('kept')"))
        workspace = os.path.join(gateway.runtime_dir, "jkg-workspaces", "kernels", kernel_id)
        assert os.path.isfile(os.path.join(workspace, "work.txt"))
        sandbox = children_of(gateway.process.pid)
        assert sandbox
        deadline = time.monotonic() + 60
        while gateway.request("GET", f"/api/kernels/{kernel_id}").status_code != 404:
            assert time.monotonic() < deadline, "the idle kernel was not culled"
            time.sleep(0.3)
        deadline = time.monotonic() + 30
        while os.path.exists(workspace) or [pid for pid in sandbox if pid_alive(pid)]:
            assert time.monotonic() < deadline, "culling left the workspace or sandbox processes behind"
            time.sleep(0.2)
        assert f"culling kernel {kernel_id}" in gateway.output.decode(errors="replace")  # culled, not crashed
