"""jupyter-kernel-gateway 3.0.1 in its own venv, made once, shared by the benchmarks and the tests.

Standard library only, so the tests can import it.  Several processes may
need the venv at once (two pytest-xdist workers, a benchmark run beside the
suite): the first to take the lock beside the venv makes it, the others find
it made once the lock is theirs.
"""
from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

KG_VERSION = "3.0.1"
KG_VENV = Path(__file__).resolve().parent / ".venv-kg"
KG_BIN = KG_VENV / "bin" / "jupyter-kernelgateway"


class Unavailable(Exception):
    """The venv could not be made (no network, no PyPI): the caller skips what needs it."""


def ensure_kg() -> Path:
    """The ``jupyter-kernelgateway`` executable, installing it into :data:`KG_VENV` when missing."""
    with open(KG_VENV.parent / ".venv-kg.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if KG_BIN.exists():
            return KG_BIN
        print(f"[kg] installing jupyter-kernel-gateway=={KG_VERSION} into {KG_VENV} (one-off)",
              file=sys.stderr, flush=True)
        python = KG_VENV / "bin" / "python"
        try:
            if not python.exists():
                subprocess.run([sys.executable, "-m", "venv", str(KG_VENV)], check=True, capture_output=True,
                               timeout=300)
            result = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                     f"jupyter-kernel-gateway=={KG_VERSION}", "ipykernel"],
                                    capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.SubprocessError) as error:
            raise Unavailable(f"could not create a venv for jupyter-kernel-gateway: {error!r}") from error
        if result.returncode != 0 or not KG_BIN.exists():
            raise Unavailable(f"could not install jupyter-kernel-gateway {KG_VERSION} from PyPI: "
                              f"{result.stderr[-500:]}")
        return KG_BIN
