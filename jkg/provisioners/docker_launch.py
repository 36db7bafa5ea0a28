"""Start one kernel container (or Swarm service) for gateway_provisioners' Docker provisioners.

gateway_provisioners' ``DockerProvisioner`` and ``DockerSwarmProvisioner``
run the kernelspec's argv as a short-lived local process whose only job is to
ask the engine for a container; the container's launcher then sends its
connection info back to the gateway's response address, and the provisioner
finds the container by its ``kernel_id`` label.  This is that local process,
written for jkg because the one gateway_provisioners ships cannot set
resource limits, passes the whole gateway environment into the container and
ignores ``GP_DOCKER_NETWORK``.  Kernelspec argv (``python -m jkg.kernelspecs
docker`` writes it)::

    [python, -m, jkg.provisioners.docker_launch, --kernel-id, {kernel_id},
     --response-address, {response_address}, --public-key, {public_key},
     --port-range, {port_range}]

What it reads from its environment (set by the provisioner and by jkg, never
by a client: ``KERNEL_*`` values a client may send are only ever passed on as
the kernel's environment, not as container settings):

- ``KERNEL_IMAGE`` (the kernelspec's ``image_name``), ``GP_DOCKER_NETWORK``,
  ``GP_DOCKER_MODE`` (``docker`` or ``swarm``), ``DOCKER_HOST`` and friends;
- ``KERNEL_UID``/``KERNEL_GID`` (gateway_provisioners refuses 0), checked to
  be plain numbers here;
- ``JKG_KERNEL_MEMORY`` (bytes), ``JKG_KERNEL_PROCESSES``, ``JKG_KERNEL_CPU_TIME``
  (CPU seconds), ``JKG_KERNEL_OPEN_FILES``: the tenant's limits, mapped to the
  container's memory limit (swap included), pids limit and ``cpu``/``nofile``
  ulimits; a Swarm service gets the memory limit only.

Every container runs with all capabilities dropped, ``no-new-privileges``, an
init process as pid 1 and is removed when it exits.  A container that exits
within :data:`EXIT_WATCH` seconds is reported with the tail of its output.
Errors go to stderr as one line (the engine's own message) and to the file
named by ``JKG_KERNEL_LAUNCH_ERRORS``; exit status 1 makes the provisioner
fail the start at once, and jkg puts the line into the 500 it answers.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import threading

# Settings for this process or the engine: never part of the kernel's environment.
ENGINE_VARIABLES = frozenset({"PATH", "DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONFIG",
                              "PYTHONPATH", "JPY_PARENT_PID"})
ENGINE_PREFIXES = ("GP_", "JKG_KERNEL_")
LABELS = {"component": "kernel", "app": "gateway-provisioners"}
# How long a started container is watched for an early exit.  Short: the
# provisioner waits for this process (blocking) when it shuts a kernel down.
EXIT_WATCH = 3.0
# How long a container that exited at start is given to be removed before the launcher reports it.
REMOVAL_WAIT = 10
MAX_REPORT = 2000
_NUMBER = re.compile(r"[0-9]{1,9}\Z")
_LIMIT = re.compile(r"[0-9]{1,18}\Z")
LIMIT_KEYS = ("memory", "processes", "cpu_time", "open_files")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


class LaunchError(Exception):
    """A launch that cannot go ahead; the message is printed as is (unless it was ``reported`` already)."""

    def __init__(self, message: str, reported: bool = False):
        super().__init__(message)
        self.reported = reported


def container_name(username: str, kernel_id: str) -> str:
    """``<user>-<kernel id>`` as the provisioners name it, reduced to the characters docker accepts."""
    user = _NAME_CHARS.sub("-", username)[:63].strip("-.") or "kernel"
    if not user[0].isalnum():
        user = "k" + user
    return f"{user}-{kernel_id}"


def limits(env: dict[str, str]) -> dict[str, int]:
    """The tenant's limits (named as in the tenants file's ``[sandbox]`` table); absent ones are left out."""
    found = {}
    for key in LIMIT_KEYS:
        variable = f"JKG_KERNEL_{key.upper()}"
        raw = env.get(variable, "").strip()
        if not raw:
            continue
        if not _LIMIT.match(raw) or int(raw) <= 0:
            raise LaunchError(f"{variable} must be a positive whole number: {raw[:40]!r}")
        found[key] = int(raw)
    return found


def container_limits(wanted: dict[str, int]) -> dict:
    """docker run arguments for the limits: memory (no swap beyond it), pids, RLIMIT_CPU and RLIMIT_NOFILE."""
    from docker.types import Ulimit

    options: dict = {}
    if "memory" in wanted:
        options.update(mem_limit=wanted["memory"], memswap_limit=wanted["memory"])
    if "processes" in wanted:
        options["pids_limit"] = wanted["processes"]
    ulimits = [Ulimit(name=name, soft=wanted[key], hard=wanted[key])
               for key, name in (("cpu_time", "cpu"), ("open_files", "nofile")) if key in wanted]
    if ulimits:
        options["ulimits"] = ulimits
    return options


def user_spec(env: dict[str, str]) -> str:
    uid, gid = env.get("KERNEL_UID", "1000"), env.get("KERNEL_GID", "100")
    if not (_NUMBER.match(uid) and _NUMBER.match(gid)) or int(uid) == 0 or int(gid) == 0:
        raise LaunchError(f"KERNEL_UID and KERNEL_GID must be non-zero numbers; got {uid[:20]!r}:{gid[:20]!r}")
    return f"{int(uid)}:{int(gid)}"


def kernel_environment(env: dict[str, str], args: argparse.Namespace) -> dict[str, str]:
    """The container's environment: the kernel env jkg built, plus what the image's launcher needs."""
    kept = {name: value for name, value in env.items()
            if name not in ENGINE_VARIABLES and not name.startswith(ENGINE_PREFIXES)}
    kept.update(KERNEL_ID=args.kernel_id, RESPONSE_ADDRESS=args.response_address, PUBLIC_KEY=args.public_key,
                PORT_RANGE=args.port_range, KERNEL_SPARK_CONTEXT_INIT_MODE="none")
    if args.kernel_class_name:
        kept["KERNEL_CLASS_NAME"] = args.kernel_class_name
    if args.transport_encryption:
        kept["TRANSPORT_ENCRYPTION"] = args.transport_encryption
    return kept


def launch(args: argparse.Namespace, env: dict[str, str], client=None) -> str:
    """Create the container or service; return its name."""
    image = env.get("KERNEL_IMAGE")
    if not image:
        raise LaunchError("no image: set image_name in the kernelspec's provisioner config")
    network = env.get("GP_DOCKER_NETWORK") or "bridge"
    if args.network and args.network != network:
        # the provisioner looks the kernel's address up on the gateway's network only
        raise LaunchError(f"the kernelspec wants network {args.network!r} but the gateway uses {network!r} "
                          "(--docker-network)")
    name = container_name(env.get("KERNEL_USERNAME", ""), args.kernel_id)
    labels = {**LABELS, "kernel_id": args.kernel_id}
    wanted = limits(env)
    user = user_spec(env)
    environment = kernel_environment(env, args)
    if client is None:
        from docker.client import DockerClient

        client = DockerClient.from_env()
    if env.get("GP_DOCKER_MODE", "docker") == "swarm":
        from docker.types import EndpointSpec, Resources, RestartPolicy

        client.services.create(
            image, name=name, env=environment, labels=labels, container_labels=labels, networks=[network],
            user=user, init=True, cap_drop=["ALL"],
            endpoint_spec=EndpointSpec(mode="dnsrr"), restart_policy=RestartPolicy(condition="none"),
            resources=Resources(mem_limit=wanted.get("memory")))
    else:
        from docker.errors import ImageNotFound

        try:
            client.images.get(image)  # never pulled implicitly: the engine may not reach a registry
        except ImageNotFound as error:
            raise LaunchError(f"image {image!r} not found on the engine (pull or load it first): "
                              f"{getattr(error, 'explanation', None) or error}") from None
        container = client.containers.run(
            image, name=name, environment=environment, labels=labels, network=network, user=user,
            detach=True, auto_remove=True, init=True, cap_drop=["ALL"], security_opt=["no-new-privileges"],
            **container_limits(wanted))
        watch_for_early_exit(container, EXIT_WATCH, lambda message: report(env, message))
    return name


def watch_for_early_exit(container, seconds: float, on_exit) -> None:
    """Raise with the container's last output if it exits within ``seconds``.

    The container removes itself when it exits, so its output is read while
    it runs: the log stream ends when the container does.  The output is
    given to ``on_exit`` at once, before the engine has removed the container:
    the provisioner fails the start as soon as it sees the container
    ``exited`` or ``removing``, and jkg reads the report then.
    """
    output = bytearray()
    ended = threading.Event()

    def follow():
        try:
            for chunk in container.logs(stream=True, follow=True):
                output.extend(chunk)
                del output[:-MAX_REPORT]
        except Exception:  # noqa: BLE001 - removed under us: it exited
            pass
        ended.set()

    threading.Thread(target=follow, daemon=True).start()
    if ended.wait(seconds):
        tail = " | ".join(line for line in output.decode(errors="replace").splitlines() if line.strip())
        message = f"container {container.name} exited at start: {tail[-MAX_REPORT:] or '(no output)'}"
        on_exit(message)
        try:  # the engine removes it a moment later: this process ends once it is gone
            container.wait(timeout=REMOVAL_WAIT, condition="removed")
        except Exception:  # noqa: BLE001 - already gone (NotFound), or the engine is slow: the gateway sweeps
            pass
        raise LaunchError(message, reported=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jkg.provisioners.docker_launch")
    parser.add_argument("--kernel-id", required=True)
    parser.add_argument("--response-address", required=True)
    parser.add_argument("--public-key", required=True)
    parser.add_argument("--port-range", default="0..0")
    parser.add_argument("--kernel-class-name", default="")
    parser.add_argument("--transport-encryption", default="")
    parser.add_argument("--network", default="", help="refuse to start unless the gateway uses this network")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ)
    try:
        launch(args, env)
    except LaunchError as error:
        if not error.reported:
            report(env, str(error))
        return 1
    except Exception as error:  # noqa: BLE001 - the engine's message, as one line, is the report
        explanation = getattr(error, "explanation", None) or str(error)
        report(env, f"{type(error).__name__}: {explanation}")
        return 1
    return 0


def report(env: dict[str, str], message: str) -> None:
    line = " ".join(message.split())[:MAX_REPORT]
    sys.stderr.write(line + "\n")
    path = env.get("JKG_KERNEL_LAUNCH_ERRORS")
    if path:
        try:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(line)
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
