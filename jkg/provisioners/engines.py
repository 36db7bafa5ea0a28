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
import re
import subprocess
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
    (or ``GP_SOCKET_TIMEOUT``) is kept, otherwise the provisioner's wait for the launcher's connection info is
    bounded by ``--kernel-launch-timeout`` like every other start.

    :param config: the :class:`jkg.config.GatewayConfig`, which declares every option read here.
    """
    env = {}
    for option, variable in (("docker_host", "DOCKER_HOST"), ("docker_network", "GP_DOCKER_NETWORK"),
                             ("response_ip", "GP_RESPONSE_IP"), ("remote_user", "GP_REMOTE_USER")):
        value = getattr(config, option)
        if value:
            env[variable] = value
    if config.response_port:
        env["GP_RESPONSE_PORT"] = str(config.response_port)
    if config.remote_hosts:
        env["GP_REMOTE_HOSTS"] = ",".join(config.remote_hosts)
    if "GP_LAUNCH_TIMEOUT" not in environ:
        env["GP_LAUNCH_TIMEOUT"] = str(max(1, math.ceil(config.kernel_launch_timeout)))
    if "GP_SOCKET_TIMEOUT" not in environ:
        # 0 makes gateway_provisioners' sockets non-blocking: its response listener's periodic
        # accept() otherwise sleeps 10 ms at a time, ~100 times a second, on the loop it runs on.
        env["GP_SOCKET_TIMEOUT"] = "0"
    return env


def apply(config: Any, environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Put the engine settings into the gateway's environment; return what was set."""
    env = provisioner_environ(config, environ)
    environ.update(env)
    return env


def _provisioner_entry(spec: Any) -> dict:
    metadata = spec.get("metadata") if isinstance(spec, dict) else getattr(spec, "metadata", None)
    entry = (metadata or {}).get("kernel_provisioner") if isinstance(metadata, dict) else None
    return entry if isinstance(entry, dict) else {}


def provisioner_name(spec: Any) -> str:
    """The provisioner a kernelspec (a ``KernelSpec`` or its dict) names; ``local-provisioner`` if none."""
    name = _provisioner_entry(spec).get("provisioner_name")
    return name if isinstance(name, str) and name else "local-provisioner"


def is_remote(spec: Any) -> bool:
    return provisioner_name(spec) not in LOCAL_PROVISIONERS


def is_container(spec: Any) -> bool:
    """Whether a local launcher asks an engine for the kernel (Docker, Swarm, Kubernetes, YARN...)."""
    name = provisioner_name(spec)
    return name not in LOCAL_PROVISIONERS and name not in SSH_PROVISIONERS


def launcher_env(spec: Any, environ: Mapping[str, str], errors_file: str | None = None) -> dict[str, str]:
    """Extra launch environment for a kernelspec: the engine's address for container launchers."""
    if not is_container(spec):
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


# -- kernels on SSH hosts: make sure a DELETE really ends them ----------------------------------
_KERNEL_ID = re.compile(r"[0-9a-fA-F-]{1,64}\Z")


def remote_kernel_process(provisioner: Any) -> tuple[str, int, str] | None:
    """``(host ip, pid, kernel id)`` of a kernel the distributed provisioner started over SSH, else None."""
    if type(provisioner).__name__ != "DistributedProvisioner":
        return None
    ip, pid, kernel_id = getattr(provisioner, "ip", None), getattr(provisioner, "pid", 0), provisioner.kernel_id
    if not isinstance(ip, str) or type(pid) is not int or pid <= 1 or not _KERNEL_ID.match(str(kernel_id or "")):
        return None
    return ip, pid, str(kernel_id)


def reap_command(pid: int, kernel_id: str, grace: float = 2.0) -> str:
    """Shell command for the remote host: end ``pid`` only if it is still that kernel's launcher.

    The kernel id in its command line tells the launcher from a process that
    reused the pid.  Both values are checked (an int and a UUID), never free text.
    """
    if type(pid) is not int or pid <= 1 or not _KERNEL_ID.match(kernel_id):
        raise ValueError("bad pid or kernel id")
    alive = f"grep -qsF -- '{kernel_id}' /proc/{pid}/cmdline"
    return (f"if {alive}; then kill -TERM {pid}; i=0; while {alive} && [ $i -lt {int(grace * 10)} ]; "
            f"do sleep 0.1; i=$((i+1)); done; {alive} && kill -KILL {pid}; fi; true")


def reap_remote_kernel(provisioner: Any, target: tuple[str, int, str]) -> None:
    """End a kernel that outlived its shutdown on an SSH host (blocking: run it in a thread).

    Why: gateway_provisioners tells the launcher's listener to exit as soon as
    a shutdown is *requested*; from then on ``poll()`` sees the listener's
    port refused and reports the kernel gone, so jupyter_client never kills
    it.  A kernel that does not stop at once (a cell that ignores SIGINT, a
    blocking C call) kept running until it finished by itself -- tens of
    seconds or forever.  This asks the host over SSH, after the shutdown.
    """
    ip, pid, kernel_id = target
    provisioner._rsh(ip, reap_command(pid, kernel_id))


# -- container kernels: nothing left on the engine after a failed start ---------------------------
CONTAINER_PROVISIONERS = frozenset({"DockerProvisioner", "DockerSwarmProvisioner"})


# How long a failed start waits for a container launcher still asking its engine before killing it.
LAUNCHER_GRACE = 120.0


def remove_engine_leftovers(provisioner: Any, kernel_id: str, grace: float = LAUNCHER_GRACE) -> list[str]:
    """After a failed start: wait for the launcher, then remove every container or service labelled
    with ``kernel_id``; return their names (blocking: run it off the reactor).

    Why: when a start fails (launch timeout, a response that never comes),
    gateway_provisioners kills only the container it has already *seen*
    running, and does not wait for its local launcher.  On a slow engine the
    launcher asked for the container after that -- or left it ``created`` and
    never started, which the provisioner's lookup of running containers does
    not list -- and the container outlived the failed start.  The launcher is
    waited for (not killed: a request the engine already has could still
    create a container after the kill), so nothing creates another one after
    the sweep.
    """
    kind = type(provisioner).__name__
    if kind not in CONTAINER_PROVISIONERS or not _KERNEL_ID.match(str(kernel_id or "")):
        return []
    launcher = provisioner.local_proc  # the Popen of the local launcher, None once reaped
    if launcher is not None:
        try:
            launcher.wait(grace)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
    client = provisioner.client
    label = {"label": f"kernel_id={kernel_id}"}
    found = client.services.list(filters=label) if kind == "DockerSwarmProvisioner" else \
        client.containers.list(all=True, filters=label)
    removed = []
    for item in found:
        try:
            item.remove(**({} if kind == "DockerSwarmProvisioner" else {"force": True}))
            removed.append(item.name)
        except Exception:  # noqa: BLE001 - gone meanwhile (auto-remove) is the goal
            pass
    return removed


# -- tenant limits for container kernels ---------------------------------------------------------
LIMIT_NAMES = ("memory", "processes", "cpu_time", "open_files")


def limits_env(limits: Any) -> dict[str, str]:
    """``JKG_KERNEL_*`` variables for a container launcher from a tenant's limits.

    ``limits`` is the :class:`jkg.sandbox.settings.Limits` of the kernel's
    sandbox profile (tenants file ``[sandbox]`` table; ``None`` is unlimited).
    A container is its own sandbox: jkg's bwrap sandbox does not wrap a
    container launcher, the engine enforces these instead (``disk`` has no
    container equivalent here and is left out).
    The names never come from a client (clients may only set ``KERNEL_*``).
    """
    env = {}
    for name in LIMIT_NAMES:
        value = getattr(limits, name)
        if type(value) is int and value > 0:
            env[f"JKG_KERNEL_{name.upper()}"] = str(value)
    return env


def check_remote_host(spec: Any, env: Mapping[str, str], environ: Mapping[str, str]) -> None:
    """Refuse a client's ``KERNEL_REMOTE_HOST`` that is not one of the configured SSH hosts.

    The distributed provisioner logs in to whatever host that variable names,
    with the gateway's key; a client must not choose hosts beyond the operator's list.

    :raises ValueError: naming the host.
    """
    host = env.get("KERNEL_REMOTE_HOST")
    if host is None or provisioner_name(spec) not in SSH_PROVISIONERS:
        return
    config = _provisioner_entry(spec).get("config")
    configured = (config.get("remote_hosts") if isinstance(config, dict) else None) \
        or environ.get("GP_REMOTE_HOSTS", "").split(",")
    if host not in [name.strip() for name in configured if name.strip()]:
        raise ValueError(f"KERNEL_REMOTE_HOST {host[:80]!r} is not one of the gateway's remote hosts")
