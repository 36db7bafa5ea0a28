"""The REST layer in memory: real routes, real cred portal, fake kernels, no sockets."""
import json

import pytest
from treq.testing import StubTreq
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from twisted.internet.task import Clock

from jkg.auth.lockout import FailureLimiter
from jkg.auth.realm import make_portal
from jkg.config import GatewayConfig
from jkg.interfaces import IKernelRegistry
from jkg.sessions import SessionStore
from jkg.testing import FakeKernelSpecs, FakeRegistry
from jkg.web.api import GatewayAPI
from jkg.web.channels import ChannelsFactory
from jkg.web.http import CorsPolicy
from jkg.web.site import GatewaySite, make_root_resource


def make_client(token="", spec=None, **config_values):
    config = GatewayConfig(auth_token=token, **config_values)
    registry = FakeRegistry(max_kernels=config.max_kernels)
    cors = CorsPolicy(config.allow_origin, config.allow_headers, config.allow_methods)
    api = GatewayAPI(config, registry, FakeKernelSpecs(), SessionStore(registry), make_portal(token),
                     ChannelsFactory(registry, config, Clock()), cors, FailureLimiter(Clock()), spec=spec)
    return StubTreq(make_root_resource(api.resource(), cors, config.base_url)), registry


def body(response):
    return json.loads(response.content)


@pytest.fixture
def stub():
    return make_client()


def result(deferred):

    results = []
    deferred.addBoth(results.append)
    assert results, "deferred did not fire synchronously"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def request(client, method, url, **kwargs):
    response = result(client.request(method, "http://localhost" + url, **kwargs))
    response.content = result(response.content())
    return response


def test_fake_registry_provides_the_interface():
    assert verifyObject(IKernelRegistry, FakeRegistry())


def test_start_list_delete(stub):
    client, registry = stub
    created = request(client, "POST", "/api/kernels", data=b'{"name": "python3"}')
    assert created.code == 201
    kernel_id = body(created)["id"]
    assert created.headers.getRawHeaders("location") == [f"/api/kernels/{kernel_id}"]
    assert [k["id"] for k in body(request(client, "GET", "/api/kernels"))] == [kernel_id]
    assert request(client, "DELETE", f"/api/kernels/{kernel_id}").code == 204
    assert registry.kernels == {}


def test_spec_given_to_the_constructor_is_served_as_given():
    client, _ = make_client(spec=(b"openapi: given\n", b'{"openapi": "given"}'))
    assert request(client, "GET", "/api/spec.yaml").content == b"openapi: given\n"
    assert request(client, "GET", "/api/swagger.json").content == b'{"openapi": "given"}'


def test_spec_without_one_given_is_read_with_servers_at_base_url():
    client, _ = make_client(base_url="/gw/")
    assert json.loads(request(client, "GET", "/gw/api/swagger.json").content)["servers"] == [{"url": "/gw/"}]


def test_errors_are_json_without_tracebacks(stub):
    client, _ = stub
    for method, url, code in [("GET", "/api/kernels/nope", 404), ("POST", "/api/kernels/nope/restart", 404),
                              ("GET", "/nothing/here", 404), ("POST", "/api/kernels", 400)]:
        response = request(client, method, url, data=b"{oops" if code == 400 else None)
        assert response.code == code
        assert set(body(response)) == {"reason", "message"}


def test_unknown_spec_404_and_quota_403():
    client, _ = make_client(max_kernels=1)
    assert request(client, "POST", "/api/kernels", data=b'{"name": "ruby"}').code == 404
    assert request(client, "POST", "/api/kernels", data=b"{}").code == 201
    refused = request(client, "POST", "/api/kernels", data=b"{}")
    assert refused.code == 403 and body(refused)["reason"] == "Resource Limit"


def test_token_checked_in_constant_time_paths():
    client, _ = make_client(token="sekrit")
    assert request(client, "GET", "/api/kernels").code == 401
    assert request(client, "GET", "/api/kernels", headers={"Authorization": "token wrong"}).code == 401
    assert request(client, "GET", "/api/kernels", headers={"Authorization": "token sekrit"}).code == 200
    assert request(client, "GET", "/api/kernels", headers={"Authorization": "Bearer sekrit"}).code == 200
    assert request(client, "GET", "/api/kernels?token=sekrit").code == 200
    basic = "Basic " + __import__("base64").b64encode(b"anyone:sekrit").decode()
    assert request(client, "GET", "/api/kernels", headers={"Authorization": basic}).code == 200


def test_options_answered_without_credentials():
    client, _ = make_client(token="sekrit", allow_origin="https://page.example")
    response = request(client, "OPTIONS", "/api/kernels", headers={"Origin": "https://page.example"})
    assert response.code == 204
    assert response.headers.getRawHeaders("access-control-allow-origin") == ["https://page.example"]
    assert "DELETE" in response.headers.getRawHeaders("access-control-allow-methods")[0]


def test_listing_can_be_disabled():
    client, _ = make_client(list_kernels=False)
    assert request(client, "GET", "/api/kernels").code == 403
    assert request(client, "GET", "/api/sessions").code == 403


def test_channels_route_refuses_plain_get_and_unknown_kernel(stub):
    client, registry = stub
    kernel_id = body(request(client, "POST", "/api/kernels", data=b"{}"))["id"]
    assert request(client, "GET", f"/api/kernels/{kernel_id}/channels").code == 400
    assert request(client, "GET", "/api/kernels/unknown/channels",
                   headers={"Upgrade": "websocket", "Connection": "Upgrade"}).code == 404


def test_site_turns_nagle_off():
    from twisted.web.resource import Resource

    site = GatewaySite(Resource())

    class Transport(StringTransport):
        no_delay = None

        def setTcpNoDelay(self, enabled):  # noqa: N802 - Twisted API
            self.no_delay = enabled

    protocol = site.buildProtocol(None)
    transport = Transport()
    protocol.makeConnection(transport)
    assert transport.no_delay is True
    protocol.connectionLost(None)
