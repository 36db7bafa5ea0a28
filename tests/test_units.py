"""Pure policy and formats: configuration, kernel environment, messages."""
import datetime

import pytest

from jkg.config import ConfigError, GatewayConfig, build_config
from jkg.errors import BadRequest
from jkg.kernels.env import kernel_env, launch_timeout, validate_client_env
from jkg.kernels.messages import MalformedMessage, isoformat, parse_kernel_frames, status_parts
from jkg.options import OPTIONS


def test_defaults_are_loopback_8888():
    config = build_config({}, {})
    assert config == GatewayConfig()
    assert config.endpoints == ("tcp:8888:interface=127.0.0.1",)
    assert config.list_kernels is True


def test_every_config_field_is_an_option_and_every_option_a_field():
    """The option table (jkg.options) and GatewayConfig (jkg.config) name the same settings, in the same order."""
    import dataclasses

    assert [field.name for field in dataclasses.fields(GatewayConfig)] == [option.name for option in OPTIONS]


def test_kg_environment_variables_are_read():
    config = build_config({}, {"KG_PORT": "9000", "KG_IP": "::1", "KG_MAX_KERNELS": "3",
                               "KG_LIST_KERNELS": "False", "KG_BASE_URL": "gw", "KG_ENV_PROCESS_WHITELIST": "A, B",
                               "KG_AUTH_TOKEN": "s3cr3t-value"})
    assert config.port == 9000 and config.max_kernels == 3 and config.list_kernels is False
    assert config.base_url == "/gw/" and config.env_process_whitelist == ("A", "B")
    assert config.endpoints == ("tcp:9000:interface=\\:\\:1",)
    assert config.auth_token == "s3cr3t-value" and "s3cr3t-value" not in repr(config)


def test_command_line_wins_over_environment():
    config = build_config({"port": "7000", "listen": ["unix:/tmp/x.sock"]}, {"KG_PORT": "9000"})
    assert config.port == 7000 and config.endpoints == ("unix:/tmp/x.sock",)


@pytest.mark.parametrize("cli,fragment", [
    ({"port": "eighty"}, "--port"),
    ({"port": "70000"}, "--port"),
    ({"max_kernels": "-1"}, "--max-kernels"),
    ({"list_kernels": "maybe"}, "--list-kernels"),
    ({"kernel_launch_timeout": "0"}, "--kernel-launch-timeout"),
    ({"base_url": "/a/../b"}, "--base-url"),
    ({"default_kernel_name": "bad name!"}, "--default-kernel-name"),
])
def test_bad_values_give_one_line(cli, fragment):
    with pytest.raises(ConfigError) as error:
        build_config(cli, {})
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match="KG_PORT"):
        build_config({}, {"KG_PORT": "x"})


def test_every_option_is_a_config_field():
    fields = set(GatewayConfig.__dataclass_fields__)
    assert {option.name for option in OPTIONS} == fields


def test_kernel_env_keeps_only_what_is_allowed():
    env = kernel_env(
        {"KERNEL_USERNAME": "bob", "SECRET": "x", "KERNEL_GATEWAY": "0", "ALLOWED": "yes", "KG_AUTH_TOKEN": "t"},
        {"PATH": "/usr/bin", "HOME": "/root", "LANG": "C", "KG_AUTH_TOKEN": "t"},
        process_whitelist=["LANG", "KG_AUTH_TOKEN"], client_whitelist=["ALLOWED", "KG_AUTH_TOKEN"])
    assert env == {"PATH": "/usr/bin", "LANG": "C", "KERNEL_USERNAME": "bob", "ALLOWED": "yes",
                   "KERNEL_GATEWAY": "1"}


@pytest.mark.parametrize("client_env", [
    {"KERNEL_X": 1}, {"KERNEL_X": None}, {"KERNEL_X": "a\x00b"}, {"KERNEL_X": "x" * 9000},
])
def test_hostile_kernel_values_are_refused(client_env):
    with pytest.raises(BadRequest):
        kernel_env(client_env, {})


def test_env_must_be_an_object():
    assert validate_client_env(None) == {}
    with pytest.raises(BadRequest):
        validate_client_env(["KERNEL_X=1"])


def test_launch_timeout_is_bounded():
    assert launch_timeout({}, 60) == 60
    assert launch_timeout({"KERNEL_LAUNCH_TIMEOUT": "40"}, 60) == 40
    assert launch_timeout({"KERNEL_LAUNCH_TIMEOUT": "100000"}, 60) == 600
    assert launch_timeout({"KERNEL_LAUNCH_TIMEOUT": "0.01"}, 60) == 1
    with pytest.raises(BadRequest):
        launch_timeout({"KERNEL_LAUNCH_TIMEOUT": "-5"}, 60)


def test_isoformat_always_has_microseconds_and_z():
    moment = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    assert isoformat(moment) == "2026-01-02T03:04:05.000000Z"
    datetime.datetime.strptime(isoformat(moment), "%Y-%m-%dT%H:%M:%S.%fZ")


def test_parse_kernel_frames_reads_only_headers():
    frames = [b"topic", b"<IDS|MSG>", b"sig", b'{"msg_id":"m","msg_type":"stream"}', b'{"msg_id":"p"}',
              b"{}", b"NOT JSON CONTENT IS NOT PARSED", b"buffer"]
    message = parse_kernel_frames("iopub", frames)
    assert (message.msg_id, message.msg_type, message.parent_id) == ("m", "stream", "p")
    assert message.parts[3:] == [b"NOT JSON CONTENT IS NOT PARSED", b"buffer"]


@pytest.mark.parametrize("frames", [
    [b"no delimiter"], [b"<IDS|MSG>", b"sig", b"{}"], [b"<IDS|MSG>", b"sig", b"[]", b"{}", b"{}", b"{}"],
    [b"<IDS|MSG>", b"sig", b"{bad", b"{}", b"{}", b"{}"],
])
def test_malformed_kernel_frames(frames):
    with pytest.raises(MalformedMessage):
        parse_kernel_frames("iopub", frames)


def test_status_parts_are_a_valid_message():
    import json

    header, parent, metadata, content = (json.loads(p) for p in status_parts("restarting", "s"))
    assert header["msg_type"] == "status" and content == {"execution_state": "restarting"}
