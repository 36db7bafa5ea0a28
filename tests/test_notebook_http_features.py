"""notebook-http beyond the reference, end to end on real kernels: a pool that grows under load,
request timeouts that interrupt or replace kernels, image responses, a folder of notebooks reloaded
on change, the kernels API beside the endpoints, tenants with quotas, and startup refusal of a bad
annotation.  One gateway per scenario family, shared by the module where possible.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from support import TWISTD, GatewayProcess, children_of, pid_alive

pytestmark = pytest.mark.timeout(300)

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def write_notebook(path: Path, *sources: str) -> None:
    cells = [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": s}
             for s in sources]
    path.write_text(json.dumps({"cells": cells, "nbformat": 4, "nbformat_minor": 5, "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"}}}))


FEATURES = (
    "import json, os, time, base64",
    "# GET /pid\nprint(os.getpid())",
    "# GET /sleep\ntime.sleep(float(json.loads(REQUEST)['args']['s'][0]))\nprint(os.getpid())",
    "# GET /slow\ntime.sleep(300)",
    "# GET /hang\nimport signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(300)",
    "# GET /die\nos._exit(1)",
    "# GET /image\nfrom IPython.display import Image, display\n"
    f"display(Image(data=base64.b64decode('{base64.b64encode(PNG).decode()}')))",
)


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def get(url: str, **kwargs) -> requests.Response:
    return requests.get(url, timeout=kwargs.pop("timeout", 60), **kwargs)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("notebooks")
    write_notebook(root / "features.ipynb", *FEATURES)
    write_notebook(root / "other.ipynb", "# GET /version\nprint('one')", "# GET /pid\nimport os\nprint(os.getpid())")
    return root


@pytest.fixture(scope="module")
def gateway(folder):
    process = GatewayProcess("--api", "notebook-http", "--notebook-dir", str(folder), "--state-db", "none",
                             "--notebook-max-kernels", "4", "--request-timeout", "4", "--interrupt-grace", "3",
                             "--notebook-reload-interval", "0.5", "--kernels-api-prefix", "/kernels").start()
    try:
        wait_for(lambda: get(process.url + "/features/pid").ok, timeout=90)
        yield process
    finally:
        kernels = children_of(process.process.pid)
        process.stop()
        assert not [pid for pid in kernels if pid_alive(pid)], "kernels outlived the gateway"


def parallel(urls):
    with ThreadPoolExecutor(len(urls)) as executor:
        return list(executor.map(lambda url: get(url, timeout=120), urls))


def test_parallel_slow_requests_take_one_requests_time_with_n_kernels(gateway):
    urls = [gateway.url + "/features/sleep?s=2"] * 4
    parallel(urls)  # the pool grows to 4 kernels (starting them is not what is measured)
    started = time.monotonic()
    answers = parallel(urls)
    elapsed = time.monotonic() - started
    assert [answer.status_code for answer in answers] == [200] * 4, [answer.text for answer in answers]
    assert len({answer.text for answer in answers}) == 4, "four different kernels served them"
    assert elapsed < 2 * 1.8, f"4 parallel 2 s requests took {elapsed:.1f} s"  # serialized would be 8 s


def test_timeout_interrupts_and_keeps_an_answering_kernel(gateway):
    kernels_before = set(children_of(gateway.process.pid))
    started = time.monotonic()
    answer = get(gateway.url + "/features/slow")
    assert answer.status_code == 504 and answer.json()["reason"] == "Gateway Timeout"
    assert 3.5 < time.monotonic() - started < 15
    time.sleep(3 + 1)  # past the interrupt grace: an interrupted kernel that went idle is kept
    assert set(children_of(gateway.process.pid)) == kernels_before, "no kernel was replaced"
    assert get(gateway.url + "/features/pid").status_code == 200


def test_timeout_replaces_a_kernel_that_ignores_its_interrupt(gateway):
    kernels_before = set(children_of(gateway.process.pid))
    answer = get(gateway.url + "/features/hang")
    assert answer.status_code == 504
    # the hung kernel is shut down after the grace period and a replacement started
    wait_for(lambda: len(set(children_of(gateway.process.pid)) - kernels_before) >= 1
             and len(kernels_before - set(children_of(gateway.process.pid))) >= 1, timeout=60)
    wait_for(lambda: get(gateway.url + "/features/pid").ok, timeout=60)


def test_a_kernel_that_dies_mid_request_is_502_and_replaced(gateway):
    started = time.monotonic()
    answer = get(gateway.url + "/features/die")
    assert answer.status_code == 502 and answer.json()["reason"] == "Kernel Lost"
    assert time.monotonic() - started < 4, "noticed before the request timeout"
    pids = {get(gateway.url + "/features/pid").text for _ in range(4)}
    assert all(pid_alive(int(pid)) for pid in pids)


def test_display_data_image_is_the_body(gateway):
    answer = get(gateway.url + "/features/image")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "image/png" and answer.content == PNG


def test_folder_notebooks_reload_on_change(gateway, folder):
    assert get(gateway.url + "/other/version").text == "one\n"
    old_pid = int(get(gateway.url + "/other/pid").text)
    write_notebook(folder / "other.ipynb", "# GET /version\nprint('two')", "# GET /pid\nimport os\nprint(os.getpid())")
    wait_for(lambda: get(gateway.url + "/other/version").text == "two\n", timeout=60)
    assert int(get(gateway.url + "/other/pid").text) != old_pid
    wait_for(lambda: not pid_alive(old_pid), timeout=30)  # the old version's kernel was drained
    write_notebook(folder / "other.ipynb", "# GET version-without-slash\nprint('three')")
    time.sleep(2)
    assert get(gateway.url + "/other/version").text == "two\n", "a bad edit keeps the good version"
    write_notebook(folder / "other.ipynb", "raise RuntimeError('broken setup')", "# GET /version\nprint('four')")
    time.sleep(4)
    assert get(gateway.url + "/other/version").text == "two\n", "a failing setup cell keeps the good version"
    write_notebook(folder / "added.ipynb", "# GET /hi\nprint('added')")
    wait_for(lambda: get(gateway.url + "/added/hi").text == "added\n", timeout=60)
    (folder / "added.ipynb").unlink()
    wait_for(lambda: get(gateway.url + "/added/hi").status_code == 404, timeout=60)


def test_anonymous_endpoints_refuse_foreign_host_headers(gateway):
    # without credentials, a DNS-rebinding page must not reach the endpoints (same rule as the kernels API)
    assert get(gateway.url + "/features/pid", headers={"Host": "attacker.example"}).status_code == 403
    assert get(gateway.url + "/features/pid", headers={"Host": "localhost"}).status_code == 200


def test_kernels_api_beside_the_endpoints(gateway):
    kernels = get(gateway.url + "/kernels/api/kernels")
    assert kernels.status_code == 200 and isinstance(kernels.json(), list) and kernels.json()
    assert get(gateway.url + "/kernels/api/kernelspecs").json()["kernelspecs"]
    assert get(gateway.url + "/api/kernels").status_code == 404  # not at the root


def test_bad_annotation_stops_startup_with_one_line(tmp_path):
    notebook = tmp_path / "bad.ipynb"
    write_notebook(notebook, "import json", "# GET /ok\nprint(1)", "# PATCH /nope\nprint(2)")
    result = subprocess.run([*TWISTD, "-n", "--pidfile=", "jkg", "--port", "0", "--state-db", "none",
                             "--api", "notebook-http", "--seed-uri", str(notebook)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("jkg: error:")]
    assert errors == ["jkg: error: bad: code cell 3: bad annotation '# PATCH /nope'; expected "
                      "'# [ResponseInfo] GET|PUT|POST|DELETE /path'"], result.stderr
    assert "Traceback" not in result.stderr


def test_a_kernelspec_that_is_not_installed_stops_startup(tmp_path):
    notebook = tmp_path / "api.ipynb"
    write_notebook(notebook, "# GET /x\nprint(1)")
    data = json.loads(notebook.read_text())
    data["metadata"]["kernelspec"]["name"] = "nosuchkernel"
    notebook.write_text(json.dumps(data))
    result = subprocess.run([*TWISTD, "-n", "--pidfile=", "jkg", "--port", "0", "--state-db", "none",
                             "--api", "notebook-http", "--seed-uri", str(notebook)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"notebook {notebook} names kernelspec 'nosuchkernel', which is not installed" in result.stderr


# -- tenants ---------------------------------------------------------------------------------------
def tenants_cli(*args):
    result = subprocess.run([sys.executable, "-m", "jkg.tenants", *args], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_tenants_need_credentials_and_hold_at_most_their_quota(tmp_path):
    path = str(tmp_path / "tenants.toml")
    alice = tenants_cli("add", "alice", "--file", path, "--max-kernels", "1")
    bob = tenants_cli("add", "bob", "--file", path)
    notebook = tmp_path / "api.ipynb"
    write_notebook(notebook, "import json, os, time",
                   "# GET /sleep\ntime.sleep(float(json.loads(REQUEST)['args']['s'][0]))\nprint(os.getpid())")
    process = GatewayProcess("--api", "notebook-http", "--seed-uri", str(notebook), "--tenants", path,
                             "--state-db", "none", "--prespawn-count", "3", "--notebook-max-kernels", "3",
                             "--base-url", "/svc").start()
    try:
        url = process.url + "/svc/sleep?s=0"
        assert get(url).status_code == 401
        assert get(url, headers={"Authorization": "token wrong"}).status_code == 401
        preflight = requests.options(url, timeout=30)  # browsers send no credentials with a preflight
        assert (preflight.status_code, preflight.content) == (200, b"")
        assert requests.options(process.url + "/svc/nowhere", timeout=30).status_code == 404
        wait_for(lambda: get(url, headers={"Authorization": f"token {bob}"}).ok, timeout=90)
        as_alice = {"Authorization": f"token {alice}"}
        assert get(process.url + "/sleep?s=0", headers={"Authorization": f"token {bob}"}).status_code == 404
        slow = process.url + "/svc/sleep?s=1.5"
        started = time.monotonic()
        with ThreadPoolExecutor(3) as executor:
            futures = [executor.submit(get, slow, headers=as_alice) for _ in range(2)]
            bob_answer = get(slow, headers={"Authorization": f"token {bob}"})
            bob_elapsed = time.monotonic() - started
            answers = [f.result() for f in futures]
        elapsed = time.monotonic() - started
        assert all(a.status_code == 200 for a in answers) and bob_answer.status_code == 200
        assert elapsed >= 3.0, "alice's quota of one kernel serializes her two requests"
        assert bob_elapsed < 3.0, "bob is not held up by alice's queue"
    finally:
        kernels = children_of(process.process.pid)
        process.stop()
        assert not [pid for pid in kernels if pid_alive(pid)]


def test_anonymous_notebook_http_beyond_loopback_is_refused(tmp_path):
    notebook = tmp_path / "api.ipynb"
    write_notebook(notebook, "# GET /x\nprint(1)")
    result = subprocess.run([*TWISTD, "-n", "--pidfile=", "jkg", "--ip", "0.0.0.0", "--port", "0",
                             "--api", "notebook-http", "--seed-uri", str(notebook)],
                            capture_output=True, text=True, timeout=60, env={**os.environ})
    assert result.returncode != 0 and "refusing to serve without credentials" in result.stderr
