"""The kernels REST calls every Jupyter gateway serves, over tornado's HTTP client.

tornado is already a dependency of jupyter_client, so using its
``AsyncHTTPClient`` adds nothing to install.  Every failure leaves this module
as a :class:`jkg.client.errors.GatewayClientError` subclass, so callers never
see tornado's or the socket layer's exceptions.
"""
from __future__ import annotations

import json
import ssl
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .errors import GatewayUnreachable, error_from_response
from .settings import GatewaySettings

__all__ = ["GatewayREST", "unreachable"]


def unreachable(error: BaseException, url: str) -> GatewayUnreachable:
    """A network-level failure, with the cause spelled out (TLS failures are common and confusing)."""
    if isinstance(error, ssl.SSLCertVerificationError):
        text = f"TLS certificate verification failed for {url}: {error.verify_message or error}"
    elif isinstance(error, ssl.SSLError):
        text = f"TLS handshake with {url} failed: {error}"
    elif isinstance(error, HTTPClientError):  # code 599: timeout or connection error inside tornado
        text = f"no answer from {url}: {error.message or error}"
    else:
        text = f"cannot reach the gateway at {url}: {error.strerror or error}" if isinstance(error, OSError) \
            else f"cannot reach the gateway at {url}: {error}"
    return GatewayUnreachable(text, url=url)


class GatewayREST:
    """REST client for one gateway; stateless apart from its settings."""

    def __init__(self, settings: GatewaySettings):
        self.settings = settings

    async def request(self, method: str, url: str, body: Any = None, *, what: str,
                      kernel_id: str | None = None, timeout: float | None = None) -> Any:
        """Send one request; return the decoded JSON body (``None`` when empty).

        :param what: the operation, for error messages ("start a kernel").
        :param kernel_id: the kernel the URL names, so that 404 means it is gone.
        :raises GatewayClientError: a subclass for each kind of failure.
        """
        headers = self.settings.auth_headers()
        if body is not None or method in ("POST", "PUT", "PATCH"):
            headers["Content-Type"] = "application/json"
        payload = json.dumps(body if body is not None else {}) if method in ("POST", "PUT", "PATCH") else None
        request = HTTPRequest(
            url, method=method, headers=headers, body=payload,
            connect_timeout=self.settings.connect_timeout,
            request_timeout=timeout or self.settings.request_timeout,
            follow_redirects=False, **self.settings.tls_options())
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as error:
            raise unreachable(error, url) from error
        if response.code == 599:  # tornado reports connection errors as a pseudo status
            raise unreachable(response.error or OSError("connection failed"), url)
        if response.code >= 400:
            raise error_from_response(response.code, response.body, url=url, what=what,
                                      http_reason=response.reason, kernel_id=kernel_id)
        if not response.body:
            return None
        try:
            return json.loads(response.body)
        except ValueError:
            return None

    # -- the calls ----------------------------------------------------------------------
    async def start_kernel(self, name: str, env: dict[str, str]) -> dict:
        body: dict[str, Any] = {"env": env}
        if name:
            body["name"] = name
        return await self.request("POST", self.settings.kernel_url(), body, what="start a kernel")

    async def get_kernel(self, kernel_id: str) -> dict:
        return await self.request("GET", self.settings.kernel_url(kernel_id), what="look up the kernel",
                                  kernel_id=kernel_id)

    async def delete_kernel(self, kernel_id: str) -> None:
        await self.request("DELETE", self.settings.kernel_url(kernel_id), what="shut down the kernel",
                           kernel_id=kernel_id)

    async def restart_kernel(self, kernel_id: str) -> dict | None:
        return await self.request("POST", self.settings.kernel_url(kernel_id, "/restart"),
                                  what="restart the kernel", kernel_id=kernel_id)

    async def interrupt_kernel(self, kernel_id: str) -> None:
        await self.request("POST", self.settings.kernel_url(kernel_id, "/interrupt"),
                           what="interrupt the kernel", kernel_id=kernel_id)

    async def get_kernelspec(self, name: str) -> dict:
        return await self.request("GET", f"{self.settings.url}/api/kernelspecs/{quote(name, safe='')}",
                                  what=f"describe kernelspec {name}")
