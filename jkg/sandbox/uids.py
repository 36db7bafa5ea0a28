"""``--kernel-uid-range``: every tenant's kernels under a uid of their own, from a range, stable per tenant.

When jkg runs as root, one ``--kernel-user`` for every kernel means that
``RLIMIT_NPROC``, file ownership and signals do not separate tenants; a
``uid`` per tenant in the tenants file does, but must be kept by hand.  A
range does it for every tenant without its own ``uid``: the tenant's uid
(and gid) is derived from its name -- the first eight bytes of SHA-256,
modulo the range's size -- so it is the same on every gateway, across
restarts and reloads, and a kept workspace stays its owner's.  Where two
names land on one uid (or on a uid a tenant's table sets explicitly), the
name later in sorted order takes the next free one (wrapping around), so a
uid changes only when a tenant whose name sorts earlier collides with it.

Pure: parsing and assignment only.
"""
from __future__ import annotations

import hashlib
import re

_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*\Z")
MAX_ID = 2 ** 32 - 2  # (uid_t) -1 means "unchanged" to the kernel


def parse_uid_range(text: str) -> tuple[int, int] | None:
    """``"200000-265535"`` -> (200000, 265535), both ends included; ``""`` -> None."""
    if not text.strip():
        return None
    match = _RANGE.match(text)
    if not match:
        raise ValueError(f"not a uid range: {text!r} (use FIRST-LAST, e.g. 200000-265535)")
    first, last = int(match.group(1)), int(match.group(2))
    if not 0 < first <= last <= MAX_ID:
        raise ValueError(f"uid range {text!r} must satisfy 0 < FIRST <= LAST <= {MAX_ID} (never root)")
    return first, last


def preferred_uid(name: str, uid_range: tuple[int, int]) -> int:
    """Where ``name`` lands before collisions are resolved."""
    first, last = uid_range
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return first + int.from_bytes(digest[:8], "big") % (last - first + 1)


def assign_uids(names, uid_range: tuple[int, int], taken=()) -> dict[str, int]:
    """A distinct uid in ``uid_range`` for each name, none of them in ``taken`` (uids set explicitly).

    Raises ValueError when the range has fewer free uids than there are names.
    """
    first, last = uid_range
    size = last - first + 1
    used = {uid for uid in taken if first <= uid <= last}
    names = sorted(set(names))
    if len(names) > size - len(used):
        raise ValueError(f"uid range {first}-{last} has {size - len(used)} free uids for {len(names)} tenants")
    assigned = {}
    for name in names:
        uid = preferred_uid(name, uid_range)
        while uid in used:
            uid = first + (uid - first + 1) % size
        used.add(uid)
        assigned[name] = uid
    return assigned
