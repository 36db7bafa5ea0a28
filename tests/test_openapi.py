"""jkg's OpenAPI description: served where tools look, and true of the live API (schemathesis)."""
import json
import re
import subprocess
import sys

import pytest
import yaml

from support import GatewayProcess

SCHEMATHESIS = [sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; "
                "sys.argv[0] = 'st'; sys.exit(schemathesis())"]


@pytest.fixture(scope="module")
def api_gateway():
    # --max-kernels bounds what generated POSTs start; a base URL checks the servers entry
    gateway = GatewayProcess("--state-db", "none", "--max-kernels", "2", "--base-url", "/gw",
                             token="spec-token").start()
    try:
        yield gateway
    finally:
        gateway.stop()


def test_spec_is_served_at_the_reference_paths(api_gateway):
    as_yaml = api_gateway.request("GET", "/gw/api/spec.yaml", headers={"Authorization": ""})
    assert as_yaml.status_code == 200 and as_yaml.headers["Content-Type"] == "application/yaml"
    spec = yaml.safe_load(as_yaml.text)
    assert spec["openapi"].startswith("3.") and spec["servers"] == [{"url": "/gw/"}]
    assert yaml.safe_load(api_gateway.request("GET", "/gw/api/swagger.yaml").text) == spec
    assert json.loads(api_gateway.request("GET", "/gw/api/swagger.json").content) == spec
    routes = {"/api", "/api/status", "/api/kernelspecs", "/api/kernels", "/api/kernels/{kernel_id}",
              "/api/kernels/{kernel_id}/restart", "/api/kernels/{kernel_id}/channels", "/api/sessions",
              "/api/sessions/{session_id}", "/metrics"}
    assert routes <= set(spec["paths"])


def test_live_responses_match_the_spec(api_gateway, tmp_path):
    """Every check but ``ignored_auth``: its unauthenticated requests would trip the failed-login lockout
    (429 for everyone on 127.0.0.1, as designed); auth is tested in test_tenants.py and test_rest.py.
    The WebSocket route is not REST: see test_channels.py."""
    pytest.importorskip("schemathesis")
    result = subprocess.run(
        [*SCHEMATHESIS, "run", f"{api_gateway.url}/gw/api/swagger.json", "--checks", "all",
         "--exclude-checks", "ignored_auth", "--exclude-operation-id", "kernel_channels",
         "-H", f"Authorization: token {api_gateway.token}", "--max-examples", "5", "--seed", "1",
         "--request-timeout", "60", "--no-color"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)  # its .schemathesis/ cache goes there
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-6000:]
    tested = re.search(r"Tested:\s+(\d+)", report)
    assert tested and int(tested.group(1)) >= 18, report[-3000:]
    assert b"Traceback" not in api_gateway.output and b"#critical]" not in api_gateway.output
