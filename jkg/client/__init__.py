"""jupyter_client's kernel manager and client API for kernels on a remote Jupyter gateway.

``GatewayKernelManager`` (an ``AsyncKernelManager``) drives the gateway's REST
API; its ``client()`` is a ``GatewayKernelClient`` (an ``AsyncKernelClient``)
whose channels ride the gateway's WebSocket.  Existing tools therefore run
against jkg, jupyter-kernel-gateway, Enterprise Gateway or jupyter_server
unchanged, e.g. ``NotebookClient(nb, kernel_manager_class=GatewayKernelManager)``
with ``JKG_GATEWAY_URL`` and ``JKG_GATEWAY_TOKEN`` set.  See ``docs/client.md``.
"""
from .client import GatewayKernelClient
from .errors import (
    GatewayAuthError,
    GatewayClientError,
    GatewayHTTPError,
    GatewayQuotaError,
    GatewayUnreachable,
    KernelDied,
)
from .manager import GatewayKernelManager
from .settings import GatewaySettings

__all__ = [
    "GatewayKernelManager", "GatewayKernelClient", "GatewaySettings", "GatewayClientError",
    "GatewayUnreachable", "GatewayAuthError", "GatewayQuotaError", "KernelDied", "GatewayHTTPError",
]
