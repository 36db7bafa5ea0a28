"""Composition: config + reactor -> the gateway's service tree.

The only module (with :mod:`jkg.tap`) that names concrete classes.  An
embedder calls :func:`make_gateway_service` and adds the result to its own
application, or calls :func:`make_gateway` and mounts ``gateway.resource`` in
its own Site.  Requires Twisted's asyncio reactor (jupyter_client's async API
runs on its loop).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError

from .config import ConfigError, GatewayConfig


@dataclass
class Gateway:
    """The parts of one gateway, for embedding and for tests."""

    config: GatewayConfig
    registry: object
    resource: object
    site: object
    service: MultiService
    tenants: object = None


class ListenError(RuntimeError):
    """A listener that could not start: a busy port or a bad endpoint string.

    An ``Exception`` (not ``SystemExit``) so that a daemonized twistd reports
    it to the waiting parent; :mod:`jkg.tap` prints it as one line.
    """


class GatewayService(MultiService):
    """Stops its children one at a time, last added first.

    ``MultiService`` stops all children at once; here the listeners must be
    closed before the kernels are shut down, and the ZeroMQ context may only
    be closed once every kernel (including one still starting) is gone.
    """

    #: the :class:`Gateway` whose service this is, set by :func:`make_gateway_service`
    #: (for twistd's :class:`jkg.logs.LoggedService`, embedders and tests)
    gateway: Gateway | None = None

    @inlineCallbacks
    def stopService(self):  # noqa: N802 - Twisted API
        Service.stopService(self)
        for child in reversed(list(self)):
            if child.running:
                yield child.stopService()


def _systemd_error(description: str, error: Exception) -> str:
    if isinstance(error, KeyError):
        names = os.environ.get("LISTEN_FDNAMES", "")
        return (f"systemd passed no socket named {error.args[0]!r} for {description} (names passed: "
                f"{names or 'none'}); check FileDescriptorName= in the .socket unit and start jkg through it")
    count = os.environ.get("LISTEN_FDS", "0") if os.environ.get("LISTEN_PID") == str(os.getpid()) else "0"
    return f"systemd passed {count} socket(s), none at the index of {description}; start jkg through its .socket unit"


def parse_endpoint(description: str, reactor, config: GatewayConfig | None = None):
    """The server endpoint for one listener description, or a one-line :class:`ListenError`.

    ``ssl:`` built from ``--ip``/``--port`` with ``--certfile`` is made here
    (the string syntax cannot ask for client certificates).
    """
    if config is not None and config.certfile and not config.listen:
        from .tls import tls_endpoint

        return tls_endpoint(reactor, config)
    try:
        return serverFromString(reactor, description)
    except (KeyError, IndexError) as error:
        if description.startswith("systemd:"):
            raise ListenError(_systemd_error(description, error)) from None
        raise ListenError(f"invalid listen endpoint {description!r}: {type(error).__name__}: {error}") from None
    except Exception as error:  # noqa: BLE001 - any parser, file or systemd fd error
        raise ListenError(f"invalid listen endpoint {description!r}: {type(error).__name__}: {error}") from None


def endpoint_is_loopback(endpoint) -> bool | None:
    """For a socket systemd passed: whether it is bound to loopback (or a UNIX path); None otherwise."""
    import ipaddress
    import socket

    fileno = getattr(endpoint, "fileno", None)
    if fileno is None:
        return None
    family = getattr(endpoint, "addressFamily", socket.AF_INET)
    try:
        with socket.socket(fileno=os.dup(fileno)) as sock:
            address = sock.getsockname()
    except OSError:
        return False
    if family == socket.AF_UNIX:
        return True
    try:
        return ipaddress.ip_address(address[0]).is_loopback
    except (ValueError, IndexError, TypeError):
        return False


def _short(description: str, budget: int) -> str:
    return description if len(description) <= budget else description[:budget - 1] + "…"


class _Listener(StreamServerEndpointService):
    """A listener whose failure ends startup at once with one clear line.

    Like ``strports.service`` it listens synchronously in
    ``privilegedStartService``, so twistd never runs without its socket.
    A daemonized twistd passes only the first 100 bytes of the error to the
    waiting parent, so the reason comes whole and a long endpoint is
    shortened; the full line goes to the log file too.
    """

    _raiseSynchronously = True

    def __init__(self, description: str, factory, reactor, endpoint=None):
        super().__init__(endpoint if endpoint is not None else parse_endpoint(description, reactor), factory)
        self.description = description

    port = None

    def privilegedStartService(self):  # noqa: N802 - Twisted API
        try:
            super().privilegedStartService()
            self._waitingForPort.addCallback(self._listening)
        except CannotListenError as error:
            reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
            raise self._fail(reason) from None
        except Exception as error:  # noqa: BLE001 - e.g. a systemd endpoint without a passed socket
            raise self._fail(f"{type(error).__name__}: {error}") from None

    def _listening(self, port):
        self.port = port
        return port

    def _fail(self, reason: str) -> ListenError:
        from twisted.logger import Logger

        Logger().critical("cannot listen on {endpoint}: {reason}", endpoint=self.description, reason=reason)
        budget = max(20, 70 - len(reason) - len("cannot listen on : "))
        return ListenError(f"cannot listen on {_short(self.description, budget)}: {reason}")


class _ZmqService(Service):
    """Closes every connection to kernels; added first, so stopped after the kernels."""

    def __init__(self, factory):
        self.factory = factory

    def stopService(self):  # noqa: N802 - Twisted API
        super().stopService()
        self.factory.shutdown()


class _CgroupsService(Service):
    """Removes the gateway's parent cgroups; added before the registry, so stopped after every kernel."""

    def __init__(self, cgroups):
        self.cgroups = cgroups

    def stopService(self):  # noqa: N802 - Twisted API
        super().stopService()
        self.cgroups.remove_base()


def make_gateway(config: GatewayConfig, reactor) -> Gateway:
    """Build every part of a gateway; nothing listens until the service starts."""
    # Imported here, not at module level: the web and kernel modules pull in
    # libraries that may import the global reactor, which the caller chooses first.
    from .auth.hashing import PasswordHasher
    from .auth.lockout import FailureLimiter
    from .auth.realm import make_portal
    from .auth.revocation import CLOSE_REVOKED, revoked
    from .auth.service import TenantsService
    from .kernels.channels import KernelChannels
    from .kernels.errorlog import ProtocolErrorLog
    from .kernels.zmtp import make_factory
    from .kernels.zmtp_wire import ReadLimits
    from .kernels.launcher import KernelLauncher
    from .kernels.specs import KernelSpecs
    from .kernels.registry import KernelRegistry
    from .kernels.seed import read_seed
    from .kernels.store import open_store
    from .provisioners import engines
    from .sessions import SessionStore
    from .web.api import GatewayAPI
    from .web.channels import ChannelsFactory
    from .web.http import CorsPolicy
    from .web.guard import ConnectionGuard, connection_limit, raise_descriptor_limit
    from .web.site import GatewaySite, make_root_resource
    from .web.spec import load_spec

    zmq_factory = make_factory(reactor, ReadLimits(*config.kernel_read_limits),
                               ProtocolErrorLog(reactor, config.protocol_error_log_interval))
    sandboxes, base_profile = make_sandboxes(config)

    def connect(connection_info, on_messages, label):
        return KernelChannels(zmq_factory, connection_info, on_messages, iopub_hold=config.iopub_batch_ms / 1000,
                              label=label)

    specs = KernelSpecs()
    engines.apply(config)  # before any gateway_provisioners module reads its settings
    notebook_http = config.api == "notebook-http"
    # in notebook-http mode the notebook is served, not run as a seed, and prespawn sizes its pools
    seed_cells = read_seed(config.seed_uri) if config.seed_uri and not notebook_http else ()
    registry_config = config.replace(prespawn_count=0, pool=()) if notebook_http else config
    store = open_store(config.state_db, reactor)
    launcher = KernelLauncher(specs, independent=config.keep_kernels_on_exit, reactor=reactor, sandboxes=sandboxes)
    registry = KernelRegistry(launcher, connect, registry_config, reactor, seed_cells=seed_cells, store=store)
    ws_factory = ChannelsFactory(registry, config, reactor)

    def tenants_removed(names):
        for name in names:
            ws_factory.connections.close_tenant(name, "tenant removed")
            registry.evict(name)

    def tenants_reloaded(table):
        for protocols in list(ws_factory.connections.protocols.values()):
            for protocol in list(protocols):
                if revoked(protocol.credential, protocol.tenant, table):
                    protocol.sendClose(CLOSE_REVOKED, "credentials revoked")

    tenants = (TenantsService(config.tenants, reactor, tenants_removed, tenants_reloaded)
               if config.tenants else None)
    if sandboxes is not None or base_profile.sandboxed:
        from .sandbox.policy import SandboxPolicy, kernel_uid_range

        tenant_profile = (lambda: tenants.current().sandbox) if tenants else (lambda: None)
        tenant_names = (lambda: tuple(tenants.current().tenants)) if tenants else tuple
        registry.sandbox = SandboxPolicy(base_profile, tenant_profile, kernel_uid_range(config, os.geteuid()),
                                         tenant_names)
    hasher = PasswordHasher(reactor, config.password_hash_threads, config.password_checks_per_address,
                            config.password_checks_per_tenant)
    portal = make_portal(config.auth_token, tenants.current if tenants else (lambda: None), hasher=hasher)
    cors = CorsPolicy(config.allow_origin, config.allow_headers, config.allow_methods,
                      config.allow_credentials, config.expose_headers, config.max_age, config.allowed_hosts)
    limiter = FailureLimiter(reactor)
    sessions = SessionStore(registry, config.max_sessions_per_tenant)
    tenants_table = tenants.current if tenants else None
    # read now, not on the reactor; ``servers`` is the gateway's base_url even when the kernels API is mounted
    # under a prefix (notebook-http)
    spec = load_spec(config.base_url)
    notebooks = None
    if notebook_http:
        from .notebook_http.compose import make_notebook_http

        kernels_base = config.base_url + config.kernels_api_prefix.strip("/") + "/"
        api = GatewayAPI(config.replace(base_url=kernels_base), registry, specs, sessions, portal,
                         ws_factory, cors, limiter, tenants=tenants_table, spec=spec)
        notebooks, resource = make_notebook_http(config, registry, portal, limiter, cors, reactor,
                                                 make_root_resource(api.resource(), cors, kernels_base)
                                                 if config.kernels_api_prefix else None)
    else:
        api = GatewayAPI(config, registry, specs, sessions, portal, ws_factory, cors, limiter, tenants=tenants_table,
                         spec=spec)
        resource = make_root_resource(api.resource(), cors, config.base_url)
    from .metrics import GatewayCollector, ReactorLag, make_registry

    lag = ReactorLag(reactor)
    api.metrics = make_registry(GatewayCollector(registry, lag))
    access_log = None
    if config.access_log:
        from .logs import AccessLog

        access_log = AccessLog(config.access_log, reactor)
    guard = ConnectionGuard(reactor, connection_limit(config.max_http_connections, raise_descriptor_limit()),
                            config.max_pending_per_address, config.header_timeout, config.max_body_size)
    site = GatewaySite(resource, guard, access_log=access_log, reactor=reactor)

    service = GatewayService()
    _ZmqService(zmq_factory).setServiceParent(service)
    lag.setServiceParent(service)
    if access_log is not None:
        access_log.setServiceParent(service)
    if sandboxes is not None and sandboxes.cgroups is not None:
        _CgroupsService(sandboxes.cgroups).setServiceParent(service)
    registry.setServiceParent(service)
    if tenants is not None:
        tenants.setServiceParent(service)
    if notebooks is not None:
        notebooks.setServiceParent(service)  # after the registry: stopped (drained) before it
    if config.existing or config.existing_dir:
        from .kernels.discovery import ExistingKernels

        ExistingKernels(registry, reactor, config.existing, config.existing_dir,
                        config.own_existing).setServiceParent(service)
    return Gateway(config, registry, resource, site, service, tenants)


def make_sandboxes(config: GatewayConfig):
    """The host's sandbox support and the gateway's default profile (blocking: startup only).

    :raises ConfigError: when ``--sandbox`` asks for what this host cannot do,
        or when ``auto`` finds tenants or exposed listeners but no sandbox.
    """
    import os

    from .sandbox.settings import SandboxProfile

    if config.sandbox == "none":
        return None, SandboxProfile(mode="none")
    from jupyter_core.paths import jupyter_runtime_dir

    from .kernels.store import default_state_path
    from .sandbox.host import probe_host
    from .sandbox.limits import Cgroups
    from .sandbox.policy import resolve_mode
    from .sandbox.provisioner import Sandboxes
    from .sandbox.workspace import Workspaces, resolve_user

    host = probe_host()
    mode = resolve_mode(config, host)
    profile = SandboxProfile(mode=mode, network=config.sandbox_network)
    if not host.available:
        return None, profile
    runtime = jupyter_runtime_dir()
    try:
        kernel_user = resolve_user(config.kernel_user) if os.geteuid() == 0 else None
    except ValueError as error:
        raise ConfigError(f"invalid value for --kernel-user: {error}") from None
    state = config.state_db if config.state_db.strip().lower() not in ("", "none") else default_state_path()
    hide = [runtime, os.path.dirname(os.path.abspath(state)), os.getcwd()]
    for path in (config.tenants, config.auth_token_file, *config.existing):
        if path:
            hide.append(os.path.dirname(os.path.abspath(path)))
    if config.existing_dir:
        hide.append(config.existing_dir)
    cgroups = Cgroups.detect(f"jkg-{os.getpid()}")  # the startup report says which (jkg.startup)
    sandboxes = Sandboxes(host, Workspaces(config.workspace_dir or os.path.join(runtime, "jkg-workspaces")),
                          os.path.join(runtime, "jkg-ipc"), kernel_user, cgroups, tuple(hide),
                          tuple(config.sandbox_expose), independent=config.keep_kernels_on_exit)
    return sandboxes, profile


def make_gateway_service(config: GatewayConfig, reactor, listen: bool = True) -> MultiService:
    """The gateway as one service: kernels plus a listener per endpoint.

    Listeners are endpoint services that listen synchronously, so a busy port
    fails startup at once instead of leaving a gateway running without a socket.

    :raises ListenError: for an endpoint string that does not parse.
    """
    from .startup import StartupReport, sandbox_in_force
    from .systemd import ReadyNotifier

    endpoints = ([parse_endpoint(description, reactor, config) for description in config.listen_endpoints]
                 if listen else [])
    gateway = make_gateway(config, reactor)
    listeners = [_Listener(description, gateway.site, reactor, endpoint)
                 for description, endpoint in zip(config.endpoints, endpoints)]
    for listener in listeners:
        listener.setServiceParent(gateway.service)
    registry = gateway.registry
    StartupReport(config, listeners, registry.launcher.specs, registry.store, gateway.tenants,
                  registry.pool.sizes if registry.pool is not None else {},
                  sandbox_in_force(config, registry.sandbox, registry.launcher.sandboxes),
                  ).setServiceParent(gateway.service)
    ReadyNotifier().setServiceParent(gateway.service)
    gateway.service.gateway = gateway
    return gateway.service
