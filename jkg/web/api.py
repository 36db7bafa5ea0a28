"""The Jupyter Server kernels REST API, as klein routes.

The only module that imports klein.  Routes parse, authenticate through the
``twisted.cred`` portal, call the registry / session store, and render JSON;
every :class:`jkg.errors.GatewayError` becomes ``{"reason", "message"}`` with
its status in :meth:`GatewayAPI.gateway_error`, and anything unexpected a 500
without a traceback.  The channels route authenticates and looks the kernel up
*before* the WebSocket upgrade, so a 401 or 404 never opens a socket.
"""
from __future__ import annotations

import mimetypes
import uuid

from klein import Klein
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException

from .. import __version__
from ..auth.credentials import credentials_from_request
from ..auth.realm import ITenant
from ..errors import BadRequest, GatewayError, Unauthorized
from ..kernels.messages import isoformat
from .channels import ChannelsUpgrade, negotiate_subprotocol
from .http import query_arg, read_json_body, write_error, write_json

log = Logger()

_MAX_SESSION_ID = 256


def kernelspec_model(name: str, spec: dict, files: list[str], base_url: str) -> dict:
    """jupyter_server's kernelspec model, with resource URLs under ``base_url``."""
    resources = {}
    for file_name in files:
        stem = file_name.rsplit(".", 1)[0]
        if file_name.startswith("logo-"):
            resources[stem] = f"{base_url}kernelspecs/{name}/{file_name}"
        elif file_name in ("kernel.js", "kernel.css"):
            resources[file_name] = f"{base_url}kernelspecs/{name}/{file_name}"
    return {"name": name, "spec": spec, "resources": resources}


class GatewayAPI:
    """REST routes bound to one gateway's collaborators.

    :param registry: an :class:`jkg.interfaces.IKernelRegistry`.
    :param specs: the kernelspec finder (``describe_all``/``describe``/``resource``).
    :param sessions: a :class:`jkg.sessions.SessionStore`.
    :param portal: a ``twisted.cred`` portal yielding ``ITenant`` avatars.
    """

    app = Klein()

    def __init__(self, config, registry, specs, sessions, portal, ws_factory, cors):
        self.config = config
        self.registry = registry
        self.specs = specs
        self.sessions = sessions
        self.portal = portal
        self.ws_factory = ws_factory
        self.cors = cors

    def resource(self):
        return self.app.resource()

    # -- cross-cutting ---------------------------------------------------------
    async def _login(self, request):
        self.cors.check_origin(request)
        credentials = credentials_from_request(request.getHeader(b"authorization"), query_arg(request, b"token"))
        try:
            _, tenant, _ = await self.portal.login(credentials, None, ITenant)
        except (UnauthorizedLogin, UnhandledCredentials):
            log.info("login failed from {peer}", peer=_peer(request))
            raise Unauthorized("invalid or missing credentials") from None
        return tenant

    @app.handle_errors(GatewayError)
    def gateway_error(self, request, failure):
        return write_error(request, failure.value)

    @app.handle_errors(HTTPException)
    def routing_error(self, request, failure):
        error = failure.value
        return write_json(request, {"reason": error.name, "message": error.description or ""}, error.code)

    @app.handle_errors(Exception)
    def unexpected_error(self, request, failure):
        log.failure("unhandled error in {method} {path}", failure, method=request.method, path=request.path)
        return write_json(request, {"reason": "Internal Server Error", "message": "unexpected server error"}, 500)

    # -- server ------------------------------------------------------------------
    @app.route("/api", methods=["GET"], strict_slashes=False)
    async def version(self, request):
        await self._login(request)
        return write_json(request, {"version": __version__, "gateway": "jkg"})

    @app.route("/api/status", methods=["GET"], strict_slashes=False)
    async def status(self, request):
        await self._login(request)
        return write_json(request, {
            "started": isoformat(self.registry.started),
            "last_activity": isoformat(self.registry.last_activity()),
            "connections": self.registry.connection_count(),
            "kernels": len(self.registry.list_kernels()),
        })

    # -- kernelspecs ---------------------------------------------------------------
    @app.route("/api/kernelspecs", methods=["GET"], strict_slashes=False)
    async def list_kernelspecs(self, request):
        await self._login(request)
        user = query_arg(request, b"user")
        if user and b"/" in user:
            # jupyter_server appends "/NAME" after "?user=U" when fetching one spec
            return await self._one_kernelspec(request, user.rsplit(b"/", 1)[1].decode("utf-8", "replace"))
        found = await self.specs.describe_all()
        specs = {name: kernelspec_model(name, spec, files, self.config.base_url)
                 for name, (spec, files) in found.items()}
        default = self.config.force_kernel_name or self.config.default_kernel_name or self.specs.default_name
        return write_json(request, {"default": default, "kernelspecs": specs})

    @app.route("/api/kernelspecs/<string:name>", methods=["GET"], strict_slashes=False)
    async def get_kernelspec(self, request, name):
        await self._login(request)
        return await self._one_kernelspec(request, name)

    async def _one_kernelspec(self, request, name: str):
        spec, files = await self.specs.describe(name)
        return write_json(request, kernelspec_model(name, spec, files, self.config.base_url))

    @app.route("/kernelspecs/<string:name>/<path:path>", methods=["GET", "HEAD"])
    async def kernelspec_resource(self, request, name, path):
        await self._login(request)
        data = await self.specs.resource(name, path)
        content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        if content_type.startswith("image/"):
            request.setHeader(b"Cache-Control", b"max-age=2592000")
        return data

    # -- kernels -------------------------------------------------------------------
    @app.route("/api/kernels", methods=["GET"], strict_slashes=False)
    async def list_kernels(self, request):
        await self._login(request)
        self._check_listing()
        return write_json(request, [kernel.model() for kernel in self.registry.list_kernels()])

    def _check_listing(self):
        if not self.config.list_kernels:
            raise GatewayError("listing kernels is disabled on this gateway", reason="Forbidden", status=403)

    @app.route("/api/kernels", methods=["POST"], strict_slashes=False)
    async def start_kernel(self, request):
        await self._login(request)
        body = read_json_body(request)
        name = body.get("name")
        if name is not None and not isinstance(name, str):
            raise BadRequest("name must be a string")
        kernel = await self.registry.start(name or None, body.get("env"))
        request.setHeader(b"Location", f"{self.config.base_url}api/kernels/{kernel.id}".encode("utf-8"))
        return write_json(request, kernel.model(), 201)

    @app.route("/api/kernels/<string:kernel_id>", methods=["GET"], strict_slashes=False)
    async def get_kernel(self, request, kernel_id):
        await self._login(request)
        return write_json(request, self.registry.get(kernel_id).model())

    @app.route("/api/kernels/<string:kernel_id>", methods=["DELETE"], strict_slashes=False)
    async def delete_kernel(self, request, kernel_id):
        await self._login(request)
        await self.registry.shutdown(kernel_id)
        request.setResponseCode(204)
        return b""

    @app.route("/api/kernels/<string:kernel_id>/interrupt", methods=["POST"], strict_slashes=False)
    async def interrupt_kernel(self, request, kernel_id):
        await self._login(request)
        await self.registry.interrupt(kernel_id)
        request.setResponseCode(204)
        return b""

    @app.route("/api/kernels/<string:kernel_id>/restart", methods=["POST"], strict_slashes=False)
    async def restart_kernel(self, request, kernel_id):
        await self._login(request)
        kernel = await self.registry.restart(kernel_id)
        return write_json(request, kernel.model())

    @app.route("/api/kernels/<string:kernel_id>/channels", methods=["GET"])
    async def channels(self, request, kernel_id):
        await self._login(request)
        self.registry.get(kernel_id)
        if (request.getHeader(b"upgrade") or b"").lower() != b"websocket":
            raise BadRequest("this endpoint only accepts WebSocket upgrades")
        negotiate_subprotocol(request.getHeader(b"sec-websocket-protocol"))
        session_id = (query_arg(request, b"session_id") or b"").decode("utf-8", "replace")
        if not session_id:
            session_id = uuid.uuid4().hex
        if len(session_id) > _MAX_SESSION_ID or not session_id.isprintable():
            raise BadRequest("invalid session_id")
        return ChannelsUpgrade(self.ws_factory, kernel_id, session_id)

    # -- sessions -----------------------------------------------------------------
    @app.route("/api/sessions", methods=["GET"], strict_slashes=False)
    async def list_sessions(self, request):
        await self._login(request)
        self._check_listing()
        return write_json(request, self.sessions.list())

    @app.route("/api/sessions", methods=["POST"], strict_slashes=False)
    async def create_session(self, request):
        await self._login(request)
        model, created = await self.sessions.create(read_json_body(request))
        request.setHeader(b"Location", f"{self.config.base_url}api/sessions/{model['id']}".encode("utf-8"))
        return write_json(request, model, 201)

    @app.route("/api/sessions/<string:session_id>", methods=["GET"], strict_slashes=False)
    async def get_session(self, request, session_id):
        await self._login(request)
        return write_json(request, self.sessions.get(session_id))

    @app.route("/api/sessions/<string:session_id>", methods=["PATCH"], strict_slashes=False)
    async def update_session(self, request, session_id):
        await self._login(request)
        model = await self.sessions.update(session_id, read_json_body(request))
        return write_json(request, model)

    @app.route("/api/sessions/<string:session_id>", methods=["DELETE"], strict_slashes=False)
    async def delete_session(self, request, session_id):
        await self._login(request)
        await self.sessions.delete(session_id)
        request.setResponseCode(204)
        return b""


def _peer(request) -> str:
    peer = request.getClientAddress()
    return getattr(peer, "host", str(peer))
