"""/metrics read by Prometheus's own text-format parser after a known workload."""
import json
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from support import GatewayProcess


def scrape(gateway, **kwargs) -> dict:
    """``{(sample name, frozenset(labels)): value}`` from the gateway's /metrics."""
    response = gateway.request("GET", "/metrics", **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def broken_spec(tmp_path_factory):
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "broken"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": ["/nonexistent/python", "-f", "{connection_file}"], "language": "python", "display_name": "broken"}))
    return str(root)


def test_metrics_count_a_known_workload(broken_spec):
    gateway = GatewayProcess("--pool", "python3=1", "--cull-idle-timeout", "3", "--cull-interval", "1",
                             "--state-db", "none", token="metrics-token",
                             env={"JUPYTER_PATH": broken_spec}).start()
    try:
        deadline = time.monotonic() + 60
        while value(scrape(gateway), "jkg_pool_kernels", kernelspec="python3") < 1:
            assert time.monotonic() < deadline, "the warm pool did not fill"
            time.sleep(0.3)
        kept = gateway.start_kernel()["id"]  # from the pool
        with gateway.connect(kept) as client:  # connected: never culled
            culled = gateway.start_kernel()["id"]
            assert gateway.request("POST", "/api/kernels", json={"name": "broken"}).status_code == 500
            for _ in range(3):
                client.run("print('hi')")
            samples = scrape(gateway)
            assert value(samples, "jkg_websocket_connections") == 1
            assert gateway.request("POST", f"/api/kernels/{kept}/restart").status_code == 200
            deadline = time.monotonic() + 30
            while gateway.request("GET", f"/api/kernels/{culled}").status_code != 404:
                assert time.monotonic() < deadline, "the idle kernel was not culled"
                time.sleep(0.5)
        assert value(samples, "jkg_messages_total", direction="to_kernel", channel="shell") == 3
        assert value(samples, "jkg_messages_total", direction="from_kernel", channel="iopub") >= 3 * 4
        assert value(samples, "jkg_message_bytes_total", direction="to_kernel", channel="shell") > 3 * 100
        assert value(samples, "jkg_kernel_starts_total", kernelspec="python3") == 2
        assert value(samples, "jkg_kernel_start_seconds_count", kernelspec="python3") == 2
        assert value(samples, "jkg_kernel_start_failures_total", kernelspec="broken") == 1
        assert value(samples, "jkg_pool_handouts_total", kernelspec="python3") >= 1
        assert value(samples, "jkg_pool_size", kernelspec="python3") == 1
        assert ("jkg_reactor_lag_seconds", frozenset()) in samples
        assert value(samples, "jkg_reactor_lag_seconds") >= 0
        for _ in range(2):
            assert gateway.request("GET", "/api/kernels", headers={"Authorization": "token wrong"}).status_code == 401
        samples = scrape(gateway)
        assert value(samples, "jkg_kernel_restarts_total", reason="requested") == 1
        assert value(samples, "jkg_kernel_culls_total") == 1
        assert value(samples, "jkg_auth_failures_total") == 2
        deadline = time.monotonic() + 30  # the restarted kernel settles to idle (slowly on a loaded machine)
        while value(samples, "jkg_kernels", state="idle", kernelspec="python3", tenant="default") != 1:
            assert time.monotonic() < deadline, [s for s in samples if s[0] == "jkg_kernels"]
            time.sleep(0.3)
            samples = scrape(gateway)
        assert value(samples, "jkg_websocket_connections") == 0
        # the same credentials as the API
        assert gateway.request("GET", "/metrics", headers={"Authorization": "token wrong"}).status_code == 401
        assert requests.get(gateway.url + "/metrics", timeout=30).status_code == 401
    finally:
        gateway.stop()


def test_public_metrics_count_lockouts():
    gateway = GatewayProcess("--metrics-public", "--state-db", "none", token="lock-token").start()
    try:
        statuses = [gateway.request("GET", "/api", headers={"Authorization": "token wrong"}).status_code
                    for _ in range(12)]
        assert statuses.count(401) == 11 and statuses[-1] == 429
        samples = scrape(gateway, headers={"Authorization": ""})  # no credentials needed (nor accepted here)
        assert value(samples, "jkg_auth_failures_total") == 11
        assert value(samples, "jkg_auth_lockouts_total") == 1
    finally:
        gateway.stop()


def test_reactor_lag_is_how_late_the_timer_fires():
    from twisted.internet.task import Clock

    from jkg.metrics import ReactorLag

    clock = Clock()
    now = [100.0]
    lag = ReactorLag(clock, interval=1.0, now=lambda: now[0])
    lag.startService()
    now[0] += 1.25  # the reactor was busy for a quarter second
    clock.advance(1.0)
    assert lag.last == pytest.approx(0.25) and lag.worst == pytest.approx(0.25)
    now[0] += 1.0
    clock.advance(1.0)
    assert lag.last == pytest.approx(0.0) and lag.worst == pytest.approx(0.25)
    lag.stopService()
