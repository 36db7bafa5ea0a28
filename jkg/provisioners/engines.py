"""Gateway-wide settings for the engines gateway_provisioners drives (Docker, Swarm, SSH).

gateway_provisioners reads its settings from the gateway process's
environment (``GP_*`` and ``DOCKER_HOST``), several of them once, when its
modules are imported.  jkg's options for them (``--docker-host``,
``--docker-network``, ``--response-ip``, ``--response-port``,
``--remote-hosts``, ``--remote-user``) are therefore turned into those
variables once, at startup, before any provisioner is imported
(:func:`apply`), so operators configure the gateway and not every kernelspec.

The short-lived local launcher a container provisioner runs (e.g.
:mod:`jkg.provisioners.docker_launch`) only sees the kernel's environment;
:func:`launcher_env` adds the engine's address to it -- and only for the
kernelspecs that name such a provisioner, so no other kernel learns where the
Docker socket is.  Pure functions apart from :func:`apply`.
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping, MutableMapping

# Provisioners that run the kernel as a local process: no engine, nothing to add.
LOCAL_PROVISIONERS = frozenset({"local-provisioner", "jkg-netns-provisioner"})
# Provisioners that start a kernel over SSH themselves: no local launcher to inform.
SSH_PROVISIONERS = frozenset({"distributed-provisioner"})
# What a local launcher needs to reach its engine.
LAUNCHER_VARIABLES = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONFIG",
                      "GP_DOCKER_NETWORK", "KUBECONFIG")
LAUNCH_ERRORS_VARIABLE = "JKG_KERNEL_LAUNCH_ERRORS"


def provisioner_environ(config: Any, environ: Mapping[str, str]) -> dict[str, str]:
    """The ``GP_*``/``DOCKER_HOST`` variables jkg's options stand for.

    Options given win over the environment; an operator's own ``GP_LAUNCH_TIMEOUT``
    is kept, otherwise the provisioner's wait for the launcher's connection info is
    bounded by ``--kernel-launch-timeout`` like every other start.
    """
    env = {}
    for option, variable in (("docker_host", "DOCKER_HOST"), ("docker_network", "GP_DOCKER_NETWORK"),
                             ("response_ip", "GP_RESPONSE_IP"), ("remote_user", "GP_REMOTE_USER")):
        value = getattr(config, option, "")
        if value:
            env[variable] = value
    if getattr(config, "response_port", 0):
        env["GP_RESPONSE_PORT"] = str(config.response_port)
    if getattr(config, "remote_hosts", ()):
        env["GP_REMOTE_HOSTS"] = ",".join(config.remote_hosts)
    if "GP_LAUNCH_TIMEOUT" not in environ:
        env["GP_LAUNCH_TIMEOUT"] = str(max(1, math.ceil(config.kernel_launch_timeout)))
    return env


def apply(config: Any, environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Put the engine settings into the gateway's environment; return what was set."""
    env = provisioner_environ(config, environ)
    environ.update(env)
    return env


def provisioner_name(spec: Any) -> str:
    """The provisioner a kernelspec (a ``KernelSpec`` or its dict) names; ``local-provisioner`` if none."""
    metadata = spec.get("metadata") if isinstance(spec, dict) else getattr(spec, "metadata", None)
    entry = (metadata or {}).get("kernel_provisioner") or {}
    name = entry.get("provisioner_name") if isinstance(entry, dict) else None
    return name if isinstance(name, str) and name else "local-provisioner"


def is_remote(spec: Any) -> bool:
    return provisioner_name(spec) not in LOCAL_PROVISIONERS


def launcher_env(spec: Any, environ: Mapping[str, str], errors_file: str | None = None) -> dict[str, str]:
    """Extra launch environment for a kernelspec: the engine's address for container launchers."""
    name = provisioner_name(spec)
    if name in LOCAL_PROVISIONERS or name in SSH_PROVISIONERS:
        return {}
    extra = {variable: environ[variable] for variable in LAUNCHER_VARIABLES if environ.get(variable)}
    if errors_file:
        extra[LAUNCH_ERRORS_VARIABLE] = errors_file
    return extra


def launch_stderr(spec: Any, local_default: Any) -> dict[str, Any]:
    """The ``stderr`` argument for ``start_kernel``.

    Local kernels get jkg's pipe (their stderr tail goes into failure reports);
    the SSH provisioner passes its own ``stderr`` when it starts a kernel on
    this host, so it must get none.
    """
    if provisioner_name(spec) in SSH_PROVISIONERS:
        return {}
    return {"stderr": local_default}


def read_launch_errors(path: str | None, limit: int = 2000) -> str:
    """What a launcher wrote to its errors file (then removed), or ''."""
    if not path:
        return ""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read(limit)
        os.unlink(path)
    except OSError:
        return ""
    return " ".join(text.split())
