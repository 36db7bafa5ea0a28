"""Session fixture for the SSH engine tests: an sshd in a network namespace of the test's own.

Undone at the end of the session (finalizer plus ``atexit``): the sshd is
stopped by its pid, every process left in the namespace is killed, the veth
pair and the namespace are deleted.  The gateway's SSH key and known_hosts
live in a private ``HOME``, never in the machine's ``~/.ssh``.
"""
from __future__ import annotations

import atexit
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engines import SYSTEM_PATH, ensure_packages, free_subnet, stop_pids


# -- an SSH host: sshd in a network namespace of the test's own ------------------------------
@dataclass
class SshHost:
    """An sshd inside a fresh network namespace, joined to this one by a veth pair.

    The "remote host" shares this machine's filesystem (so its Python and
    ipykernel) but not its network: kernels bind the namespace's address, and
    the gateway reaches them, and they the gateway's response address, only
    over the veth link.  ``home`` is the gateway's ``HOME`` (its SSH key and
    known_hosts), never the machine's ``~/.ssh``.
    """

    root: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    namespace: str = ""
    host_if: str = ""
    host_ip: str = ""
    address: str = ""
    process: subprocess.Popen | None = None
    scripts: Path | None = None
    _created: bool = False

    @property
    def home(self) -> Path:
        return self.root / "home"

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        if check and result.returncode:
            raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def start(self) -> "SshHost":
        self.namespace, self.host_if, peer = f"jkgssh-{self.tag}", f"jkgs{self.tag}", f"jkgr{self.tag}"
        subnet = free_subnet(prefix=30)
        self.host_ip, self.address = (str(a) for a in subnet.hosts())
        self.ip("netns", "add", self.namespace)
        self._created = True
        for step in (["link", "add", self.host_if, "type", "veth", "peer", "name", peer, "netns", self.namespace],
                     ["addr", "add", f"{self.host_ip}/30", "dev", self.host_if], ["link", "set", self.host_if, "up"],
                     ["-n", self.namespace, "addr", "add", f"{self.address}/30", "dev", peer],
                     ["-n", self.namespace, "link", "set", peer, "up"],
                     ["-n", self.namespace, "link", "set", "lo", "up"]):
            self.ip(*step)
        ssh = self.home / ".ssh"
        ssh.mkdir(parents=True, mode=0o700)
        keygen = shutil.which("ssh-keygen", path=SYSTEM_PATH)
        for path in (ssh / "id_ed25519", self.root / "host_key"):
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=60)
        (self.root / "authorized_keys").write_text((ssh / "id_ed25519.pub").read_text())
        host_key = (self.root / "host_key.pub").read_text().split()
        (ssh / "known_hosts").write_text(f"{self.address} {host_key[0]} {host_key[1]}\n")
        (self.root / "sshd_config").write_text("\n".join([
            f"ListenAddress {self.address}", "Port 22", f"HostKey {self.root / 'host_key'}",
            f"PidFile {self.root / 'sshd.pid'}", f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
            "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "UsePAM no", "StrictModes no", "X11Forwarding no", "AllowTcpForwarding no", ""]))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.scripts = self.root / "scripts"
        self.scripts.mkdir()
        import gateway_provisioners

        launchers = Path(gateway_provisioners.__file__).parent / "kernel-launchers"
        shutil.copy(launchers / "python" / "scripts" / "launch_ipykernel.py", self.scripts)
        shutil.copy(launchers / "shared" / "scripts" / "server_listener.py", self.scripts)
        log = open(self.root / "sshd.log", "wb")
        self.process = subprocess.Popen(["ip", "netns", "exec", self.namespace, shutil.which("sshd", path=SYSTEM_PATH),
                                         "-D", "-e", "-f", str(self.root / "sshd_config")],
                                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + 20
        while self.ip("netns", "exec", self.namespace, "ss", "-Htln", "sport = :22", check=False).stdout.strip() == "":
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {(self.root / 'sshd.log').read_text(errors='replace')}")
            time.sleep(0.1)
        return self

    def pids(self) -> set[int]:
        """Processes in the namespace other than sshd itself."""
        found = {int(p) for p in self.ip("netns", "pids", self.namespace, check=False).stdout.split()}
        return found - {self.process.pid} if self.process else found

    def kernel_pids(self) -> set[int]:
        found = set()
        for pid in self.pids():
            try:
                if b"launch_ipykernel" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.add(pid)
            except OSError:
                pass
        return found

    def stop(self) -> None:
        if self.process is not None:
            stop_pids([self.process.pid], grace=5)
            self.process = None
        if self._created:
            stop_pids(sorted(self.pids()), grace=3)
            self.ip("link", "del", self.host_if, check=False)
            self.ip("netns", "del", self.namespace, check=False)
            self._created = False
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def ssh_host():
    reason = ensure_packages("sshd")
    if reason:
        pytest.skip(reason)
    if shutil.which("ip", path=SYSTEM_PATH) is None:
        pytest.skip("ip(8) from iproute2 is not installed")
    try:
        import gateway_provisioners  # noqa: F401
    except ImportError as error:
        pytest.skip(f"gateway_provisioners is not installed ({error}); pip install '.[containers]'")
    host = SshHost(Path(tempfile.mkdtemp(prefix="jkgssh-", dir="/tmp")))
    atexit.register(host.stop)
    try:
        host.start()
        yield host
    finally:
        host.stop()
