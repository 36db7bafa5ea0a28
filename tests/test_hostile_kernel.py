"""Hostile kernels against a real gateway: a fake ZMTP kernel attacks, a real one keeps answering.

The fake kernel (``fake_zmtp_kernel.py``, plain sockets) is served in bridge
mode next to a real ipykernel started through the API; each attack is
triggered by an execute request to the fake kernel while a well-behaved client
measures its round trip to the real one.  Gateway memory is read from /proc.
"""
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from support import GatewayProcess, stdout_of
from test_hostile_http import rss_mib

HERE = Path(__file__).resolve().parent
LIMIT = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = tmp_path_factory.mktemp("fake") / "kernel-fake.json"
    fake = subprocess.Popen([sys.executable, str(HERE / "fake_zmtp_kernel.py"), str(path)])
    deadline = time.monotonic() + 20
    while not path.exists() or not path.read_text().endswith("}"):
        assert time.monotonic() < deadline and fake.poll() is None
        time.sleep(0.05)
    gateway = GatewayProcess("--existing", str(path), "--max-message-size", str(LIMIT),
                             "--protocol-error-log-interval", "2", token="hostile-kernel").start()
    try:
        deadline = time.monotonic() + 30
        while True:
            listed = [k for k in gateway.request("GET", "/api/kernels").json() if k["name"] == "fake"]
            if listed:
                break
            assert time.monotonic() < deadline, gateway.output.decode(errors="replace")[-3000:]
            time.sleep(0.2)
        real = gateway.start_kernel()["id"]
        with gateway.connect(listed[0]["id"]) as attacker, gateway.connect(real) as good:
            yield gateway, attacker, good
    finally:
        gateway.stop()
        fake.kill()
        fake.wait(10)


def round_trip(good) -> float:
    started = time.monotonic()
    assert stdout_of(good.run("print(6 * 7)", timeout=60)) == "42\n"
    return time.monotonic() - started


def attack(attacker, code: str):
    msg_id = attacker.execute(code)
    return lambda: attacker.wait_for(lambda m: m["msg_type"] == "execute_reply"
                                     and m["parent_header"].get("msg_id") == msg_id, timeout=60)


def test_a_huge_announced_frame_costs_nothing(setup):
    gateway, attacker, good = setup
    baseline = round_trip(good)
    before = rss_mib(gateway.process.pid)
    attack(attacker, "huge")()
    during = round_trip(good)
    grown = rss_mib(gateway.process.pid) - before
    assert grown < 16, f"gateway grew {grown:.0f} MiB on a 1 GiB frame header"  # it was +1 GiB
    assert during < baseline + 2.0
    assert b"1073741824 bytes" in gateway.output  # logged once, by the aggregated error log
    attack(attacker, "none")()  # the fake kernel is still served after the dropped connection


def test_a_flood_of_tiny_frames_does_not_stall_other_kernels(setup):
    gateway, attacker, good = setup
    baseline = round_trip(good)
    before = rss_mib(gateway.process.pid)
    replied = attack(attacker, "flood 4")  # 4 MiB of two-byte messages: 1.4 million of them
    times = []

    def measure():
        for _ in range(3):
            times.append(round_trip(good))

    thread = threading.Thread(target=measure)
    thread.start()
    replied()
    thread.join(60)
    grown = rss_mib(gateway.process.pid) - before
    assert max(times) < baseline + 2.0, (baseline, times)  # was 3 to 7 s with no frame budget
    assert grown < 64, f"gateway grew {grown:.0f} MiB"


def test_malformed_messages_are_logged_by_the_count(setup):
    gateway, attacker, _ = setup
    start = len(gateway.output)
    attack(attacker, "junk 20000")()
    time.sleep(2.5)  # one --protocol-error-log-interval
    log = gateway.output[start:].decode(errors="replace")
    lines = [line for line in log.splitlines() if "malformed iopub message" in line]
    assert 1 <= len(lines) <= 3, lines  # not 20,000
    assert any("more malformed iopub messages dropped in the last 2 s" in line for line in lines), lines
