"""What the operator asked for: sandbox mode, network and limits, per tenant and kernelspec.

The tenants file carries a ``[sandbox]`` table of its own, kept apart from
``[tenants.*]`` so that other per-tenant keys can grow without clashing::

    [sandbox.defaults]                 # every tenant and kernelspec
    network = "loopback"               # full | loopback | none
    memory = "1G"                      # bytes, or with K/M/G/T
    processes = 256
    [sandbox.kernelspecs.python3]
    network = "full"
    [sandbox.tenants.alice]
    uid = 20001                        # the unprivileged identity of alice's kernels
    gid = 20001
    cpu_time = 3600                    # seconds of CPU per process
    open_files = 1024
    disk = "500M"                      # a size-limited workspace (in memory; see docs/isolation.md)
    persist_workspace = true           # keep /home/kernel across kernels of alice
    mode = "none"                      # opt this tenant out of the sandbox (explicitly)
    allow_root = false                 # kernels of alice may run as root only if true

Pure: parsing and merging only.  Precedence, lowest first: gateway options,
``defaults``, the kernelspec's table, the tenant's table.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

MODES = ("auto", "bwrap", "none")
NETWORKS = ("full", "loopback", "none")
LIMIT_KEYS = ("memory", "cpu_time", "processes", "open_files", "disk")
_SIZE = re.compile(r"(\d+)\s*([KMGT]i?B?|B)?\Z", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class SandboxSettingsError(ValueError):
    """A ``[sandbox]`` table that does not validate; ``str()`` says where."""


@dataclass(frozen=True)
class Limits:
    """Per-kernel resource limits; ``None`` means unlimited."""

    memory: int | None = None      # bytes
    cpu_time: int | None = None    # seconds of CPU per process
    processes: int | None = None
    open_files: int | None = None
    disk: int | None = None        # bytes of workspace

    @property
    def any(self) -> bool:
        return any(getattr(self, key) is not None for key in LIMIT_KEYS)


@dataclass(frozen=True)
class SandboxProfile:
    """Everything that decides how one kernel is walled in (hashable: the pool compares them)."""

    mode: str = "none"                 # bwrap | none (auto is resolved before a profile exists)
    network: str = "full"
    uid: int | None = None             # None: the gateway's --kernel-user
    gid: int | None = None
    allow_root: bool = False
    persist_workspace: bool = False
    owner: str | None = None           # the tenant whose workspace is kept when persisting
    limits: Limits = Limits()

    @property
    def sandboxed(self) -> bool:
        return self.mode == "bwrap"


@dataclass(frozen=True)
class Override:
    """One table of the ``[sandbox]`` section: only the keys it sets."""

    values: tuple = ()  # ((key, value), ...), validated

    def apply(self, profile: SandboxProfile) -> SandboxProfile:
        changes, limits = {}, {}
        for key, value in self.values:
            (limits if key in LIMIT_KEYS else changes)[key] = value
        if limits:
            changes["limits"] = replace(profile.limits, **limits)
        return replace(profile, **changes) if changes else profile


@dataclass(frozen=True)
class SandboxTable:
    """The parsed ``[sandbox]`` section of a tenants file."""

    defaults: Override = Override()
    kernelspecs: tuple = ()  # ((name, Override), ...)
    tenants: tuple = ()

    def profile_for(self, base: SandboxProfile, tenant: str | None, kernelspec: str) -> SandboxProfile:
        profile = self.defaults.apply(base)
        override = dict(self.kernelspecs).get(kernelspec)
        if override is not None:
            profile = override.apply(profile)
        override = dict(self.tenants).get(tenant) if tenant else None
        if override is not None:
            profile = override.apply(profile)
        return replace(profile, owner=tenant)

    def tenant_names(self) -> set[str]:
        return {name for name, _ in self.tenants}


def parse_size(value) -> int:
    """``512M``, ``2G``, ``1048576`` or an integer: bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE.match(value.strip())
        if match:
            unit = (match.group(2) or "").upper()[:1]
            return int(match.group(1)) * _UNITS[unit]
    raise ValueError(f"not a size: {value!r} (use bytes or a number with K, M, G or T)")


def _count(value) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError(f"must be a positive integer, got {value!r}")


def _id(value) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 32 - 1:
        return value
    raise ValueError(f"must be a numeric uid/gid, got {value!r}")


def _choice(options):
    def check(value):
        if value in options:
            return value
        raise ValueError(f"must be one of {', '.join(options)}, got {value!r}")
    return check


def _boolean(value):
    if isinstance(value, bool):
        return value
    raise ValueError(f"must be true or false, got {value!r}")


_KEYS = {
    "mode": _choice(("bwrap", "none")), "network": _choice(NETWORKS), "uid": _id, "gid": _id,
    "allow_root": _boolean, "persist_workspace": _boolean,
    "memory": parse_size, "disk": parse_size, "cpu_time": _count, "processes": _count, "open_files": _count,
}


def parse_override(where: str, table) -> Override:
    if not isinstance(table, dict):
        raise SandboxSettingsError(f"{where} must be a table")
    unknown = set(table) - set(_KEYS)
    if unknown:
        raise SandboxSettingsError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    values = []
    for key in sorted(table):
        try:
            values.append((key, _KEYS[key](table[key])))
        except ValueError as error:
            raise SandboxSettingsError(f"{where}: {key} {error}") from None
    return Override(tuple(values))


def parse_sandbox_table(section) -> SandboxTable:
    """Validate the ``[sandbox]`` table of a tenants file."""
    if section is None:
        return SandboxTable()
    if not isinstance(section, dict):
        raise SandboxSettingsError("[sandbox] must be a table")
    unknown = set(section) - {"defaults", "kernelspecs", "tenants"}
    if unknown:
        raise SandboxSettingsError(f"[sandbox]: unknown keys {', '.join(sorted(unknown))}")
    groups = {}
    for group in ("kernelspecs", "tenants"):
        entries = section.get(group, {})
        if not isinstance(entries, dict):
            raise SandboxSettingsError(f"[sandbox.{group}] must be a table of tables")
        groups[group] = tuple(sorted((name, parse_override(f"[sandbox.{group}.{name}]", entry))
                                     for name, entry in entries.items()))
    return SandboxTable(parse_override("[sandbox.defaults]", section.get("defaults", {})),
                        groups["kernelspecs"], groups["tenants"])


def render_sandbox_table(table: SandboxTable) -> list[str]:
    """TOML lines for a table (so rewriting the tenants file keeps it)."""
    lines = []

    def emit(header, override):
        if not override.values:
            return
        lines.append(header)
        for key, value in override.values:
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, int):
                lines.append(f"{key} = {value}")
            else:
                lines.append(f'{key} = "{value}"')
        lines.append("")

    emit("[sandbox.defaults]", table.defaults)
    for name, override in table.kernelspecs:
        emit(f'[sandbox.kernelspecs."{name}"]', override)
    for name, override in table.tenants:
        emit(f'[sandbox.tenants."{name}"]', override)
    return lines


FIELD_NAMES = tuple(f.name for f in fields(SandboxProfile))
TENANT_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")
