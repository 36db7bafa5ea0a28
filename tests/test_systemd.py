"""The shipped systemd units: they verify, and jkg starts from them with a socket systemd would pass."""
import configparser
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from support import TWISTD

UNITS = Path(__file__).resolve().parent.parent / "contrib" / "systemd"


@pytest.fixture(scope="session")
def systemd_analyze():
    """``systemd-analyze``, installing Debian's systemd package if it is missing."""
    found = shutil.which("systemd-analyze")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-o", "DPkg::Lock::Timeout=600", "systemd"],
                       capture_output=True, timeout=900)
        found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is missing and cannot be installed here (needs root and apt-get)")
    return found


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(UNITS / name)
    return parser


def test_units_verify(systemd_analyze, tmp_path):
    twistd = shutil.which("twistd") or sys.executable
    for name in ("jkg.socket", "jkg.service"):
        text = (UNITS / name).read_text()
        # the unit names /usr/local/bin/twistd (pip's place); verify checks the binary exists
        (tmp_path / name).write_text(text.replace("/usr/local/bin/twistd", twistd))
    result = subprocess.run([systemd_analyze, "verify", str(tmp_path / "jkg.socket"), str(tmp_path / "jkg.service")],
                            capture_output=True, text=True, timeout=120)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "jkg." in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_socket_and_service_agree():
    socket_unit, service_unit = unit("jkg.socket"), unit("jkg.service")
    name = socket_unit["Socket"]["FileDescriptorName"]
    assert f"systemd:domain=INET:name={name}" in service_unit["Service"]["ExecStart"]
    assert service_unit["Service"]["Type"] == "notify"
    assert " -n " in service_unit["Service"]["ExecStart"]  # undaemonized: LISTEN_PID stays right


def activated(listener: socket.socket, name: str, tmp_path, env=None) -> subprocess.Popen:
    """Start the unit's ExecStart as systemd would: the socket as fd 3, LISTEN_* naming this process."""
    argv = shlex.split(unit("jkg.service")["Service"]["ExecStart"])
    assert Path(argv[0]).name == "twistd"
    fd = listener.fileno()
    environment = {**os.environ, "LISTEN_FDS": "1", "LISTEN_FDNAMES": name,
                   "JUPYTER_RUNTIME_DIR": str(tmp_path), **(env or {})}
    environment.pop("KG_AUTH_TOKEN", None)
    # a tiny exec wrapper: the socket moves to fd 3 (where systemd puts the first one), and
    # LISTEN_PID names the wrapper's pid, which exec keeps for twistd
    wrapper = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_PID'] = str(os.getpid()); "
               "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])")
    return subprocess.Popen([sys.executable, "-c", wrapper, str(fd), *TWISTD[1:], *argv[1:]], env=environment,
                            pass_fds=(fd,), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_loopback_socket_from_systemd_serves_without_a_token(tmp_path):
    name = unit("jkg.socket")["Socket"]["FileDescriptorName"]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        process = activated(listener, name, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/api", timeout=10)
                break
            except requests.ConnectionError:
                assert process.poll() is None, process.stdout.read().decode(errors="replace")
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert response.status_code == 200 and response.json()["gateway"] == "jkg"
    finally:
        process.terminate()
        output = process.communicate(timeout=60)[0].decode(errors="replace")
    assert f"listening on http://127.0.0.1:{port}/" in output
    assert "authentication: none" in output


def test_exposed_socket_without_credentials_is_refused_with_one_line(tmp_path):
    name = unit("jkg.socket")["Socket"]["FileDescriptorName"]
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        process = activated(listener, name, tmp_path)
    output = process.communicate(timeout=60)[0].decode(errors="replace")
    assert process.returncode == 2
    assert output.strip() == ("jkg: error: refusing to serve without credentials on "
                              f"systemd:domain=INET:name={name} (not loopback): set --auth-token or --tenants, "
                              "or pass --allow-unauthenticated to accept the risk")


def test_a_socket_name_systemd_did_not_pass_is_one_line(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        process = activated(listener, "other-name", tmp_path)
    output = process.communicate(timeout=60)[0].decode(errors="replace")
    assert process.returncode == 2 and "KeyError" not in output
    assert output.strip().startswith("jkg: error: systemd passed no socket named 'jkg-http'")
    assert output.count("\n") == 1
