"""Session fixtures for the engine tests: a private Docker engine, its network and the kernel image.

Everything here is the test's own and is undone at the end of the session,
also when a test fails or the run is interrupted (a pytest finalizer plus
``atexit``):

- the Debian packages the tests need (docker.io, debootstrap, openssh-server)
  are installed with apt-get when missing;
- ``dockerd`` runs on a private socket, data root, exec root and pid file
  under a fresh temporary directory, with ``--iptables=false --bridge=none``:
  it never touches the machine's firewall or the default ``docker0`` bridge,
  and no other Docker on the machine sees its containers;
- containers join an ``--internal`` bridge network in a free 10.x.y.0/24: the
  host is ``.1`` on it (the gateway's response address), the containers have
  no default route, so nothing they do leaves the machine;
- the kernel image is built once with ``contrib/kernel-image/build-debootstrap.sh``
  (debootstrap + ``docker import``) and kept as a ``docker save`` tarball in
  ``$JKG_TEST_CACHE`` (default ``/var/cache/jkg-test``) named by a hash of the
  recipe, so later sessions only ``docker load`` it;
- every daemon started here is stopped by its pid, and its leftovers
  (containerd, shims, mounts, bridges) are removed.

Where the machine truly cannot (not root, not Linux, no apt-get for a missing
package) the tests are skipped with that reason.
"""
from __future__ import annotations

import atexit
import hashlib
import ipaddress
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "contrib" / "kernel-image" / "build-debootstrap.sh"
CACHE = Path(os.environ.get("JKG_TEST_CACHE", "/var/cache/jkg-test"))
IMAGE = "jkg-kernel:test"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PACKAGES = {"dockerd": "docker.io", "debootstrap": "debootstrap", "sshd": "openssh-server"}


# -- packages -------------------------------------------------------------------
def ensure_packages(*commands: str) -> str | None:
    """Install the packages providing ``commands`` if missing; return a skip reason or None."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "engine tests need root on Linux (dockerd, network namespaces)"
    missing = sorted({PACKAGES[c] for c in commands if shutil.which(c, path=SYSTEM_PATH) is None})
    if not missing:
        return None
    if shutil.which("apt-get", path=SYSTEM_PATH) is None:
        return f"{', '.join(missing)} missing and no apt-get to install them"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=600",
               *missing]
    # A package's maintainer script must not start a system-wide dockerd or sshd for us.
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode:
            subprocess.run(["apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=600"], env=env,
                           capture_output=True, timeout=600)
            result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    finally:
        if own_policy:
            policy.unlink()
    if result.returncode:
        return f"apt-get install {' '.join(missing)} failed: {result.stderr.strip()[-300:]}"
    return None


# -- addresses ----------------------------------------------------------------------
def networks_in_use() -> list[ipaddress.IPv4Network]:
    found = []
    out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, timeout=30).stdout
    for entry in json.loads(out or "[]"):
        for addr in entry.get("addr_info", []):
            found.append(ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    out = subprocess.run(["ip", "-j", "-4", "route", "show", "table", "all"], capture_output=True, text=True,
                         timeout=30).stdout
    for route in json.loads(out or "[]"):
        try:
            found.append(ipaddress.IPv4Network(route.get("dst", "default"), strict=False))
        except ValueError:
            pass
    return found


def free_subnet(prefix: int = 24, first: int = 10) -> ipaddress.IPv4Network:
    used = networks_in_use()
    for _ in range(500):
        subnet = ipaddress.IPv4Network(f"{first}.{random.randrange(100, 250)}.{random.randrange(256)}.0/{prefix}",
                                       strict=False)
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    pytest.skip("no free 10.x.y.0/24 subnet on this machine")


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


# -- processes ------------------------------------------------------------------------
def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc), found before it goes."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_pids(pids, grace: float = 15.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# -- the engine -----------------------------------------------------------------------
@dataclass
class DockerEngine:
    """A dockerd of the test session's own, with an internal network and the kernel image."""

    root: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    process: subprocess.Popen | None = None
    network: str = ""
    bridge: str = ""
    subnet: ipaddress.IPv4Network | None = None
    gateway_ip: str = ""
    image: str = IMAGE
    image_seconds: float = 0.0
    swarm_network: str = ""
    swarm_subnet: ipaddress.IPv4Network | None = None
    swarm_netns: str = ""
    swarm_ip: str = ""
    swarm_link: str = ""
    _stopped: bool = False

    @property
    def socket_path(self) -> Path:
        return self.root / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        cli = shutil.which("docker", path=SYSTEM_PATH) or "docker"
        result = subprocess.run([cli, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode:
            raise RuntimeError(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def client(self):
        import docker

        return docker.DockerClient(base_url=self.host, timeout=60)

    # -- lifecycle ---------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "DockerEngine":
        log = open(self.root / "dockerd.log", "wb")
        cmd = [shutil.which("dockerd", path=SYSTEM_PATH), "-H", self.host, "--data-root", str(self.root / "data"),
               "--exec-root", str(self.root / "x"), "--pidfile", str(self.root / "dockerd.pid"),
               "--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-forward=false",
               "--userland-proxy=false", "--log-level=warn"]
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while self.docker("version", "--format", "{{.Server.Version}}", check=False, timeout=30).returncode:
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = (self.root / "dockerd.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"dockerd did not start:\n{output}")
            time.sleep(0.2)
        return self

    def create_network(self) -> None:
        self.subnet = free_subnet()
        self.gateway_ip = str(next(self.subnet.hosts()))
        self.network, self.bridge = f"jkgtest-{self.tag}", f"jkgt{self.tag}"
        self.docker("network", "create", "--driver", "bridge", "--internal", "--subnet", str(self.subnet),
                    "--gateway", self.gateway_ip, "-o", f"com.docker.network.bridge.name={self.bridge}",
                    self.network)

    def load_image(self) -> None:
        """Load the cached image, or build it (and cache it) when the recipe changed."""
        started = time.monotonic()
        CACHE.mkdir(parents=True, exist_ok=True)
        tarball = CACHE / f"jkg-kernel-{recipe_hash()}.tar"
        if tarball.exists():
            self.docker("load", "-q", "-i", str(tarball), timeout=300)
        else:
            env = {**self.env, "DOCKER": shutil.which("docker", path=SYSTEM_PATH) or "docker",
                   "TMPDIR": str(self.root)}
            result = subprocess.run(["sh", str(BUILD_SCRIPT), self.image], env=env, capture_output=True, text=True,
                                    timeout=900)
            if result.returncode:
                raise RuntimeError(f"building the kernel image failed:\n{(result.stdout + result.stderr)[-3000:]}")
            partial = tarball.with_suffix(".partial")
            self.docker("save", "-o", str(partial), self.image, timeout=300)
            partial.rename(tarball)
            for old in CACHE.glob("jkg-kernel-*.tar"):
                if old != tarball:
                    old.unlink()
        self.image_seconds = time.monotonic() - started

    def stop(self) -> None:
        """Remove everything this engine made and stop it; safe to call twice."""
        if self._stopped or self.process is None:
            return
        self._stopped = True
        if self.process.poll() is None:
            # every container and service on this private daemon is a test's
            services = self.docker("service", "ls", "-q", check=False).stdout.split()
            if services:
                self.docker("service", "rm", *services, check=False, timeout=60)
            self.docker("swarm", "leave", "--force", check=False, timeout=60)
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=120)
            if self.network:
                self.docker("network", "rm", self.network, check=False)
        if self.swarm_link:
            subprocess.run(["ip", "link", "del", self.swarm_link], capture_output=True, timeout=30)
        if self.swarm_netns:
            subprocess.run(["umount", f"/run/netns/{self.swarm_netns}"], capture_output=True, timeout=30)
            Path(f"/run/netns/{self.swarm_netns}").unlink(missing_ok=True)
        below = descendants(self.process.pid)
        stop_pids([self.process.pid], grace=20)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            pass
        stop_pids([pid for pid in below if _alive(pid)], grace=5)
        for interface in (self.bridge, f"jkgg{self.tag}"):
            if interface:
                subprocess.run(["ip", "link", "del", interface], capture_output=True, timeout=30)
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(self.root))]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    def start_swarm(self) -> None:
        """Make this engine a single-node swarm with an overlay network the host can reach.

        Swarm services take their addresses from an overlay network, which
        lives in a namespace of its own; the test joins this host to it with
        a veth pair on the overlay's bridge (an address from the half of the
        subnet Docker does not hand out), the way a gateway running as a
        service would be attached.  The overlay's namespace exists once a
        container uses it, hence the idle anchor container.
        """
        gw_subnet, self.swarm_subnet = free_subnet(), free_subnet()
        # swarm's docker_gwbridge, created first so that its Linux bridge gets a name of ours
        self.docker("network", "create", "--driver", "bridge", "--subnet", str(gw_subnet),
                    "-o", f"com.docker.network.bridge.name=jkgg{self.tag}", "-o",
                    "com.docker.network.bridge.enable_ip_masquerade=false", "docker_gwbridge")
        self.docker("swarm", "init", "--advertise-addr", "127.0.0.1",
                    "--listen-addr", f"127.0.0.1:{free_port('127.0.0.1')}",
                    "--data-path-port", str(random.randrange(20000, 30000)), timeout=120)
        hosts = list(self.swarm_subnet.hosts())
        self.swarm_network = f"jkgtest-ov-{self.tag}"
        lower_half = ipaddress.IPv4Network(f"{self.swarm_subnet.network_address}/{self.swarm_subnet.prefixlen + 1}")
        self.docker("network", "create", "--driver", "overlay", "--attachable", "--internal",
                    "--subnet", str(self.swarm_subnet), "--ip-range", str(lower_half), self.swarm_network)
        self.docker("run", "-d", "--name", f"jkgtest-anchor-{self.tag}", "--network", self.swarm_network,
                    self.image, "sleep", "infinity")
        network_id = self.docker("network", "inspect", "-f", "{{.Id}}", self.swarm_network).stdout.strip()
        netns_file = self.root / "x" / "netns" / f"1-{network_id[:10]}"
        self.swarm_netns = f"jkgtest-ov-{self.tag}"
        Path("/run/netns").mkdir(exist_ok=True)
        Path(f"/run/netns/{self.swarm_netns}").touch()
        subprocess.run(["mount", "--bind", str(netns_file), f"/run/netns/{self.swarm_netns}"], check=True, timeout=30)
        self.swarm_ip = str(hosts[-1])
        host_if, peer = f"jkgo{self.tag}", f"jkgp{self.tag}"
        for step in (["link", "add", host_if, "mtu", "1450", "type", "veth", "peer", "name", peer,
                      "netns", self.swarm_netns],
                     ["-n", self.swarm_netns, "link", "set", peer, "master", "br0"],
                     ["-n", self.swarm_netns, "link", "set", peer, "up"],
                     ["addr", "add", f"{self.swarm_ip}/{self.swarm_subnet.prefixlen}", "dev", host_if],
                     ["link", "set", host_if, "up"]):
            subprocess.run(["ip", *step], check=True, capture_output=True, timeout=30)
        self.swarm_link = host_if

    def containers(self) -> list[str]:
        """Names of every kernel container on this engine, running or not (not the swarm's anchor)."""
        names = self.docker("ps", "-a", "--format", "{{.Names}}", check=False).stdout.split()
        return [name for name in names if not name.startswith("jkgtest-anchor-")]

    def services(self) -> list[str]:
        return self.docker("service", "ls", "--format", "{{.Name}}", check=False).stdout.split()


def recipe_hash() -> str:
    """Names the cached image: the build script and the launcher version it installs."""
    from importlib.metadata import version

    digest = hashlib.sha256(BUILD_SCRIPT.read_bytes())
    digest.update(version("gateway_provisioners").encode())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def docker_engine():
    """The session's Docker engine with its network and the kernel image loaded."""
    reason = ensure_packages("dockerd", "debootstrap")
    if reason:
        pytest.skip(reason)
    try:
        import gateway_provisioners  # noqa: F401
        import docker  # noqa: F401
    except ImportError as error:
        pytest.skip(f"gateway_provisioners[docker] is not installed ({error}); pip install '.[containers]'")
    engine = DockerEngine(Path(tempfile.mkdtemp(prefix="jkgd-", dir="/tmp")))
    atexit.register(engine.stop)
    try:
        engine.start()
        engine.create_network()
        engine.load_image()
        yield engine
    finally:
        engine.stop()
