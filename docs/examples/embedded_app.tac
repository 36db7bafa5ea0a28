"""An existing Twisted web application with a jkg gateway mounted under /jupyter/.

Run it (from any directory) with::

    twistd -ny docs/examples/embedded_app.tac

then open http://127.0.0.1:8080/ (the hello page) and
http://127.0.0.1:8080/jupyter/api/kernelspecs (the gateway).  Environment:
``EXAMPLE_LISTEN`` overrides the endpoint string; jkg's own ``KG_*``/``JKG_*``
variables (e.g. ``KG_AUTH_TOKEN``) configure the gateway.
"""
import os

# 1. The asyncio reactor, before anything imports twisted.internet.reactor
#    (jupyter_client's async kernel manager runs on its loop).  This installs it
#    unless twistd was given another --reactor, in which case it exits with an error.
from jkg.tap import install_asyncio_reactor

reactor = install_asyncio_reactor()

from twisted.application import service, strports  # noqa: E402
from twisted.web.resource import Resource  # noqa: E402
from twisted.web.static import Data  # noqa: E402

from jkg.config import build_config  # noqa: E402
from jkg.service import make_gateway  # noqa: E402
from jkg.web.site import GatewaySite  # noqa: E402

# 2. The gateway: configuration from the environment (KG_AUTH_TOKEN, ...) plus
#    our own choices.  base_url stays "/" because the mount point below adds
#    the /jupyter/ prefix (see docs/embedding.md for what that implies).
config = build_config({}, os.environ)
gateway = make_gateway(config, reactor)

# 3. Our own resource tree: a hello page at / and the gateway at /jupyter/.
root = Resource()
root.putChild(b"", Data(b"<h1>Hello from the host application</h1>\n"
                        b'<p>The kernel gateway lives under <a href="/jupyter/api">/jupyter/</a>.</p>\n',
                        "text/html; charset=utf-8"))
root.putChild(b"jupyter", gateway.resource)

# 4. One application: the gateway's service (kernel registry: stopping it shuts
#    every kernel down) and our own listener.  GatewaySite is a plain Site that
#    also sets TCP_NODELAY and writes no access log (URLs may carry ?token=).
application = service.Application("embedded-jkg")
gateway.service.setServiceParent(application)
listen = os.environ.get("EXAMPLE_LISTEN", "tcp:8080:interface=127.0.0.1")
strports.service(listen, GatewaySite(root)).setServiceParent(application)
