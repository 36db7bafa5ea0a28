"""``GatewayKernelManager``: jupyter_client's ``AsyncKernelManager`` for a kernel on a gateway.

It subclasses ``AsyncKernelManager`` because tools check for that type (nbclient's
``kernel_manager_class`` must be a ``KernelManager``), and overrides every
lifecycle method with the gateway's REST call: start is ``POST /api/kernels``,
shutdown ``DELETE``, restart and interrupt their ``POST``, liveness ``GET``.
Nothing local is touched: no process, no connection file, no local kernelspec
(``kernel_spec`` is the gateway's, fetched when the kernel starts).

Settings come from constructor arguments or traitlets config (``c.GatewayKernelManager.url``)
and fall back to ``JKG_GATEWAY_*`` env, so ``NotebookClient(nb,
kernel_manager_class=GatewayKernelManager)`` works with nothing but the env set.
"""
from __future__ import annotations

import os
import weakref
from typing import Any

from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from traitlets import Bool, DottedObjectName, Float, Integer, Type, Unicode, default

from .client import GatewayKernelClient
from .errors import GatewayClientError, KernelDied
from .rest import GatewayREST
from .settings import ENV_PREFIX, GatewaySettings

__all__ = ["GatewayKernelManager"]


def _setting(trait_type, help_text: str, **kwargs):
    """A configurable trait whose ``None`` default means "from JKG_GATEWAY_* env, else built-in"."""
    return trait_type(default_value=None, allow_none=True, help=help_text, **kwargs).tag(config=True)


class GatewayKernelManager(AsyncKernelManager):
    """Starts, stops, restarts and interrupts one kernel on a Jupyter gateway.

    Works with jkg, jupyter-kernel-gateway, Enterprise Gateway and jupyter_server.
    """

    url = _setting(Unicode, "Gateway base URL, http(s)://host:port[/base] (env JKG_GATEWAY_URL).")
    ws_url = _setting(Unicode, "WebSocket base URL, if not the URL with ws(s):// (env JKG_GATEWAY_WS_URL).")
    token = _setting(Unicode, "Token sent as 'Authorization: token ...' (env JKG_GATEWAY_TOKEN).")
    auth_scheme = _setting(Unicode, "Scheme in front of the token (env JKG_GATEWAY_AUTH_SCHEME).")
    user = _setting(Unicode, "HTTP Basic user, when there is no token (env JKG_GATEWAY_USER).")
    password = _setting(Unicode, "HTTP Basic password (env JKG_GATEWAY_PASSWORD).")
    validate_cert = _setting(Bool, "Verify TLS certificates; on unless set false (env JKG_GATEWAY_VALIDATE_CERT).")
    ca_certs = _setting(Unicode, "CA bundle to verify the gateway with (env JKG_GATEWAY_CA_CERTS).")
    client_cert = _setting(Unicode, "Client certificate for mutual TLS (env JKG_GATEWAY_CLIENT_CERT).")
    client_key = _setting(Unicode, "Client key for mutual TLS (env JKG_GATEWAY_CLIENT_KEY).")
    connect_timeout = _setting(Float, "Seconds to connect (env JKG_GATEWAY_CONNECT_TIMEOUT).")
    request_timeout = _setting(Float, "Seconds for a request, kernel start included (env JKG_GATEWAY_REQUEST_TIMEOUT).")
    ws_protocol = _setting(Unicode, "'auto' (offer v1) or 'legacy' (env JKG_GATEWAY_WS_PROTOCOL).")
    retry_max = _setting(Integer, "WebSocket reconnection attempts after a drop (env JKG_GATEWAY_RETRY_MAX).")
    liveness_interval = _setting(Float, "Seconds of silence before checking the kernel still exists; 0 never "
                                 "(env JKG_GATEWAY_LIVENESS_INTERVAL).")

    client_class = DottedObjectName("jkg.client.client.GatewayKernelClient", config=True)
    client_factory = Type(klass=GatewayKernelClient, config=True)

    @default("client_factory")
    def _client_factory_default(self):
        return GatewayKernelClient

    @default("kernel_name")
    def _kernel_name_default(self) -> str:
        # Empty means the gateway's default kernel, not the local machine's python3.
        return os.environ.get(ENV_PREFIX + "KERNEL_NAME", "")

    def __init__(self, *, settings: GatewaySettings | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self._settings = settings
        self._model: dict | None = None
        self._remote_spec: KernelSpec | None = None
        self._shut_down = False
        self._clients: weakref.WeakSet = weakref.WeakSet()

    def __del__(self) -> None:
        pass  # nothing local to clean up (the base class removes connection files)

    # -- settings and state --------------------------------------------------------------------
    @property
    def gateway_settings(self) -> GatewaySettings:
        """Arguments and config win over ``JKG_GATEWAY_*`` env; computed once."""
        if self._settings is None:
            names = ("url", "ws_url", "token", "auth_scheme", "user", "password", "validate_cert", "ca_certs",
                     "client_cert", "client_key", "connect_timeout", "request_timeout", "ws_protocol", "retry_max",
                     "liveness_interval")
            self._settings = GatewaySettings.from_env(**{name: getattr(self, name) for name in names})
        return self._settings

    @property
    def rest(self) -> GatewayREST:
        return GatewayREST(self.gateway_settings)

    @property
    def model(self) -> dict | None:
        """The gateway's kernel model as of the last start/restart."""
        return self._model

    @property
    def has_kernel(self) -> bool:
        return bool(self.kernel_id) and not self._shut_down

    @property
    def kernel_spec(self) -> KernelSpec | None:
        """The gateway's kernelspec for this kernel (never a local one); ``None`` if unknown."""
        return self._remote_spec

    @property
    def ipykernel(self) -> bool:
        return False  # the kernel is remote: no local IPython command-line arguments apply

    def client(self, **kwargs: Any) -> GatewayKernelClient:
        """A client for this manager's kernel (unsigned messages over the gateway's WebSocket)."""
        if not self.kernel_id:
            raise RuntimeError("start_kernel() first: there is no kernel to connect to")
        options = {"parent": self, "kernel_id": self.kernel_id, "settings": self.gateway_settings, "log": self.log}
        options.update(kwargs)
        client = self.client_factory(**options)
        self._clients.add(client)
        return client

    # -- lifecycle -----------------------------------------------------------------------------
    async def start_kernel(self, **kw: Any) -> None:
        """Start a kernel on the gateway, or attach to ``kernel_id=`` if given.

        Local-launch arguments (``extra_arguments``, ``cwd``...) are ignored: the gateway
        decides how kernels run.  ``env`` entries named ``KERNEL_*`` are sent, as are
        ``KERNEL_*`` variables of this process (how gateways take per-kernel options).

        :raises GatewayClientError: ``GatewayQuotaError``, ``GatewayAuthError``, ``GatewayUnreachable``...
        """
        kernel_id = kw.get("kernel_id")
        try:
            if kernel_id:
                model = await self.rest.get_kernel(kernel_id)
                self._owns_kernel = False
            else:
                model = await self.rest.start_kernel(self.kernel_name, self._kernel_env(kw.get("env")))
                self._owns_kernel = True
            if not isinstance(model, dict) or not model.get("id"):
                raise GatewayClientError(f"the gateway answered a kernel start without a kernel id: {model!r}")
        except Exception as error:
            if not self.ready.done():
                self.ready.set_exception(error)
                self.ready.exception()  # retrieved: the caller gets the error raised
            raise
        self._model = model
        self.kernel_id = model["id"]
        self._shut_down = False
        if model.get("name"):
            self.kernel_name = model["name"]
        self._remote_spec = await self._fetch_kernel_spec(self.kernel_name)
        if not self.ready.done():
            self.ready.set_result(None)

    def _kernel_env(self, env: dict | None) -> dict[str, str]:
        merged = {k: v for k, v in os.environ.items() if k.startswith("KERNEL_")}
        merged.update({k: str(v) for k, v in (env or {}).items() if k.startswith("KERNEL_")})
        if self.gateway_settings.user:
            merged.setdefault("KERNEL_USERNAME", self.gateway_settings.user)
        return merged

    async def _fetch_kernel_spec(self, name: str) -> KernelSpec | None:
        if not name:
            return None
        try:
            model = await self.rest.get_kernelspec(name)
            spec = model["spec"]
            return KernelSpec(
                name=name, display_name=spec.get("display_name", name), language=spec.get("language", ""),
                argv=spec.get("argv") or [], env=spec.get("env") or {}, metadata=spec.get("metadata") or {},
                interrupt_mode=spec.get("interrupt_mode", "signal"))
        except (GatewayClientError, KeyError, TypeError, ValueError) as error:
            self.log.debug("no kernelspec %s from the gateway: %s", name, error)
            return None

    async def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
        """Delete the kernel on the gateway (only one this manager started, as jupyter_client does).

        Clients of this manager are told first, so they fail with ``KernelDied`` rather than
        try to reconnect.  A kernel already gone (404) counts as shut down.
        """
        if restart:
            await self.restart_kernel(now=now)
            return
        if not self.has_kernel or not self.owns_kernel:
            return
        self.shutting_down = True
        for client in list(self._clients):
            client.kernel_gone(f"kernel {self.kernel_id} was shut down by its manager")
        try:
            await self.rest.delete_kernel(self.kernel_id)
        except KernelDied:
            pass
        finally:
            self._shut_down = True
            self.shutting_down = False

    async def restart_kernel(self, now: bool = False, newports: bool = False, **kw: Any) -> None:
        """Restart on the gateway; clients keep their sessions (and reconnect if the server drops them)."""
        self._check_kernel()
        model = await self.rest.restart_kernel(self.kernel_id)
        if isinstance(model, dict):
            self._model = model

    async def interrupt_kernel(self) -> None:
        self._check_kernel()
        await self.rest.interrupt_kernel(self.kernel_id)

    async def signal_kernel(self, signum: int) -> None:
        raise NotImplementedError("a gateway can interrupt, restart or shut down a kernel, not signal it")

    async def gateway_is_alive(self, kernel_id: str | None = None) -> bool:
        """Whether the gateway still has the kernel and does not report it dead."""
        kernel_id = kernel_id or self.kernel_id
        if not kernel_id or (self._shut_down and kernel_id == self.kernel_id):
            return False
        try:
            model = await self.rest.get_kernel(kernel_id)
        except KernelDied:
            return False
        return not isinstance(model, dict) or model.get("execution_state") != "dead"

    async def is_alive(self) -> bool:
        return await self.gateway_is_alive()

    async def cleanup_resources(self, restart: bool = False) -> None:
        """Nothing local to clean up (no connection file, no sockets of our own)."""

    # jupyter_client's own code calls the private names; keep them pointing at the gateway versions.
    _async_start_kernel = start_kernel
    _async_shutdown_kernel = shutdown_kernel
    _async_restart_kernel = restart_kernel
    _async_interrupt_kernel = interrupt_kernel
    _async_signal_kernel = signal_kernel
    _async_is_alive = is_alive
    _async_cleanup_resources = cleanup_resources

    def _check_kernel(self) -> None:
        if not self.has_kernel:
            raise RuntimeError("No kernel is running!")
