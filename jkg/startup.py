"""The lines a gateway logs once, at startup: where it listens and what is in force.

An operator reading the first lines of the log (or ``journalctl -u jkg``)
learns the full URLs, the authentication mode (with a warning when there is
none), the kernelspecs found, the warm pool, the sandbox and the state
database, instead of only ``GatewaySite starting on 8888``.
"""
from __future__ import annotations

from urllib.parse import quote

from twisted.application.service import Service
from twisted.internet.address import UNIXAddress
from twisted.logger import Logger

log = Logger(namespace="jkg.startup")


def listener_url(address, tls: bool, base_url: str = "/") -> str:
    """The URL clients use for a listening address (``http+unix://`` for a UNIX socket)."""
    scheme = "https" if tls else "http"
    if isinstance(address, UNIXAddress):
        name = address.name.decode("utf-8", "replace") if isinstance(address.name, bytes) else address.name
        return f"{scheme}+unix://{quote(name or '', safe='')}{base_url}"
    host = address.host
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{address.port}{base_url}"


def auth_mode(config, tenants) -> tuple[str, bool]:
    """``(description, anonymous)`` of the authentication in force."""
    parts = []
    if tenants is not None:
        count = len(tenants.current().tenants)
        parts.append(f"tenants from {config.tenants} ({count} tenant{'s' if count != 1 else ''})")
    if config.auth_token_file:  # tap has read the token from it into auth_token
        parts.append(f"token from {config.auth_token_file} (--auth-token-file)")
    elif config.auth_token:
        parts.append("token (--auth-token)")
    if not parts:
        return "none: anyone who can reach a listener can run code", True
    return " and ".join(parts), False


def sandbox_in_force(config, policy, sandboxes) -> str:
    """The kernel sandbox as launches will apply it, and why: not the ``--sandbox`` value asked for.

    ``--sandbox auto`` resolves to bwrap or none at startup; the operator needs
    the outcome, the bwrap binary, and what enforces limits (cgroups where the
    host lets jkg make them, rlimits always), not the word ``auto``.

    :param policy: the registry's :class:`~jkg.sandbox.policy.SandboxPolicy`, or None.
    :param sandboxes: the launcher's :class:`~jkg.sandbox.provisioner.Sandboxes`, or None.
    """
    from .sandbox.policy import sandbox_expected

    if config.sandbox == "auto":
        reason = f"--sandbox auto: {sandbox_expected(config) or 'no tenants and only loopback listeners'}"
    else:
        reason = f"--sandbox {config.sandbox}"
    if policy is None or not policy.base.sandboxed or sandboxes is None:
        return f"none ({reason}): kernels run as the gateway's user, in its namespaces, without limits"
    if sandboxes.cgroups is not None:
        limits = f"{sandboxes.cgroups.describe()} and rlimits"
    else:
        limits = "rlimits only (no cgroups here)"
    user = f", kernels as uid {sandboxes.kernel_user[0]}" if sandboxes.kernel_user else ""
    if policy.uid_range is not None:
        user += f" (each tenant's as a uid of its own in {policy.uid_range[0]}-{policy.uid_range[1]})"
    facts = f"bwrap {sandboxes.host.bwrap} ({reason}), network {policy.base.network}{user}; limits by {limits}"
    if config.tenants:
        facts += "; the tenants file's [sandbox] table may change this per tenant and kernelspec"
    return facts


def report_event_loop(requested: str) -> None:
    """Log the loop the reactor runs on, and warn when an explicit ``--event-loop`` could not be had.

    Called in the reactor's first turn: the running loop is the one that
    counts, whatever was asked for.
    """
    import asyncio

    from .event_loop import describe

    running = describe(asyncio.get_running_loop())
    log.info("event loop: {loop}", loop=running)
    if requested not in ("auto", running):
        log.warn("--event-loop {requested} not applied: the reactor was installed before jkg (twistd --reactor) "
                 "and runs on {loop}", requested=requested, loop=running)


class StartupReport(Service):
    """Logs the startup facts once, after every listener is up (added after them)."""

    def __init__(self, config, listeners, specs, store, tenants, pool_sizes: dict, sandbox: str):
        """:param sandbox: :func:`sandbox_in_force`'s description."""
        self.config = config
        self.listeners = listeners
        self.specs = specs
        self.store = store
        self.tenants = tenants
        self.pool_sizes = pool_sizes
        self.sandbox = sandbox

    def startService(self):  # noqa: N802 - Twisted API
        super().startService()
        from . import __version__

        for listener in self.listeners:
            port = listener.port  # None for a listener that has not started
            if port is not None:
                tls = listener.description.startswith("ssl:") or bool(self.config.certfile)
                log.info("jkg {version} listening on {url}", version=__version__,
                         url=listener_url(port.getHost(), tls, self.config.base_url))
        mode, anonymous = auth_mode(self.config, self.tenants)
        if anonymous:
            log.warn("authentication: {mode}", mode=mode)
        else:
            log.info("authentication: {mode}", mode=mode)
        pool = ", ".join(f"{name}={count}" for name, count in sorted(self.pool_sizes.items())) or "off"
        log.info("warm pool: {pool}", pool=pool)
        log.info("sandbox: {sandbox}", sandbox=self.sandbox)
        log.info("state database: {path}", path=self.store.path if self.store is not None else "off")
        self.specs.describe_all().addCallbacks(self._report_specs, self._specs_failed)

    def _report_specs(self, found):
        default = self.config.force_kernel_name or self.config.default_kernel_name or self.specs.default_name
        names = ", ".join(f"{name} (default)" if name == default else name for name in sorted(found))
        log.info("kernelspecs: {names}", names=names or "none found")

    def _specs_failed(self, failure):
        log.error("cannot list kernelspecs: {error}", error=failure.value)
