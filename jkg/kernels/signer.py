"""Jupyter's message signature: an HMAC of the four JSON parts with the kernel's key.

The key comes from the connection file and never leaves the server: the
launcher reads it, :class:`~jkg.kernels.channels.KernelChannels` signs what
it sends and checks what it receives with it.  The parts are signed as bytes:
nothing is decoded or re-encoded.
"""
from __future__ import annotations

import hmac
from typing import Sequence


class Signer:
    """HMAC of a message's four JSON parts with the kernel's key (Jupyter's signature).

    :param scheme: ``hmac-<hash>``, as in the connection file.
    """

    def __init__(self, key: bytes, scheme: str = "hmac-sha256"):
        kind, _, digest = scheme.partition("-")
        if kind != "hmac" or not digest:
            raise ValueError(f"unsupported signature scheme {scheme!r}")
        # A digest *name* selects OpenSSL's HMAC, much faster than the pure-Python one.
        # (Its private C object, ``_hmac``, was used here once: measured, it signs an
        # execute_request no faster than the public ``hmac.HMAC``, ~1.5-1.7 us either way.)
        self._auth = hmac.new(key, digestmod=digest) if key else None

    def sign(self, parts: Sequence) -> bytes:
        auth = self._auth
        if auth is None:
            return b""
        h = auth.copy()
        update = h.update
        update(parts[0])
        update(parts[1])
        update(parts[2])
        update(parts[3])
        return h.hexdigest().encode("ascii")

    def verify(self, parts: Sequence, signature) -> bool:
        return hmac.compare_digest(self.sign(parts), signature)

