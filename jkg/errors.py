"""Domain errors, each carrying the HTTP status and reason a client sees.

Kernel-side code raises these; the web layer maps every one of them to a JSON
``{"reason", "message"}`` body in one place, so no route ever leaks a
traceback and the same condition always gets the same status code.
"""


class GatewayError(Exception):
    """Base class: ``status`` and ``reason`` are what the client receives."""

    status = 500
    reason = "Internal Server Error"

    def __init__(self, message: str = "", *, reason: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        if status is not None:
            self.status = status


class BadRequest(GatewayError):
    status = 400
    reason = "Bad Request"


class Unauthorized(GatewayError):
    status = 401
    reason = "Unauthorized"


class Forbidden(GatewayError):
    status = 403
    reason = "Forbidden"


class ResourceLimit(GatewayError):
    """A quota refusal; jupyter-kernel-gateway answers these with 403 "Resource Limit"."""

    status = 403
    reason = "Resource Limit"


class NotFound(GatewayError):
    status = 404
    reason = "Not Found"


class UnknownKernel(NotFound):
    def __init__(self, kernel_id: str):
        super().__init__(f"Kernel does not exist: {kernel_id}")


class UnknownKernelSpec(NotFound):
    def __init__(self, name: str):
        super().__init__(f"No such kernel named {name}")


class UnknownSession(NotFound):
    def __init__(self, session_id: str):
        super().__init__(f"Session not found: {session_id}")


class TooManyRequests(GatewayError):
    """A client address locked out after too many failed logins."""

    status = 429
    reason = "Too Many Requests"

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class Conflict(GatewayError):
    status = 409
    reason = "Conflict"


class KernelLaunchError(GatewayError):
    """A kernel that could not be started or did not become ready in time."""

    status = 500
    reason = "Kernel Launch Failed"


class KernelExitedAtStart(KernelLaunchError):
    """The kernel's process ended before it answered (its stderr usually says why)."""


class KernelDead(GatewayError):
    status = 409
    reason = "Kernel Dead"
