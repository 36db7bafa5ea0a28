"""A throwaway CA and a server certificate for 127.0.0.1, for gateways measured behind TLS (``--tls``).

The certificates are made with the test suite's own helper
(``tests/support.make_certificate``) in the run's log directory; the
gateways get them as ``KG_CERTFILE``/``KG_KEYFILE`` (jkg and
jupyter-kernel-gateway read the same settings), the clients trust the CA.
"""
from __future__ import annotations

import ssl
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Certificates:
    def __init__(self, directory: Path):
        sys.path.insert(0, str(HERE.parent / "tests"))
        from support import make_certificate

        directory.mkdir(parents=True, exist_ok=True)
        ca = make_certificate(directory, "bench-ca")
        self.cert, self.key = make_certificate(directory, "bench-server", issuer=ca, ca=False)
        self.ca = str(ca[0])

    def env(self) -> dict:
        return {"KG_CERTFILE": str(self.cert), "KG_KEYFILE": str(self.key)}

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)
