"""The pure parts of ``jkg.client``: error classification, settings, the wire codec, a dead kernel's status.

No gateway and no kernel: what the client makes of responses and frames it is handed.
"""
from __future__ import annotations

import base64

import pytest
from client_support import BLOB, run_async

from jkg import wire
from jkg.client import (
    GatewayAuthError,
    GatewayClientError,
    GatewayKernelClient,
    GatewayQuotaError,
    GatewaySettings,
    GatewayUnreachable,
    KernelDied,
)
from jkg.client.codec import decode_frame, encode_message
from jkg.client.errors import GatewayHTTPError, error_from_response


def test_error_classification_matches_each_gateway():
    kg_quota = error_from_response(403, b'{"reason": "Forbidden", "message": "Resource Limit"}', url="u", what="x")
    jkg_quota = error_from_response(403, b'{"reason": "Resource Limit", "message": "Maximum number of kernels '
                                    b'(1) reached"}', url="u", what="x")
    forbidden = error_from_response(403, b'{"reason": "Forbidden", "message": "listing is disabled"}', url="u",
                                    what="x")
    assert isinstance(kg_quota, GatewayQuotaError) and isinstance(jkg_quota, GatewayQuotaError)
    assert isinstance(forbidden, GatewayAuthError) and not isinstance(forbidden, GatewayQuotaError)
    assert isinstance(error_from_response(404, b"", url="u", what="x", kernel_id="k"), KernelDied)
    other = error_from_response(500, b"<html>oops</html>", url="u", what="x")
    assert isinstance(other, GatewayHTTPError) and other.message.endswith("<html>oops</html>")
    for cls in (GatewayUnreachable, GatewayAuthError, GatewayQuotaError, KernelDied, GatewayHTTPError):
        assert issubclass(cls, GatewayClientError)


def test_settings_from_env_and_arguments():
    env = {"JKG_GATEWAY_URL": "https://gw.example:8443/base/", "JKG_GATEWAY_USER": "ann",
           "JKG_GATEWAY_PASSWORD": "pw", "JKG_GATEWAY_HEADERS": '{"X-Extra": "1"}'}
    settings = GatewaySettings.from_env(env)
    assert settings.url == "https://gw.example:8443/base" and settings.ws_url == "wss://gw.example:8443/base"
    assert settings.validate_cert is True  # on unless turned off
    assert settings.auth_headers() == {"X-Extra": "1", "Authorization": "Basic " + base64.b64encode(b"ann:pw").decode()}
    assert settings.channels_url("k-1", "s 1") == "wss://gw.example:8443/base/api/kernels/k-1/channels?session_id=s%201"
    token = GatewaySettings.from_env(env, token="t0k", validate_cert=False)
    assert token.auth_headers()["Authorization"] == "token t0k" and token.validate_cert is False
    assert "t0k" not in repr(token) and "pw" not in repr(token)
    assert GatewaySettings.from_env({**env, "JKG_GATEWAY_VALIDATE_CERT": "false"}).validate_cert is False
    with pytest.raises(GatewayClientError, match="JKG_GATEWAY_URL"):
        GatewaySettings.from_env({})
    with pytest.raises(GatewayClientError):
        GatewaySettings.from_env({"JKG_GATEWAY_URL": "ftp://x"})


def test_codec_speaks_the_gateways_wire_format():
    from jupyter_client.session import Session

    msg = Session(username="u").msg("comm_msg", {"comm_id": "c", "data": {"é": 1}})
    msg["buffers"] = [BLOB, b""]
    frame, binary = encode_message("shell", msg, v1=True)
    incoming = wire.decode_client_v1(frame)
    assert binary and incoming.channel == "shell" and incoming.parts[4:] == [BLOB, b""]
    frame, binary = encode_message("shell", msg, v1=False)
    assert binary and wire.decode_client_legacy_binary(frame).parts[4:] == [BLOB, b""]
    del msg["buffers"]
    text, binary = encode_message("control", msg, v1=False)
    assert not binary and isinstance(text, str)
    assert wire.decode_client_legacy_text(text).header["msg_id"] == msg["header"]["msg_id"]

    parts = [b'{"msg_id": "m", "msg_type": "status", "date": "2026-01-01T00:00:00.000000Z"}',
             b'{"msg_id": "p"}', b"{}", b'{"execution_state": "idle"}', BLOB]
    cases = ((wire.encode_v1("iopub", parts), True, [BLOB]),
             (wire.encode_legacy("iopub", parts, "m", "status")[0], False, [BLOB]),
             (wire.encode_legacy("iopub", parts[:4], "m", "status")[0].decode(), False, []))
    for frame, v1, buffers in cases:
        channel, decoded = decode_frame(frame, v1)
        assert channel == "iopub" and decoded["msg_type"] == "status"
        assert decoded["parent_header"] == {"msg_id": "p"} and decoded["header"]["date"].year == 2026
        assert [bytes(b) for b in decoded["buffers"]] == buffers


def test_dead_status_fails_the_channels_after_delivering_it():
    async def scenario():
        kc = GatewayKernelClient(kernel_id="k", settings=GatewaySettings(url="http://127.0.0.1:9"))
        kc.start_channels()
        kc._connection.stop()  # no socket needed: feed a message as the reader would
        status = {"header": {"msg_id": "s", "msg_type": "status"}, "msg_id": "s", "msg_type": "status",
                  "parent_header": {}, "metadata": {}, "content": {"execution_state": "dead"}, "buffers": []}
        kc._connection._deliver("iopub", status)
        assert (await kc.get_iopub_msg(timeout=1))["content"]["execution_state"] == "dead"
        with pytest.raises(KernelDied):
            await kc.get_iopub_msg(timeout=1)
        with pytest.raises(KernelDied):
            await kc.get_shell_msg(timeout=None)  # fails at once instead of waiting forever
        assert not await kc.is_alive()

    run_async(scenario, timeout=30)


def test_kernel_gone_fails_waiting_and_later_use_with_the_reason():
    async def scenario():
        kc = GatewayKernelClient(kernel_id="k", settings=GatewaySettings(url="http://127.0.0.1:9"))
        kc.start_channels()
        kc.kernel_gone("kernel k was shut down by its manager")
        assert isinstance(kc.failure, KernelDied) and "shut down by its manager" in str(kc.failure)
        with pytest.raises(KernelDied):
            await kc.get_shell_msg(timeout=None)  # fails at once instead of waiting forever
        with pytest.raises(KernelDied):
            kc.kernel_info()
        kc.stop_channels()

    run_async(scenario, timeout=30)
