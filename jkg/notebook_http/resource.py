"""The notebook-http personality as a twisted.web resource.

Routes under ``base_url`` (each notebook under its own prefix when a folder
is served): the annotated endpoints, ``/_api/spec/swagger.json`` (the
reference's Swagger 2.0), ``/_api/spec/openapi.json`` (OpenAPI 3),
``/_api/source`` (with ``--allow-notebook-download``), ``/public/`` (static
files of ``--static-path``, without credentials as in the reference);
anything else is a JSON 404.  Every other route authenticates through the
gateway's portal (:func:`jkg.web.login.login`), so tokens, tenants and the
loopback-only anonymous rule are the kernels API's own.
"""
from __future__ import annotations

import json
import mimetypes
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web import resource, server, static

from ..errors import GatewayError, NotFound
from ..web.http import write_error
from ..web.login import login
from .annotations import openapi_spec, swagger_spec
from .app import HttpRequest, MethodNotAllowed

log = Logger()

MAX_BODY = 16 * 1024 * 1024
SPEC_PATHS = ("/_api/spec/swagger.json", "/_api/spec/openapi.json")


class _StaticFiles(static.File):
    """``--static-path`` files; directories are not listed."""

    def directoryListing(self):  # noqa: N802 - Twisted API
        return resource.NoResource("no such file")


class PayloadTooLarge(GatewayError):
    status = 413
    reason = "Payload Too Large"


class NotebookResource(resource.Resource):
    """Every request below ``base_url`` in notebook-http mode.

    :param apps: a callable returning the served :class:`NotebookApp`\\ s.
    """

    isLeaf = True

    def __init__(self, apps, portal, limiter, cors, base_url: str = "/", static_path: str = "",
                 allow_download: bool = False, hosts: tuple[str, ...] | None = None):
        super().__init__()
        self._apps = apps
        self._portal = portal
        self._limiter = limiter
        self._cors = cors
        self._base = base_url.encode("utf-8")
        self._static = _StaticFiles(static_path) if static_path else None
        self._allow_download = allow_download
        self._hosts = hosts  # the Host allow-list while serving without credentials (DNS rebinding)

    def _relative(self, request) -> str:
        raw = request.path
        return "/" + raw[len(self._base):].decode("latin-1") if raw.startswith(self._base) else "/"

    def answer_preflight(self, request) -> bytes:
        """``OPTIONS`` as jupyter-kernel-gateway answers it: 200 with an empty body where a route
        exists (endpoints, whatever their verbs, and the specs), 404 elsewhere, 405 on ``/public/``.
        Without credentials: browsers send none with a preflight."""
        relative = self._relative(request)
        if self._static is not None and relative.startswith("/public/"):
            return write_error(request, MethodNotAllowed("OPTIONS is not allowed on static files"))
        app, sub = self._find(relative)
        if app is not None and (sub in SPEC_PATHS or (sub == "/_api/source" and self._allow_download)
                                or app.api.route(sub) is not None):
            request.setResponseCode(200)
            return b""
        return write_error(request, NotFound(f"no endpoint matches {relative}"))

    def render(self, request):
        relative = self._relative(request)
        if self._static is not None and relative.startswith("/public/"):
            return self._serve_static(request, relative)
        finished = {"lost": False}
        request.notifyFinish().addErrback(lambda failure: finished.update(lost=True))
        d = Deferred.fromCoroutine(self._serve(request, relative))
        d.addErrback(self._error, request)
        d.addCallback(self._write, request, finished)
        return server.NOT_DONE_YET

    def _serve_static(self, request, relative: str):
        tail = relative[len("/public/"):].encode("latin-1")
        request.postpath = [unquote_to_bytes(segment) for segment in tail.split(b"/")]
        return resource.getChildForRequest(self._static, request).render(request)

    # -- routing -------------------------------------------------------------------
    def _find(self, relative: str):
        for app in sorted(self._apps(), key=lambda a: len(a.prefix), reverse=True):
            prefix = app.prefix
            if not prefix:
                return app, relative
            if relative == prefix or relative.startswith(prefix + "/"):
                return app, relative[len(prefix):] or "/"
        return None, relative

    async def _serve(self, request, relative: str):
        tenant = await login(request, self._portal, self._limiter, self._cors, self._hosts)
        app, sub = self._find(relative)
        if app is None:
            raise NotFound(f"no notebook is served at {relative}")
        method = request.method.decode("latin-1")
        if sub == "/_api/spec/swagger.json" and method == "GET":
            return 200, {"Content-Type": "application/json"}, json.dumps(swagger_spec(app.api)).encode()
        if sub == "/_api/spec/openapi.json" and method == "GET":
            base = self._base.decode("utf-8").rstrip("/") + app.prefix
            return 200, {"Content-Type": "application/json"}, json.dumps(openapi_spec(app.api, base or "/")).encode()
        if sub == "/_api/source" and self._allow_download and method == "GET":
            kind = mimetypes.guess_type(app.api.title + ".ipynb")[0] or "application/octet-stream"
            return 200, {"Content-Type": kind}, app.api.source
        routed = app.api.route(sub)
        if routed is None:
            raise NotFound(f"no endpoint matches {sub}")
        endpoint, params = routed
        body = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        if len(body) > MAX_BODY:
            raise PayloadTooLarge(f"request body larger than {MAX_BODY} bytes")
        headers = [(name.decode("latin-1"), value.decode("latin-1"))
                   for name, values in request.requestHeaders.getAllRawHeaders() for value in values]
        content_type = request.getHeader(b"content-type")
        query = request.uri.split(b"?", 1)[1] if b"?" in request.uri else b""
        response = await app.handle(endpoint, params, HttpRequest(
            method, query, headers, body, content_type.decode("latin-1") if content_type else None, tenant))
        return response.status, response.headers, response.body

    # -- writing -------------------------------------------------------------------
    def _error(self, failure, request):
        error = failure.value
        if isinstance(error, GatewayError):
            return error.status, None, error
        log.failure("notebook-http: unexpected error for {path}", failure, path=request.path)
        return 500, None, GatewayError("unexpected server error")

    def _write(self, result, request, finished):
        if finished["lost"]:
            return
        status, headers, body = result
        if headers is None:  # an error
            body = write_error(request, body)
        else:
            request.setResponseCode(status)
            for name, value in headers.items():
                request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        request.setHeader(b"Content-Length", str(len(body)).encode())
        request.write(body)
        request.finish()

