"""What the gateway logs: the startup facts once, levels, JSON lines, and an access log without tokens."""
import json
import os
import pwd
import re
import shutil

from support import GatewayProcess


def lines(gateway) -> list[str]:
    return gateway.output.decode(errors="replace").splitlines()


def test_startup_says_where_and_how_once_and_logs_kernel_operations(tmp_path):
    gateway = GatewayProcess("--pool", "python3=1", "--state-db", str(tmp_path / "state.sqlite"),
                             token="log-token").start()
    try:
        kernel = gateway.start_kernel()["id"]
        assert gateway.request("POST", f"/api/kernels/{kernel}/interrupt").status_code == 204
        assert gateway.request("POST", f"/api/kernels/{kernel}/restart").status_code == 200
    finally:
        gateway.stop()
    log = lines(gateway)
    startup = [line.split("] ", 1)[1] for line in log if "[jkg.startup#" in line]
    assert startup[0] == f"jkg 0.1.0 listening on http://127.0.0.1:{gateway.port}/"
    for fact in ("authentication: token (--auth-token)", "warm pool: python3=1",
                 f"state database: {tmp_path / 'state.sqlite'}", "kernelspecs: python3 (default)"):
        assert fact in startup, startup
    assert any(line.startswith("sandbox: ") for line in startup), startup
    # the sandbox in force, not the --sandbox value (auto)
    assert ("sandbox: none (--sandbox auto: no tenants and only loopback listeners): kernels run as the "
            "gateway's user, in its namespaces, without limits") in startup, startup
    assert len(startup) == len(set(startup))  # once
    text = "\n".join(log)
    assert f"interrupting kernel {kernel}" in text and f"restarted kernel {kernel}" in text
    assert "#debug]" not in text  # not even while shutting down
    assert "Starting factory" not in text


def test_anonymous_gateway_warns_and_debug_level_shows_debug_lines():
    gateway = GatewayProcess("--state-db", "none", "--log-level", "debug", "--sandbox", "none").start()
    try:
        gateway.start_kernel()
    finally:
        gateway.stop()
    text = "\n".join(lines(gateway))
    assert "[jkg.startup#warn] authentication: none: anyone who can reach a listener can run code" in text
    assert "state database: off" in text
    assert "sandbox: none (--sandbox none): kernels run as the gateway's user" in text
    assert "#debug]" in text


def test_auth_mode_names_the_token_file_the_token_was_read_from():
    from jkg.config import GatewayConfig
    from jkg.startup import auth_mode

    from_file = GatewayConfig(auth_token="t0k", auth_token_file="/etc/jkg/token")  # as tap builds it
    assert auth_mode(from_file, None) == ("token from /etc/jkg/token (--auth-token-file)", False)
    assert auth_mode(GatewayConfig(auth_token="t0k"), None) == ("token (--auth-token)", False)


def test_sandbox_line_names_who_enforces_limits_and_the_uids():
    from jkg.config import GatewayConfig
    from jkg.sandbox.host import HostSupport
    from jkg.sandbox.limits import Cgroups
    from jkg.sandbox.policy import SandboxPolicy
    from jkg.sandbox.provisioner import Sandboxes
    from jkg.sandbox.settings import SandboxProfile
    from jkg.sandbox.workspace import Workspaces
    from jkg.startup import sandbox_in_force

    host, workspaces = HostSupport("/usr/bin/bwrap", "/usr/bin/setpriv"), Workspaces("/srv/ws")
    config = GatewayConfig(sandbox="bwrap", tenants="/etc/jkg/tenants.toml")
    policy = SandboxPolicy(SandboxProfile(mode="bwrap", network="loopback"), uid_range=(20000, 29999))
    cgroups = Cgroups(2, {"memory": "/sys/fs/cgroup/jkg-1", "pids": "/sys/fs/cgroup/jkg-1"})
    assert sandbox_in_force(config, policy, Sandboxes(host, workspaces, "/run/ipc", (65534, 65534), cgroups)) == (
        "bwrap /usr/bin/bwrap (--sandbox bwrap), network loopback, kernels as uid 65534 (each tenant's as a uid "
        "of its own in 20000-29999); limits by cgroup v2 (memory, pids) and rlimits; the tenants file's [sandbox] "
        "table may change this per tenant and kernelspec")
    plain = SandboxPolicy(SandboxProfile(mode="bwrap"))
    assert sandbox_in_force(GatewayConfig(sandbox="bwrap"), plain, Sandboxes(host, workspaces, "/run/ipc", None)) == (
        "bwrap /usr/bin/bwrap (--sandbox bwrap), network full; limits by rlimits only (no cgroups here)")
    exposed = GatewayConfig(ip="0.0.0.0", auth_token="t")
    assert sandbox_in_force(exposed, plain, Sandboxes(host, workspaces, "/run/ipc", None)).startswith(
        "bwrap /usr/bin/bwrap (--sandbox auto: tcp:8888:interface=0.0.0.0 is not a loopback listener)")


def test_tenants_mode_is_named_with_its_count(tmp_path):
    path = tmp_path / "tenants.toml"
    path.write_text('[tenants.alice]\ntokens = []\n[tenants.bob]\ntokens = []\n')
    gateway = GatewayProcess("--tenants", str(path), "--state-db", "none").start()
    gateway.request("GET", "/api")  # the reactor runs (and handles SIGTERM) once this is answered
    gateway.stop()
    text = "\n".join(lines(gateway))
    assert f"authentication: tenants from {path} (2 tenants)" in text
    # tenants turn --sandbox auto into bwrap; the line names the binary and what enforces limits here
    sandbox = [line.split("] ", 1)[1] for line in lines(gateway) if "[jkg.startup#info] sandbox: " in line]
    user = f", kernels as uid {pwd.getpwnam('nobody').pw_uid}" if os.geteuid() == 0 else ""
    version = 2 if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else 1
    assert len(sandbox) == 1 and re.fullmatch(
        rf"sandbox: bwrap {re.escape(shutil.which('bwrap'))} \(--sandbox auto: tenants are configured\), "
        rf"network full{user}; limits by (cgroup v{version} \([a-z, ]+\) and rlimits|rlimits only "
        r"\(no cgroups here\)); the tenants file's \[sandbox\] table may change this per tenant and kernelspec",
        sandbox[0]), sandbox


def test_json_log_lines_for_shippers():
    gateway = GatewayProcess("--log-format", "json", "--state-db", "none").start()
    gateway.request("GET", "/api")
    gateway.stop()
    events = [json.loads(line.strip("\x1e")) for line in lines(gateway) if line.strip("\x1e ")]
    assert events, "no log lines"
    startup = [event for event in events if event.get("log_namespace") == "jkg.startup"]
    assert any(event.get("url") == f"http://127.0.0.1:{gateway.port}/" for event in startup)
    assert all(event["log_level"]["name"] in ("info", "warn", "error", "critical") for event in events)


def test_access_log_never_writes_tokens(tmp_path):
    path = tmp_path / "access.log"
    gateway = GatewayProcess("--access-log", str(path), "--state-db", "none", token="very-secret-token").start()
    try:
        assert gateway.request("GET", "/api/kernels?token=very-secret-token&x=1", headers={}).status_code == 200
        assert gateway.request("GET", "/api/kernelspecs", headers={"User-Agent": "probe/1"}).status_code == 200
        assert gateway.request("GET", "/api/status", headers={"Authorization": "token wrong"}).status_code == 401
    finally:
        gateway.stop()
    text = path.read_text()
    assert "very-secret-token" not in text and "wrong" not in text
    entries = text.splitlines()
    assert len(entries) == 3
    assert re.match(r'127\.0\.0\.1 - - \[[^\]]+\] "GET /api/kernels\?x=1 HTTP/1\.1" 200 \d+ "-" "', entries[0])
    assert '"GET /api/kernelspecs HTTP/1.1" 200' in entries[1] and entries[1].endswith('"probe/1"')
    assert '"GET /api/status HTTP/1.1" 401' in entries[2]


def test_access_log_dash_goes_to_the_gateway_log():
    gateway = GatewayProcess("--access-log", "-", "--state-db", "none", token="dash-secret").start()
    try:
        gateway.request("GET", "/api?token=dash-secret", headers={})
    finally:
        gateway.stop()
    text = "\n".join(lines(gateway))
    assert '[jkg.access#info] 127.0.0.1 - - [' in text and '"GET /api HTTP/1.1" 200' in text
    assert "dash-secret" not in text


def test_rotated_log_files_are_bounded(tmp_path):
    """--log-max-files: twistd's --logfile keeps only that many rotated files (twistd alone keeps every one)."""
    import os
    import signal
    import subprocess
    import time

    from support import TWISTD

    log = tmp_path / "jkg.log"
    process = subprocess.Popen([*TWISTD, "-n", "--pidfile=", "--logfile", str(log), "jkg", "--port", "0",
                                "--state-db", "none", "--log-max-files", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (log.exists() and "listening on" in log.read_text()):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.1)
        for rotation in range(4):  # SIGUSR1 rotates, as with twistd's own log file
            os.kill(process.pid, signal.SIGUSR1)
            while not (tmp_path / f"jkg.log.{min(rotation + 1, 2)}").exists():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(30)
    rotated = sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("jkg.log."))
    assert rotated == ["jkg.log.1", "jkg.log.2"]


def test_syslog_observer_uses_the_prefix_and_the_level(monkeypatch):
    """--syslog [--prefix]: twistd's destination, built by jkg.logs from Twisted's SyslogObserver."""
    from twisted.logger import Logger
    from twisted.python.syslog import SyslogObserver

    from jkg.logs import make_observer

    opened, sent = [], []
    # the class's own seams for syslog(3), which Twisted's tests replace the same way
    monkeypatch.setattr(SyslogObserver, "openlog", lambda self, prefix, *args: opened.append(prefix))
    monkeypatch.setattr(SyslogObserver, "syslog", lambda self, priority, text: sent.append(text))
    observer = make_observer("info", "text", {"syslog": True, "prefix": "jkg-test", "nodaemon": True})
    log = Logger(namespace="jkg.test", observer=observer)
    log.info("hello {who}", who="syslog")
    log.debug("not at info")
    assert opened == ["jkg-test"]
    assert len(sent) == 1 and "hello syslog" in sent[0]


def test_stdout_log_needs_nodaemon_as_in_twistd(capsys):
    import pytest
    from twisted.logger import Logger

    from jkg.logs import make_observer

    with pytest.raises(SystemExit, match="Daemons cannot log to stdout"):
        make_observer("info", "text", {"logfile": "-", "nodaemon": False})
    log = Logger(namespace="jkg.test", observer=make_observer("info", "text", {"logfile": "-", "nodaemon": True}))
    log.info("to stdout")
    assert "[jkg.test#info] to stdout" in capsys.readouterr().out
