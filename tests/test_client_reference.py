"""``jkg.client`` against the servers it must also work with: jupyter-kernel-gateway 3.0.1 and jupyter_server.

jupyter-kernel-gateway runs from the benchmarks' venv (made here when
missing); plain jupyter_server serves the same kernels API.  The same
notebook and client scenario as against jkg (:mod:`client_support`).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

from client_support import (  # noqa: E402
    REPO,
    build_notebook,
    check_executed,
    execute_notebook,
    exercise_client,
    free_port,
    remote_kernel,
    run_async,
)
from conftest import TOKEN  # noqa: E402
from support import stop_process  # noqa: E402

from jkg.client import KernelDied  # noqa: E402

sys.path.append(str(REPO / "benchmarks"))
import _kg_venv  # noqa: E402 - the benchmarks' venv of jupyter-kernel-gateway, made once for both

KG_BIN = _kg_venv.KG_BIN


def ensure_reference_gateway() -> None:
    """jupyter-kernel-gateway 3.0.1 in the benchmarks' venv, made once (under a lock) by whoever needs it first."""
    try:
        _kg_venv.ensure_kg()
    except _kg_venv.Unavailable as error:
        pytest.skip(str(error))


@contextlib.contextmanager
def serving(process: subprocess.Popen, url: str, name: str, headers: dict | None = None):
    """``url`` once ``process`` answers ``GET /api`` (60 s at most); the process is stopped afterwards."""
    import requests

    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                said = process.stderr.read().decode(errors="replace") if process.stderr else ""
                pytest.fail(f"{name} exited with status {process.returncode}: {said}")
            try:
                if requests.get(f"{url}/api", headers=headers or {}, timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{name} did not answer within 60 s")
            time.sleep(0.2)
        yield url
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def kernel_gateway():
    """jupyter-kernel-gateway 3.0.1 from the benchmark venv, on a free loopback port."""
    ensure_reference_gateway()
    port = free_port()
    env = {**os.environ, "KG_LIST_KERNELS": "True"}
    process = subprocess.Popen(
        [str(KG_BIN), "--KernelGatewayApp.ip=127.0.0.1", f"--KernelGatewayApp.port={port}",
         f"--KernelGatewayApp.auth_token={TOKEN}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    with serving(process, f"http://127.0.0.1:{port}", "jupyter-kernelgateway",
                 {"Authorization": f"token {TOKEN}"}) as url:
        yield url


def test_nbclient_runs_notebook_through_jupyter_kernel_gateway(kernel_gateway, monkeypatch):
    monkeypatch.setenv("JKG_GATEWAY_URL", kernel_gateway)
    monkeypatch.setenv("JKG_GATEWAY_TOKEN", TOKEN)
    nb = run_async(execute_notebook, build_notebook())
    check_executed(nb)


def test_kernel_deleted_on_jupyter_kernel_gateway_is_kernel_died(kernel_gateway):
    # jupyter-kernel-gateway keeps the WebSocket open when the kernel is deleted: the
    # liveness watchdog must notice while the client waits.
    async def scenario():
        async with remote_kernel(kernel_gateway, liveness_interval=0.5) as (km, kc):
            import requests

            loop = asyncio.get_running_loop()
            response = await loop.run_in_executor(None, lambda: requests.delete(
                f"{kernel_gateway}/api/kernels/{km.kernel_id}", headers={"Authorization": f"token {TOKEN}"},
                timeout=30))
            assert response.status_code == 204
            with pytest.raises(KernelDied) as info:
                await kc.get_shell_msg(timeout=30)
            assert info.value.status == 404 and km.kernel_id in str(info.value)

    run_async(scenario)


@pytest.fixture(scope="module")
def jupyter_server_url(tmp_path_factory):
    """Plain jupyter_server (not a gateway, but the same kernels API) on a free loopback port."""
    pytest.importorskip("jupyter_server")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         f"--IdentityProvider.token={TOKEN}", "--ServerApp.open_browser=False", "--allow-root",
         f"--ServerApp.root_dir={tmp_path_factory.mktemp('jupyter_server')}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with serving(process, f"http://127.0.0.1:{port}", "jupyter_server") as url:
        yield url

@pytest.mark.parametrize("ws_protocol", ["auto", "legacy"])
def test_client_against_jupyter_server(jupyter_server_url, ws_protocol):
    run_async(exercise_client, jupyter_server_url, ws_protocol)
