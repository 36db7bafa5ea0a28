"""Notebooks through ``jkg.client`` on a real jkg: nbclient, and ``python -m jkg.client execute``.

The command-line runner is checked as a user sees it: the written notebook,
the exit status, one ``error:`` line (no traceback) for a cell over
``--timeout``, progress per code cell, and no colour codes off a terminal.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

from client_support import REPO, build_notebook, check_executed, execute_notebook, run_async  # noqa: E402
from conftest import TOKEN  # noqa: E402


@pytest.fixture
def gateway_env(gateway, monkeypatch):
    monkeypatch.setenv("JKG_GATEWAY_URL", gateway.url)
    monkeypatch.setenv("JKG_GATEWAY_TOKEN", TOKEN)
    return gateway


def test_nbclient_runs_notebook_through_jkg(gateway_env):
    nb = run_async(execute_notebook, build_notebook())
    check_executed(nb)


def test_cli_execute_writes_output_notebook(gateway, tmp_path):
    source, output = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(build_notebook(), source)
    env = {**os.environ, "JKG_GATEWAY_URL": gateway.url, "JKG_GATEWAY_TOKEN": TOKEN,
           "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "jkg.client", "execute", str(source), "--output", str(output)],
                            cwd=REPO, env=env, capture_output=True, timeout=180)
    assert result.returncode == 0, result.stderr.decode()
    check_executed(nbformat.read(output, as_version=4))
    assert not source.with_name("in.nbconvert.ipynb").exists()

    env["JKG_GATEWAY_TOKEN"] = "wrong-token"
    result = subprocess.run([sys.executable, "-m", "jkg.client", "execute", str(source)],
                            cwd=REPO, env=env, capture_output=True, timeout=60)
    assert result.returncode == 2
    assert b"GatewayAuthError" in result.stderr and b"invalid or missing credentials" in result.stderr


def test_cli_timeout_is_one_line_and_keeps_what_ran(gateway, tmp_path):
    source, output = tmp_path / "slow.ipynb", tmp_path / "slow-out.ipynb"
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# slow"),
        nbformat.v4.new_code_cell("print('first')"),
        nbformat.v4.new_code_cell("import time\ntime.sleep(60)"),
        nbformat.v4.new_code_cell("print('never')")])
    nbformat.write(notebook, source)
    env = {**os.environ, "JKG_GATEWAY_URL": gateway.url, "JKG_GATEWAY_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "jkg.client", "execute", str(source), "--output", str(output),
                             "--timeout", "3"], cwd=REPO, env=env, capture_output=True, timeout=180)
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert "Traceback" not in stderr and "\x1b[" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [
        "error: cell 3 did not finish within --timeout 3 s; the notebook is written with what ran"]
    assert "[1/3] cell 2: print('first')" in stderr and "[2/3] cell 3: import time" in stderr
    written = nbformat.read(output, as_version=4)
    assert written.cells[1].outputs[0]["text"] == "first\n"
    assert not written.cells[3].outputs


def test_cli_error_has_no_colour_codes_off_a_terminal(gateway, tmp_path):
    source = tmp_path / "raises.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1/0")]), source)
    env = {**os.environ, "JKG_GATEWAY_URL": gateway.url, "JKG_GATEWAY_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "jkg.client", "execute", str(source)],
                            cwd=REPO, env=env, capture_output=True, timeout=180)
    stderr = result.stderr.decode()
    assert result.returncode == 1 and "ZeroDivisionError" in stderr and "\x1b[" not in stderr
