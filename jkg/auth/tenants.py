"""The tenants file: who may use the gateway, with which secrets and quotas.

Format (TOML)::

    [tenants.alice]
    tokens = ["sha256:<hex sha256 of the token>"]
    password = "bcrypt:<bcrypt hash>"     # optional, for HTTP Basic
    max_kernels = 2                       # optional; default unlimited
    max_connections = 50                  # optional
    kernelspecs = ["python3"]             # optional allow-list
    admin = false

A separate top-level ``[sandbox]`` table sets kernel sandboxes per tenant and
kernelspec (:mod:`jkg.sandbox.settings`, docs/isolation.md).

Only hashes are stored, so the file leaking does not leak a token.  Parsing
and rendering are pure functions; :func:`write_tenants` replaces the file
atomically and keeps it private (0600).
"""
from __future__ import annotations

import hashlib
import os
import re
import secrets
import tempfile
import tomllib
from dataclasses import dataclass, field, replace

from ..sandbox.settings import SandboxSettingsError, SandboxTable, parse_sandbox_table, render_sandbox_table

TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")
_TOKEN_HASH = re.compile(r"sha256:[0-9a-f]{64}\Z")
_PASSWORD_HASH = re.compile(r"bcrypt:\$2[aby]?\$\d{2}\$[./A-Za-z0-9]{53}\Z")
_KERNEL_NAME = re.compile(r"[\w.\-]{1,255}\Z")
RESERVED_NAMES = frozenset({"default", "anonymous"})


class TenantsFileError(ValueError):
    """A tenants file that does not parse or validate; ``str()`` says where."""


@dataclass(frozen=True)
class TenantRecord:
    name: str
    tokens: tuple[str, ...] = ()
    password: str | None = None
    max_kernels: int | None = None
    max_connections: int | None = None
    kernelspecs: tuple[str, ...] | None = None
    admin: bool = False


@dataclass(frozen=True)
class TenantTable:
    """All tenants, with a reverse index from token hash to tenant name."""

    tenants: dict = field(default_factory=dict)
    sandbox: SandboxTable = SandboxTable()

    def __post_init__(self):
        index = {}
        for record in self.tenants.values():
            for token_hash in record.tokens:
                index[token_hash] = record.name
        object.__setattr__(self, "_by_token_hash", index)

    def by_token(self, token: str) -> TenantRecord | None:
        name = self._by_token_hash.get(hash_token(token))
        return self.tenants.get(name) if name else None

    def get(self, name: str) -> TenantRecord | None:
        return self.tenants.get(name)

    def with_tenant(self, record: TenantRecord) -> "TenantTable":
        return replace(self, tenants={**self.tenants, record.name: record})

    def without(self, name: str) -> "TenantTable":
        return replace(self, tenants={k: v for k, v in self.tenants.items() if k != name})


def hash_token(token: str) -> str:
    """Tokens are random and at least 128 bits, so a plain SHA-256 suffices to store them."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)  # 256 bits


def _optional_limit(name: str, key: str, value) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TenantsFileError(f"tenant {name}: {key} must be a non-negative integer")
    return value


def parse_tenants(text: str) -> TenantTable:
    """Parse and validate the TOML text of a tenants file."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise TenantsFileError(f"not valid TOML: {error}") from None
    section = data.get("tenants", {})
    if not isinstance(section, dict):
        raise TenantsFileError("[tenants] must be a table")
    unknown = set(data) - {"tenants", "sandbox"}
    if unknown:
        raise TenantsFileError(f"unknown top-level keys: {', '.join(sorted(unknown))}")
    tenants = {}
    for name, entry in section.items():
        tenants[name] = _parse_tenant(name, entry)
    seen: dict[str, str] = {}
    for record in tenants.values():
        for token_hash in record.tokens:
            if token_hash in seen:
                raise TenantsFileError(f"tenants {seen[token_hash]} and {record.name} share a token")
            seen[token_hash] = record.name
    try:
        sandbox = parse_sandbox_table(data.get("sandbox"))
    except SandboxSettingsError as error:
        raise TenantsFileError(str(error)) from None
    return TenantTable(tenants, sandbox)


def _parse_tenant(name: str, entry) -> TenantRecord:
    if not TENANT_NAME.match(name) or name in RESERVED_NAMES:
        raise TenantsFileError(f"invalid tenant name {name!r}")
    if not isinstance(entry, dict):
        raise TenantsFileError(f"tenant {name} must be a table")
    unknown = set(entry) - {"tokens", "password", "max_kernels", "max_connections", "kernelspecs", "admin"}
    if unknown:
        raise TenantsFileError(f"tenant {name}: unknown keys {', '.join(sorted(unknown))}")
    tokens = entry.get("tokens", [])
    if not isinstance(tokens, list) or not all(isinstance(t, str) and _TOKEN_HASH.match(t) for t in tokens):
        raise TenantsFileError(f"tenant {name}: tokens must be a list of \"sha256:<64 hex digits>\"")
    password = entry.get("password")
    if password is not None and not (isinstance(password, str) and _PASSWORD_HASH.match(password)):
        raise TenantsFileError(f"tenant {name}: password must be \"bcrypt:<bcrypt hash>\"")
    kernelspecs = entry.get("kernelspecs")
    if kernelspecs is not None:
        if not isinstance(kernelspecs, list) or not all(isinstance(k, str) and _KERNEL_NAME.match(k)
                                                        for k in kernelspecs):
            raise TenantsFileError(f"tenant {name}: kernelspecs must be a list of kernel names")
        kernelspecs = tuple(kernelspecs)
    admin = entry.get("admin", False)
    if not isinstance(admin, bool):
        raise TenantsFileError(f"tenant {name}: admin must be true or false")
    return TenantRecord(
        name=name, tokens=tuple(tokens), password=password,
        max_kernels=_optional_limit(name, "max_kernels", entry.get("max_kernels")),
        max_connections=_optional_limit(name, "max_connections", entry.get("max_connections")),
        kernelspecs=kernelspecs, admin=admin)


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_tenants(table: TenantTable) -> str:
    """TOML text for a table; :func:`parse_tenants` reads it back unchanged."""
    lines = ["# jkg tenants file: only token and password hashes are stored here.", ""]
    for record in sorted(table.tenants.values(), key=lambda r: r.name):
        lines.append(f"[tenants.{_toml_string(record.name)}]")
        lines.append("tokens = [" + ", ".join(_toml_string(t) for t in record.tokens) + "]")
        if record.password is not None:
            lines.append(f"password = {_toml_string(record.password)}")
        if record.max_kernels is not None:
            lines.append(f"max_kernels = {record.max_kernels}")
        if record.max_connections is not None:
            lines.append(f"max_connections = {record.max_connections}")
        if record.kernelspecs is not None:
            lines.append("kernelspecs = [" + ", ".join(_toml_string(k) for k in record.kernelspecs) + "]")
        lines.append(f"admin = {'true' if record.admin else 'false'}")
        lines.append("")
    lines += render_sandbox_table(table.sandbox)
    return "\n".join(lines)


def read_tenants(path: str) -> TenantTable:
    """Read a tenants file (blocking: call from a thread in the gateway)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise TenantsFileError(f"tenants file {path}: cannot read it: {error.strerror}") from None
    try:
        return parse_tenants(text)
    except TenantsFileError as error:
        raise TenantsFileError(f"tenants file {path}: {error}") from None


def write_tenants(path: str, table: TenantTable) -> None:
    """Replace the file atomically: readers see the old or the new file, never half of one."""
    folder = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(prefix=".tenants-", dir=folder)
    try:
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(render_tenants(table))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def set_password(record: TenantRecord, password_hash: str | None) -> TenantRecord:
    return replace(record, password=password_hash)
