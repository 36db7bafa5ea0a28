"""The TLS listener of jupyter-kernel-gateway's ``KG_CERTFILE``/``KG_KEYFILE``/``KG_CLIENT_CA``.

Twisted's ``ssl:`` endpoint string cannot require client certificates, so
the listener for ``--certfile`` (on ``--ip``/``--port``) is built here: with
``--client-ca`` a client must present a certificate signed by one of those
CAs, or the handshake fails.  Files are read once, at startup.
"""
from __future__ import annotations

import re

from twisted.internet import ssl
from twisted.internet.endpoints import SSL4ServerEndpoint

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def _read(path: str, what: str) -> bytes:
    from .service import ListenError

    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise ListenError(f"cannot read {what} {path}: {error.strerror}") from None


def certificate_options(certfile: str, keyfile: str = "", client_ca: str = ""):
    """``CertificateOptions`` for the server certificate, verifying clients against ``client_ca`` if given."""
    from .service import ListenError

    cert = _read(certfile, "certificate (--certfile)")
    key = _read(keyfile, "private key (--keyfile)") if keyfile else cert
    try:
        server = ssl.PrivateCertificate.loadPEM(key + b"\n" + cert)
    except Exception as error:  # noqa: BLE001 - pyOpenSSL raises several types
        raise ListenError(f"cannot load the TLS certificate {certfile} with key {keyfile or certfile}: "
                          f"{error or type(error).__name__}") from None
    if not client_ca:
        return server.options()
    blocks = _PEM_CERT.findall(_read(client_ca, "client CA file (--client-ca)"))
    if not blocks:
        raise ListenError(f"no PEM certificate in the client CA file {client_ca}")
    try:
        authorities = [ssl.Certificate.loadPEM(block) for block in blocks]
    except Exception as error:  # noqa: BLE001
        raise ListenError(f"cannot load the client CA file {client_ca}: {error}") from None
    return server.options(*authorities)


def tls_endpoint(reactor, config):
    """An SSL endpoint on ``--ip``/``--port`` with the configured certificate files."""
    options = certificate_options(config.certfile, config.keyfile, config.client_ca)
    return SSL4ServerEndpoint(reactor, config.port, options, interface=config.ip)
