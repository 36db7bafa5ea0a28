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
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException

from .. import __version__
from ..auth.quota import default_kernel_name
from ..errors import BadRequest, GatewayError, ResourceLimit, UnknownKernelSpec
from ..kernels.messages import isoformat
from .channels import ChannelsUpgrade, negotiate_subprotocol
from .http import query_arg, read_json_body, write_error, write_json
from .login import login_with_credentials, peer
from ..auth.revocation import credential_key

log = Logger()
audit = Logger(namespace="jkg.audit")

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
    :param spec: ``(yaml_bytes, json_bytes)`` of the OpenAPI description
        (:func:`jkg.web.spec.load_spec`).  The service reads it before the
        reactor runs, so that serving it never touches the disk; without it the
        first request reads it, with ``servers`` at this API's ``base_url``.
    """

    app = Klein()

    def __init__(self, config, registry, specs, sessions, portal, ws_factory, cors, limiter, tenants=None,
                 spec: tuple[bytes, bytes] | None = None):
        self.config = config
        self.registry = registry
        self.specs = specs
        self.sessions = sessions
        self.portal = portal
        self.ws_factory = ws_factory
        self.cors = cors
        self.limiter = limiter
        self.tenants = tenants or (lambda: None)
        self._spec_bytes = spec

    metrics = None  # a prometheus_client CollectorRegistry, set by jkg.service

    def resource(self):
        return self.app.resource()

    # -- cross-cutting ---------------------------------------------------------
    async def _login(self, request):
        """Authenticate through the portal; the routes only ever see the tenant."""
        tenant, _ = await self._login_with_credentials(request)
        return tenant

    async def _login_with_credentials(self, request):
        """:meth:`_login`, and the credentials used (the WebSocket route keeps them for revocation)."""
        hosts = None if self.config.has_credentials else self.config.allowed_hosts
        return await login_with_credentials(request, self.portal, self.limiter, self.cors, hosts)

    def _model(self, kernel, tenant) -> dict:
        model = kernel.model()
        if tenant.sees_owners:
            model["owner"] = kernel.owner
        return model

    @app.handle_errors(GatewayError)
    def gateway_error(self, request, failure):
        return write_error(request, failure.value)

    @app.handle_errors(HTTPException)
    def routing_error(self, request, failure):
        error = failure.value
        allowed = getattr(error, "valid_methods", None)
        if allowed:  # a 405 names what the path does serve (RFC 9110)
            request.setHeader(b"Allow", ", ".join(sorted({*allowed, "OPTIONS"})).encode("ascii"))
        return write_json(request, {"reason": error.name, "message": error.description or ""}, error.code)

    @app.handle_errors(Exception)
    def unexpected_error(self, request, failure):
        log.failure("unhandled error in {method} {path}", failure, method=request.method, path=request.path)
        return write_json(request, {"reason": "Internal Server Error", "message": "unexpected server error"}, 500)

    # -- server ------------------------------------------------------------------
    @app.route("/api/spec.yaml", methods=["GET"])
    @app.route("/api/swagger.yaml", methods=["GET"])
    def spec_yaml(self, request):
        """The OpenAPI description, without credentials (it holds no secrets)."""
        request.setHeader(b"Content-Type", b"application/yaml")
        return self._spec()[0]

    @app.route("/api/swagger.json", methods=["GET"])
    def spec_json(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        return self._spec()[1]

    def _spec(self) -> tuple[bytes, bytes]:
        if self._spec_bytes is None:
            from .spec import load_spec

            self._spec_bytes = load_spec(self.config.base_url)
        return self._spec_bytes

    @app.route("/metrics", methods=["GET"], strict_slashes=False)
    async def prometheus_metrics(self, request):
        """Prometheus text format; for admins (every tenant's kernels show) unless ``--metrics-public``."""
        if not self.config.metrics_public:
            tenant = await self._login(request)
            if not tenant.admin:
                raise GatewayError("metrics are for admin tenants", reason="Forbidden", status=403)
        if self.metrics is None:
            raise GatewayError("metrics are not enabled here", reason="Not Found", status=404)
        from ..metrics import CONTENT_TYPE_LATEST, render

        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return render(self.metrics)

    @app.route("/api", methods=["GET"], strict_slashes=False)
    async def version(self, request):
        await self._login(request)
        return write_json(request, {"version": __version__, "gateway": "jkg"})

    @app.route("/api/status", methods=["GET"], strict_slashes=False)
    async def status(self, request):
        tenant = await self._login(request)
        kernels = self.registry.list_kernels(tenant)
        if tenant.admin:
            last_activity, connections = self.registry.last_activity(), self.registry.connection_count()
        else:  # another tenant's activity is none of this tenant's business
            last_activity = max((k.last_activity for k in kernels), default=self.registry.started)
            connections = self.ws_factory.connections.open.get(tenant.name, 0)
        return write_json(request, {
            "started": isoformat(self.registry.started),
            "last_activity": isoformat(last_activity),
            "connections": connections,
            "kernels": len(kernels),
        })

    # -- kernelspecs ---------------------------------------------------------------
    @app.route("/api/kernelspecs", methods=["GET"], strict_slashes=False)
    async def list_kernelspecs(self, request):
        tenant = await self._login(request)
        user = query_arg(request, b"user")
        if user and b"/" in user:
            # jupyter_server appends "/NAME" after "?user=U" when fetching one spec
            name = user.rsplit(b"/", 1)[1].decode("utf-8", "replace")
            return await self._one_kernelspec(request, name, tenant)
        found = await self.specs.describe_all()
        specs = {name: kernelspec_model(name, spec, files, self.config.base_url)
                 for name, (spec, files) in found.items() if tenant.may_start(name)}
        default = default_kernel_name(self.config, self.specs.default_name, tenant)
        return write_json(request, {"default": default, "kernelspecs": specs})

    @app.route("/api/kernelspecs/<string:name>", methods=["GET"], strict_slashes=False)
    async def get_kernelspec(self, request, name):
        tenant = await self._login(request)
        return await self._one_kernelspec(request, name, tenant)

    async def _one_kernelspec(self, request, name: str, tenant):
        if not tenant.may_start(name):
            raise UnknownKernelSpec(name)
        spec, files = await self.specs.describe(name)
        return write_json(request, kernelspec_model(name, spec, files, self.config.base_url))

    @app.route("/kernelspecs/<string:name>/<path:path>", methods=["GET", "HEAD"])
    async def kernelspec_resource(self, request, name, path):
        tenant = await self._login(request)
        if not tenant.may_start(name):
            raise UnknownKernelSpec(name)
        data = await self.specs.resource(name, path)
        content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        if content_type.startswith("image/"):
            request.setHeader(b"Cache-Control", b"max-age=2592000")
        return data

    # -- kernels -------------------------------------------------------------------
    @app.route("/api/kernels", methods=["GET"], strict_slashes=False)
    async def list_kernels(self, request):
        tenant = await self._login(request)
        self._check_listing()
        return write_json(request, [self._model(kernel, tenant) for kernel in self.registry.list_kernels(tenant)])

    def _check_listing(self):
        if not self.config.list_kernels:
            raise GatewayError("listing kernels is disabled on this gateway", reason="Forbidden", status=403)

    @app.route("/api/kernels", methods=["POST"], strict_slashes=False)
    async def start_kernel(self, request):
        tenant = await self._login(request)
        body = read_json_body(request)
        name = body.get("name")
        if name is not None and not isinstance(name, str):
            raise BadRequest("name must be a string")
        try:
            kernel = await self.registry.start(name or None, body.get("env"), tenant)
        except ResourceLimit as refusal:
            audit.info("quota refused: tenant={tenant} address={address} reason={reason}", tenant=tenant.name,
                       address=_peer(request), reason=refusal.message)
            raise
        audit.info("kernel started: tenant={tenant} address={address} kernel={kernel} name={name}",
                   tenant=tenant.name, address=_peer(request), kernel=kernel.id, name=kernel.name)
        request.setHeader(b"Location", f"{self.config.base_url}api/kernels/{kernel.id}".encode("utf-8"))
        return write_json(request, self._model(kernel, tenant), 201)

    @app.route("/api/kernels/<string:kernel_id>", methods=["GET"], strict_slashes=False)
    async def get_kernel(self, request, kernel_id):
        tenant = await self._login(request)
        return write_json(request, self._model(self.registry.get(kernel_id, tenant), tenant))

    @app.route("/api/kernels/<string:kernel_id>", methods=["DELETE"], strict_slashes=False)
    async def delete_kernel(self, request, kernel_id):
        tenant = await self._login(request)
        await self.registry.shutdown(kernel_id, tenant)
        audit.info("kernel shut down: tenant={tenant} address={address} kernel={kernel}", tenant=tenant.name,
                   address=_peer(request), kernel=kernel_id)
        request.setResponseCode(204)
        return b""

    @app.route("/api/kernels/<string:kernel_id>/interrupt", methods=["POST"], strict_slashes=False)
    async def interrupt_kernel(self, request, kernel_id):
        tenant = await self._login(request)
        await self.registry.interrupt(kernel_id, tenant)
        request.setResponseCode(204)
        return b""

    @app.route("/api/kernels/<string:kernel_id>/restart", methods=["POST"], strict_slashes=False)
    async def restart_kernel(self, request, kernel_id):
        tenant = await self._login(request)
        kernel = await self.registry.restart(kernel_id, tenant)
        return write_json(request, self._model(kernel, tenant))

    @app.route("/api/kernels/<string:kernel_id>/channels", methods=["GET"])
    async def channels(self, request, kernel_id):
        tenant, credentials = await self._login_with_credentials(request)
        self.registry.get(kernel_id, tenant)
        if (request.getHeader(b"upgrade") or b"").lower() != b"websocket":
            raise BadRequest("this endpoint only accepts WebSocket upgrades")
        negotiate_subprotocol(request.getHeader(b"sec-websocket-protocol"))
        session_id = (query_arg(request, b"session_id") or b"").decode("utf-8", "replace")
        if not session_id:
            session_id = uuid.uuid4().hex
        if len(session_id) > _MAX_SESSION_ID or not session_id.isprintable():
            raise BadRequest("invalid session_id")
        try:
            release = self.ws_factory.connections.reserve(tenant.name, tenant.max_connections)
        except ResourceLimit as refusal:
            audit.info("quota refused: tenant={tenant} address={address} reason={reason}", tenant=tenant.name,
                       address=_peer(request), reason=refusal.message)
            raise
        credential = credential_key(credentials, tenant.name, self.tenants())
        return ChannelsUpgrade(self.ws_factory, kernel_id, session_id, tenant.name, release, credential)

    # -- sessions -----------------------------------------------------------------
    @app.route("/api/sessions", methods=["GET"], strict_slashes=False)
    async def list_sessions(self, request):
        tenant = await self._login(request)
        self._check_listing()
        return write_json(request, self.sessions.list(tenant))

    @app.route("/api/sessions", methods=["POST"], strict_slashes=False)
    async def create_session(self, request):
        tenant = await self._login(request)
        model, created = await self.sessions.create(read_json_body(request), tenant)
        request.setHeader(b"Location", f"{self.config.base_url}api/sessions/{model['id']}".encode("utf-8"))
        return write_json(request, model, 201)

    @app.route("/api/sessions/<string:session_id>", methods=["GET"], strict_slashes=False)
    async def get_session(self, request, session_id):
        tenant = await self._login(request)
        return write_json(request, self.sessions.get(session_id, tenant))

    @app.route("/api/sessions/<string:session_id>", methods=["PATCH"], strict_slashes=False)
    async def update_session(self, request, session_id):
        tenant = await self._login(request)
        model = await self.sessions.update(session_id, read_json_body(request), tenant)
        return write_json(request, model)

    @app.route("/api/sessions/<string:session_id>", methods=["DELETE"], strict_slashes=False)
    async def delete_session(self, request, session_id):
        tenant = await self._login(request)
        await self.sessions.delete(session_id, tenant)
        request.setResponseCode(204)
        return b""


_peer = peer
