"""What this machine offers for sandboxing: bwrap that can make namespaces, setpriv, cgroups.

Checked once at startup (blocking, before the reactor runs); the answer is
a :class:`HostSupport` that the provisioner and the startup check share.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

PROBE = ("--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid", "--unshare-net",
         "--tmpfs", "/tmp", "--", "true")


@dataclass(frozen=True)
class HostSupport:
    bwrap: str | None
    setpriv: str | None
    problem: str = ""  # why bwrap cannot be used, when it cannot

    @property
    def available(self) -> bool:
        return self.bwrap is not None and not self.problem


def probe_host(which=shutil.which, run=subprocess.run) -> HostSupport:
    """Find bwrap and check that it can make the namespaces a kernel gets."""
    bwrap = which("bwrap")
    setpriv = which("setpriv")
    if bwrap is None:
        return HostSupport(None, setpriv, "bubblewrap (bwrap) is not installed")
    try:
        result = run([bwrap, *PROBE], capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as error:
        return HostSupport(bwrap, setpriv, f"bwrap could not run: {error}")
    if result.returncode != 0:
        why = result.stderr.decode(errors="replace").strip().splitlines()
        detail = why[-1] if why else result.returncode
        return HostSupport(bwrap, setpriv, f"bwrap cannot make namespaces here: {detail}")
    if os.geteuid() == 0 and setpriv is None:
        return HostSupport(bwrap, None, "setpriv (util-linux) is needed to run kernels unprivileged as root")
    return HostSupport(bwrap, setpriv)
