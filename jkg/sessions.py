"""The sessions API's state: which notebook path uses which kernel.

JupyterLab's SessionManager and Thebe create a session rather than a bare
kernel.  Sessions live in memory and refer to kernels in the registry; a
session whose kernel is gone disappears from listings (instead of the 500s
jupyter-kernel-gateway answers for GET and PATCH).  Starting a kernel here
goes through the registry, so ``max_kernels`` and the env rules apply.
Each tenant may hold at most ``max_per_tenant`` sessions, and a tenant's
requests only walk that tenant's sessions.
"""
from __future__ import annotations

import uuid

from twisted.internet.defer import inlineCallbacks

from .errors import BadRequest, ResourceLimit, UnknownKernel, UnknownSession


def _text_field(body: dict, key: str, default: str = "") -> str:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    return value


class SessionStore:
    """:param max_per_tenant: sessions one tenant (owner) may have; 0 means no limit."""

    def __init__(self, registry, max_per_tenant: int = 0):
        self._registry = registry
        self.max_per_tenant = max_per_tenant
        self._sessions: dict[str, dict] = {}
        self._by_owner: dict[str | None, set[str]] = {}

    def _forget(self, session_id: str) -> dict:
        session = self._sessions.pop(session_id)
        owned = self._by_owner.get(session["owner"])
        if owned is not None:
            owned.discard(session_id)
            if not owned:
                del self._by_owner[session["owner"]]
        return session

    def _model(self, session: dict, tenant=None) -> dict:
        """jupyter_server's session model; with ``owner`` (session and kernel) for tenants that see owners."""
        kernel = self._registry.get(session["kernel_id"])  # sessions of a tenant use its kernels
        model = {
            "id": session["id"],
            "path": session["path"],
            "name": session["name"],
            "type": session["type"],
            "kernel": kernel.model(),
            "notebook": {"path": session["path"], "name": session["name"]},
        }
        if tenant is not None and tenant.sees_owners:
            model["owner"] = session["owner"]
            model["kernel"]["owner"] = kernel.owner
        return model

    def _live(self, tenant=None) -> list[dict]:
        live = []
        if tenant is None or tenant.admin:
            candidates = list(self._sessions)
        else:
            candidates = list(self._by_owner.get(tenant.name, ()))
        for session_id in candidates:
            session = self._sessions[session_id]
            try:
                model = self._model(session, tenant)
            except UnknownKernel:
                self._forget(session_id)
                continue
            if tenant is None or tenant.may_use(session["owner"]):
                live.append(model)
        return live

    def list(self, tenant=None) -> list[dict]:
        return self._live(tenant)

    def _session(self, session_id: str, tenant=None) -> dict:
        """The session; another tenant's is "not found", exactly like a missing one."""
        session = self._sessions.get(session_id)
        if session is None or (tenant is not None and not tenant.may_use(session["owner"])):
            raise UnknownSession(session_id)
        return session

    def get(self, session_id: str, tenant=None) -> dict:
        session = self._session(session_id, tenant)
        try:
            return self._model(session, tenant)
        except UnknownKernel:
            self._forget(session_id)
            raise UnknownSession(session_id) from None

    @staticmethod
    def _parse(body: dict, partial: bool = False) -> dict:
        fields = {}
        notebook = body.get("notebook")
        if "path" in body or not partial:
            path = _text_field(body, "path")
            if not path and isinstance(notebook, dict):
                path = _text_field(notebook, "path")
            if not path and not partial:
                raise BadRequest("session path missing")
            fields["path"] = path
        for key in ("name", "type"):
            if key in body or not partial:
                fields[key] = _text_field(body, key, "notebook" if key == "type" else "")
        kernel = body.get("kernel")
        if kernel is not None and not isinstance(kernel, dict):
            raise BadRequest("kernel must be an object")
        fields["kernel"] = kernel
        return fields

    @inlineCallbacks
    def _kernel_for(self, kernel_spec: dict | None, tenant):
        """An existing kernel by id, or a new one by name."""
        kernel_spec = kernel_spec or {}
        kernel_id = kernel_spec.get("id")
        if kernel_id is not None:
            if not isinstance(kernel_id, str):
                raise BadRequest("kernel.id must be a string")
            return self._registry.get(kernel_id, tenant).id
        name = kernel_spec.get("name")
        if name is not None and not isinstance(name, str):
            raise BadRequest("kernel.name must be a string")
        kernel = yield self._registry.start(name, kernel_spec.get("env"), tenant)
        return kernel.id

    @inlineCallbacks
    def create(self, body: dict, tenant=None):
        fields = self._parse(body)
        for session in self._live(tenant):
            if session["path"] == fields["path"] and fields["kernel"] is None:
                return session, False  # jupyter_server returns the existing session
        owner = tenant.name if tenant is not None else None
        self._check_quota(owner)
        kernel_id = yield self._kernel_for(fields["kernel"], tenant)
        session_id = str(uuid.uuid4())
        self._sessions[session_id] = {"id": session_id, "path": fields["path"], "name": fields["name"],
                                      "type": fields["type"], "kernel_id": kernel_id, "owner": owner}
        self._by_owner.setdefault(owner, set()).add(session_id)
        return self._model(self._sessions[session_id], tenant), True

    def _check_quota(self, owner: str | None) -> None:
        if self.max_per_tenant and len(self._by_owner.get(owner, ())) >= self.max_per_tenant:
            raise ResourceLimit(f"tenant {owner or 'anonymous'} reached its limit of {self.max_per_tenant} "
                                "sessions (--max-sessions-per-tenant)")

    @inlineCallbacks
    def update(self, session_id: str, body: dict, tenant=None):
        self.get(session_id, tenant)
        fields = self._parse(body, partial=True)
        session = self._sessions[session_id]
        if fields.get("kernel") is not None:
            old_kernel = session["kernel_id"]
            session["kernel_id"] = yield self._kernel_for(fields["kernel"], tenant)
            still_used = any(s["kernel_id"] == old_kernel for s in self._sessions.values())
            if old_kernel != session["kernel_id"] and not still_used:
                try:
                    yield self._registry.shutdown(old_kernel)
                except UnknownKernel:
                    pass
        for key in ("path", "name", "type"):
            if key in fields:
                session[key] = fields[key]
        return self._model(session, tenant)

    @inlineCallbacks
    def delete(self, session_id: str, tenant=None):
        session = self._session(session_id, tenant)
        self._forget(session_id)
        if not any(s["kernel_id"] == session["kernel_id"] for s in self._sessions.values()):
            try:
                yield self._registry.shutdown(session["kernel_id"])
            except UnknownKernel:
                pass
