"""Kernel start latency per engine: local vs Docker (cold, pooled) vs Docker Swarm vs SSH host, one run.

Run by hand as root (never by the test suite)::

    python benchmarks/bench_engines.py [--n 5] [--engines local,docker,docker-pool,swarm,ssh]

Uses the test suite's own engine set-up (tests/engines.py): a private dockerd on
an internal network with the cached kernel image, a single-node swarm, an sshd
in a network namespace.  For each engine one jkg runs with the engine options,
and the figure is ``POST /api/kernels`` → WebSocket → ``kernel_info_reply``
(what a client waits), p50 over ``--n`` starts, printed as a ratio to the local
kernel measured in the same run.  Everything started is stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import _gateway  # noqa: E402
from bench_lifecycle import gateway_start, p50  # noqa: E402
from engines import DockerEngine, ensure_packages, free_port  # noqa: E402
from ssh_hosts import SshHost  # noqa: E402

from jkg.kernelspecs import container_spec, ssh_spec  # noqa: E402


def write_specs(share: Path, engine: DockerEngine | None, ssh: SshHost | None) -> None:
    specs = {}
    if engine is not None:
        specs["docker-python"] = container_spec(engine.image)
        specs["swarm-python"] = container_spec(engine.image, swarm=True)
    if ssh is not None:
        specs["ssh-python"] = ssh_spec(sys.executable, str(ssh.scripts / "launch_ipykernel.py"))
    for name, spec in specs.items():
        (share / "kernels" / name).mkdir(parents=True)
        (share / "kernels" / name / "kernel.json").write_text(json.dumps(spec))


def measure(name: str, kernel_name: str, args: list[str], env: dict, n: int, logdir: Path, pooled: bool) -> float:
    target = _gateway.jkg(name, HERE.parent, logdir, env=env, args=args)
    target.kernel_name = kernel_name
    target.start()
    try:
        times = []
        for _ in range(n):
            if pooled:
                time.sleep(8)  # let the pool (re)fill: measure the warm path
            elapsed, kernel_id = gateway_start(target)
            times.append(elapsed)
            target.http.delete(target.base + f"/api/kernels/{kernel_id}", timeout=120)
        return p50(times)
    finally:
        target.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--engines", default="local,docker,docker-pool,swarm,ssh")
    args = parser.parse_args(argv)
    wanted = args.engines.split(",")
    reason = ensure_packages("dockerd", "debootstrap", "sshd")
    if reason:
        print(f"cannot run: {reason}")
        return 1
    logdir = Path(tempfile.mkdtemp(prefix="jkg-bench-engines-"))
    engine = ssh = None
    results: dict[str, float] = {}
    try:
        if {"docker", "docker-pool", "swarm"} & set(wanted):
            engine = DockerEngine(Path(tempfile.mkdtemp(prefix="jkgd-", dir="/tmp"))).start()
            engine.create_network()
            engine.load_image()
            if "swarm" in wanted:
                engine.start_swarm()
        if "ssh" in wanted:
            ssh = SshHost(Path(tempfile.mkdtemp(prefix="jkgssh-", dir="/tmp"))).start()
        share = logdir / "share"
        write_specs(share, engine, ssh)
        env = {"JUPYTER_PATH": str(share), "KERNEL_USERNAME": "bench"}
        common = ["--env-process-whitelist", "KERNEL_USERNAME"]
        runs = []
        if "local" in wanted:
            runs.append(("local", "python3", [], False))
        if engine is not None:
            docker = ["--docker-host", engine.host, "--docker-network", engine.network, "--response-ip",
                      engine.gateway_ip, "--response-port", str(free_port(engine.gateway_ip))]
            if "docker" in wanted:
                runs.append(("docker", "docker-python", docker, False))
            if "docker-pool" in wanted:
                runs.append(("docker-pool", "docker-python", [*docker, "--pool", "docker-python=1"], True))
            if "swarm" in wanted:
                runs.append(("swarm", "swarm-python", ["--docker-host", engine.host, "--docker-network",
                                                       engine.swarm_network, "--response-ip", engine.swarm_ip,
                                                       "--response-port", str(free_port(engine.swarm_ip))], False))
        if ssh is not None:
            runs.append(("ssh", "ssh-python", ["--remote-hosts", ssh.address, "--remote-user", "root",
                                               "--response-ip", ssh.host_ip,
                                               "--response-port", str(free_port(ssh.host_ip))], False))
        for name, kernel_name, extra, pooled in runs:
            run_env = {**env, "HOME": str(ssh.home)} if name == "ssh" else env
            try:
                results[name] = measure(name, kernel_name, [*common, *extra], run_env, args.n, logdir, pooled)
            except Exception as error:  # noqa: BLE001 - report and go on with the other engines
                print(f"SKIP {name}: {error}")
    finally:
        if ssh is not None:
            ssh.stop()
        if engine is not None:
            engine.stop()
    floor = results.get("local")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f} (2 cores)\n")
    print(f"{'engine':12} {'start→kernel_info p50':>22} {'÷ local':>8}")
    for name, value in results.items():
        ratio = value / floor if floor else float("nan")
        print(f"{name:12} {value:19.0f} ms {ratio:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
