"""The exceptions of :mod:`jkg.client`, and the one place HTTP answers become them.

A remote kernel fails in ways a local one cannot: the gateway may be down, may
refuse the credentials, may refuse a kernel for quota reasons, or the kernel may
vanish under the client (culled, deleted by someone else, crashed past its
restart limit).  Callers need to tell these apart without parsing strings, so
each is its own class under :class:`GatewayClientError`, and each carries the
gateway's own ``message`` (every Jupyter gateway answers errors with a JSON
``{"reason", "message"}`` body).
"""
from __future__ import annotations

import json
import re

__all__ = [
    "GatewayClientError", "GatewayUnreachable", "GatewayAuthError", "GatewayQuotaError",
    "KernelDied", "GatewayHTTPError", "error_from_response",
]


class GatewayClientError(Exception):
    """Base class: ``message`` is the gateway's (or our) explanation.

    :param status: the HTTP status when the error came from an HTTP answer.
    :param reason: the gateway's ``reason`` field (or the HTTP reason phrase).
    :param url: the URL that failed, for logs.
    :param kernel_id: the kernel concerned, when there is one.
    """

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None,
                 url: str | None = None, kernel_id: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason
        self.url = url
        self.kernel_id = kernel_id

    def __str__(self) -> str:
        if self.status is not None:
            return f"{self.message} (HTTP {self.status} {self.reason or ''})".replace(" )", ")")
        return self.message


class GatewayUnreachable(GatewayClientError):
    """No answer from the gateway: refused, unresolvable, timed out, or TLS failure."""


class GatewayAuthError(GatewayClientError):
    """The gateway refused the credentials (401) or the operation (403, not a quota)."""


class GatewayQuotaError(GatewayClientError):
    """The gateway refused a kernel because a limit is reached (403 "Resource Limit")."""


class KernelDied(GatewayClientError):
    """The kernel is gone: the gateway reported it ``dead``, or answers 404 for it."""


class GatewayHTTPError(GatewayClientError):
    """Any other error status from the gateway."""


# jupyter-kernel-gateway answers a quota refusal with message "Resource Limit" (reason
# "Forbidden"), jkg with reason "Resource Limit", Enterprise Gateway with a sentence
# about a maximum number of kernels: all three must read as a quota error.
_QUOTA_WORDS = re.compile(r"resource limit|maximum|quota|limit (?:of|reached)", re.IGNORECASE)


def _parse_body(body: bytes | None) -> tuple[str, str]:
    """``(reason, message)`` from an error body; non-JSON bodies become the message."""
    if not body:
        return "", ""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return "", text.strip()[:500]
    if not isinstance(data, dict):
        return "", text.strip()[:500]
    reason = data.get("reason") or ""
    message = data.get("message") or ""
    return str(reason), str(message)


def error_from_response(status: int, body: bytes | None, *, url: str, what: str,
                        http_reason: str | None = None, kernel_id: str | None = None) -> GatewayClientError:
    """The exception for an HTTP error answer.

    :param what: what was being done ("start a kernel"), for the message.
    :param kernel_id: set when the URL names a kernel, so a 404 means the kernel
        is gone (:class:`KernelDied`) rather than a wrong URL.
    """
    reason, message = _parse_body(body)
    reason = reason or http_reason or ""
    detail = message or reason or f"HTTP {status}"
    kwargs = {"status": status, "reason": reason, "url": url, "kernel_id": kernel_id}
    if status == 401:
        return GatewayAuthError(f"the gateway refused the credentials to {what}: {detail}", **kwargs)
    if status == 403:
        if _QUOTA_WORDS.search(f"{reason} {message}"):
            return GatewayQuotaError(f"the gateway refused to {what}, a limit is reached: {detail}", **kwargs)
        return GatewayAuthError(f"the gateway forbids this client to {what}: {detail}", **kwargs)
    if status == 404 and kernel_id is not None:
        return KernelDied(f"kernel {kernel_id} no longer exists on the gateway: {detail}", **kwargs)
    return GatewayHTTPError(f"the gateway failed to {what}: {detail}", **kwargs)
