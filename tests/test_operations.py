"""What an operator meets first: connection files, startup errors that say what is wrong, TLS settings."""
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid

import pytest
import requests

from pathlib import Path

from support import TWISTD, GatewayProcess, KernelClient, make_certificate, pid_alive, stdout_of


REPO = Path(__file__).resolve().parent.parent


def run_twistd(*args, env=None, timeout=60):
    return subprocess.run([*TWISTD, "-n", "--pidfile=", "jkg", *args], capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def wait_until(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_connection_files_live_in_the_runtime_dir_and_go_away(tmp_path):
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    env = {"JUPYTER_RUNTIME_DIR": str(runtime)}
    foreign = runtime / f"kernel-{uuid.uuid4()}.json"  # another tool's file: never touched
    foreign.write_text(json.dumps({"ip": "127.0.0.1", "transport": "tcp", "hb_port": 1}))
    first = GatewayProcess("--state-db", str(tmp_path / "state.sqlite"), env=env).start()
    try:
        kernel = first.start_kernel()["id"]
        path = runtime / f"kernel-{kernel}.json"
        assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600
        info = json.loads(path.read_text())
        assert info["key"] and info["shell_port"]
        with first.connect(kernel) as client:  # jupyter console --existing finds this kernel by the file
            pid = int(stdout_of(client.run("import os; print(os.getpid())")))
        assert first.request("DELETE", f"/api/kernels/{kernel}").status_code == 204
        assert not path.exists()
        doomed = runtime / f"kernel-{first.start_kernel()['id']}.json"
        assert doomed.exists()
    finally:
        first.stop(signal.SIGKILL)
    assert not pid_alive(pid)
    assert doomed.exists()  # a SIGKILLed gateway cannot clean up...
    second = GatewayProcess("--state-db", str(tmp_path / "state.sqlite"), env=env).start()
    try:
        wait_until(lambda: not doomed.exists(), what="the stale connection file to go")  # ...the next one does
        assert foreign.exists()
    finally:
        second.stop()
    assert runtime.exists()  # given by the caller: not removed


def test_test_gateways_remove_their_runtime_directories():
    gateway = GatewayProcess()
    gateway.start()
    gateway.start_kernel()
    directory = gateway.runtime_dir
    gateway.stop()
    assert not os.path.exists(directory)


def test_wrong_method_is_405(gateway):
    response = gateway.request("PUT", "/api/kernels")
    assert response.status_code == 405 and response.json()["reason"] == "Method Not Allowed"


@pytest.mark.parametrize("args,env,fragment", [
    (["--pool", "nosuch=2"], {}, "--pool names kernelspec 'nosuch', which is not installed"),
    (["--default-kernel-name", "nosuch"], {}, "--default-kernel-name names kernelspec 'nosuch'"),
    (["--existing", "/nonexistent/kernel-1.json"], {}, "--existing: cannot read /nonexistent/kernel-1.json"),
    ([], {"KG_API": "kernel_gateway.notebook_http"}, "--api notebook-http needs a notebook"),
    ([], {"KG_API": "my.personality"}, "invalid value for KG_API: unknown personality 'my.personality'"),
    (["--listen", "tcp:notaport"], {}, "invalid listen endpoint 'tcp:notaport'"),
    (["--ip", "bogus"], {}, "invalid value for --ip: not an IP address: 'bogus'"),
    (["--nosuch-flag"], {}, "option --nosuch-flag not recognized"),
    (["--listen", "systemd:domain=INET:name=jkg-http"], {}, "systemd passed no socket named 'jkg-http'"),
    (["--keyfile", "key.pem"], {}, "need --certfile"),
    ([], {"KG_CERTFILE": "/nonexistent/cert.pem"}, "cannot read certificate (--certfile) /nonexistent/cert.pem"),
], ids=["pool", "default-kernel", "existing", "kg-api", "kg-api-unknown", "listen", "ip", "unknown-flag",
        "systemd-name", "keyfile-alone", "certfile-missing"])
def test_wrong_settings_stop_with_one_line(args, env, fragment):
    result = run_twistd("--port", "0", *args, env=env)
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("jkg: error: ") and fragment in stderr, stderr


def test_tenants_file_error_names_the_file(tmp_path):
    path = tmp_path / "tenants.toml"
    path.write_text("[tenants.alice]\ntokens = 3\n")
    result = run_twistd("--port", "0", "--tenants", str(path))
    assert result.returncode == 2
    assert result.stderr.decode().startswith(f"jkg: error: tenants file {path}: tenant alice")


def test_daemonized_listen_failure_is_reported_whole(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([*TWISTD, "--pidfile", str(tmp_path / "pid"), "--logfile", str(tmp_path / "log"),
                                 "jkg", "--port", str(port)], capture_output=True, timeout=60,
                                env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert f"cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use".encode() in result.stderr
    assert f"cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use" in \
        (tmp_path / "log").read_text()


def test_kg_certfile_serves_tls_and_kg_client_ca_requires_a_client_certificate(tmp_path):
    pytest.importorskip("cryptography")
    ca = make_certificate(tmp_path, "ca")
    server = make_certificate(tmp_path, "server", issuer=ca, ca=False)
    client = make_certificate(tmp_path, "client", issuer=ca, ca=False)
    stranger_ca = make_certificate(tmp_path, "stranger-ca")
    stranger = make_certificate(tmp_path, "stranger", issuer=stranger_ca, ca=False)
    env = {"KG_CERTFILE": str(server[0]), "KG_KEYFILE": str(server[1]), "KG_CLIENT_CA": str(ca[0])}
    with GatewayProcess(env=env, token="tls-token") as gateway:
        assert b"GatewaySite (TLS) starting on" in gateway.output
        url = f"https://127.0.0.1:{gateway.port}/api"
        response = requests.get(url, verify=str(ca[0]), cert=tuple(map(str, client)),
                                headers=gateway.headers(), timeout=30)
        assert response.status_code == 200 and response.json()["gateway"] == "jkg"
        for wrong in (None, tuple(map(str, stranger))):
            with pytest.raises(requests.exceptions.RequestException):
                requests.get(url, verify=str(ca[0]), cert=wrong, headers=gateway.headers(), timeout=30)
    with GatewayProcess(env={"KG_CERTFILE": str(server[0]), "KG_KEYFILE": str(server[1])}) as gateway:
        response = requests.get(f"https://127.0.0.1:{gateway.port}/api", verify=str(ca[0]), timeout=30)
        assert response.status_code == 200
        # kernel WebSockets over TLS: written through the transport's own buffer, not the TCP outbox
        kernel = requests.post(f"https://127.0.0.1:{gateway.port}/api/kernels", json={}, verify=str(ca[0]),
                               timeout=60).json()
        for v1 in (False, True):
            with KernelClient(gateway, kernel["id"], v1=v1, ws_url=f"wss://127.0.0.1:{gateway.port}",
                              sslopt={"ca_certs": str(ca[0])}) as client:
                assert stdout_of(client.run("print(6 * 7)")) == "42\n"


def test_jkg_console_script_runs_twistd_with_the_same_flags(tmp_path):
    setup = (REPO / "setup.py").read_text()
    assert '"console_scripts": ["jkg = jkg.command:main"]' in setup
    command = [sys.executable, "-c", "from jkg.command import main; main()"]
    version = subprocess.run([*command, "--version"], capture_output=True, timeout=60, cwd=REPO)
    assert version.stdout.decode().strip() == "jkg 0.1.0"
    process = subprocess.Popen([*command, "--ip", "127.0.0.1", "--port", "0", "--state-db", "none"], cwd=tmp_path,
                               env={**os.environ, "PYTHONPATH": str(REPO), "JUPYTER_RUNTIME_DIR": str(tmp_path)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        port = None
        for _ in range(200):
            line = process.stdout.readline().decode()
            if "listening on http://127.0.0.1:" in line:
                port = int(line.rsplit(":", 1)[1].strip("/\n"))
                break
            assert line, "jkg exited before listening"
        assert requests.get(f"http://127.0.0.1:{port}/api", timeout=30).json()["gateway"] == "jkg"
    finally:
        process.terminate()
        process.wait(60)
    assert process.returncode in (0, -signal.SIGTERM)  # twistd ends by the signal it stopped for
    assert not (tmp_path / "twistd.pid").exists()  # -n --pidfile=: no pid file in the working directory
