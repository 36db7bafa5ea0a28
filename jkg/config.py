"""The gateway's resolved configuration: one frozen value built from the option table.

:func:`build_config` merges the command line over the environment over the
defaults of :data:`jkg.options.OPTIONS`, parsing each value with its parser
(:mod:`jkg.option_parsers`), and checks the rules that span several options
(``--keyfile`` needs ``--certfile``, notebook-http needs a notebook).  The
result is a :class:`GatewayConfig` -- the one object the service tree reads
settings from, also built directly by embedders -- or a one-line
:class:`ConfigError`.  Checks against the world (files, kernelspecs,
sockets) are :mod:`jkg.preflight`'s.  Pure: no Twisted, no I/O.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .endpoints import with_socket_mode
from .options import OPTIONS, Option


class ConfigError(ValueError):
    """A bad option value; ``str()`` is the one line printed before exiting."""


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the service tree needs, validated and immutable."""

    ip: str = "127.0.0.1"
    port: int = 8888
    listen: tuple[str, ...] = ()
    certfile: str = ""
    keyfile: str = ""
    client_ca: str = ""
    base_url: str = "/"
    auth_token: str = field(default="", repr=False)
    auth_token_file: str = ""
    tenants: str = ""
    allow_unauthenticated: bool = False
    allow_origin: str = ""
    allow_headers: str = "authorization,content-type,x-xsrftoken"
    allow_methods: str = "GET,POST,PATCH,DELETE,OPTIONS"
    allow_credentials: str = ""
    expose_headers: str = ""
    max_age: str = ""
    max_kernels: int | None = None
    default_kernel_name: str = ""
    force_kernel_name: str = ""
    list_kernels: bool = True
    env_process_whitelist: tuple[str, ...] = ()
    env_whitelist: tuple[str, ...] = ()
    kernel_launch_timeout: float = 60.0
    restart_limit: int = 5
    prespawn_count: int = 0
    pool: tuple[str, ...] = ()
    seed_uri: str = ""
    api: str = "jupyter-websocket"
    notebook_dir: str = ""
    allow_notebook_download: bool = False
    static_path: str = ""
    cell_parser: str = ""
    kernels_api_prefix: str = ""
    notebook_max_kernels: int = 4
    notebook_queue_limit: int = 100
    notebook_queue_timeout: float = 30.0
    request_timeout: float = 60.0
    interrupt_grace: float = 5.0
    notebook_reload_interval: float = 2.0
    notebook_idle_timeout: float = 300.0
    cull_idle_timeout: float = 0.0
    cull_interval: float = 300.0
    cull_connected: bool = False
    cull_busy: bool = False
    state_db: str = ""
    keep_kernels_on_exit: bool = False
    existing: tuple[str, ...] = ()
    existing_dir: str = ""
    own_existing: bool = False
    sandbox: str = "auto"
    sandbox_network: str = "full"
    kernel_user: str = "nobody"
    kernel_uid_range: str = ""
    workspace_dir: str = ""
    sandbox_expose: tuple[str, ...] = ()
    heartbeat_interval: float = 5.0
    kernel_poll_interval: float = 1.0
    ws_ping_interval: float = 30.0
    ws_ping_timeout: float = 90.0
    max_message_size: int = 256 * 1024 * 1024
    replay_buffer_limit: int = 64 * 1024 * 1024
    client_buffer_limit: int = 16 * 1024 * 1024
    iopub_batch_ms: int = 0
    event_loop: str = "auto"
    iopub_msg_rate_limit: float = 0.0
    iopub_data_rate_limit: float = 0.0
    rate_limit_window: float = 3.0
    metrics_public: bool = False
    log_level: str = "info"
    log_format: str = "text"
    access_log: str = ""
    max_body_size: int = 1024 * 1024
    header_timeout: float = 20.0
    max_http_connections: int | None = None
    max_pending_per_address: int = 64
    password_hash_threads: int = 2
    password_checks_per_address: int = 4
    password_checks_per_tenant: int = 8
    allowed_hosts: tuple[str, ...] = ("localhost",)
    unix_socket_mode: int = 0o600
    max_sessions_per_tenant: int = 1000
    log_max_files: int = 10
    protocol_error_log_interval: float = 10.0
    docker_host: str = ""
    docker_network: str = ""
    response_ip: str = ""
    response_port: int = 8877
    remote_hosts: tuple[str, ...] = ()
    remote_user: str = ""
    max_kernel_frame_size: int | None = None
    max_kernel_message_size: int | None = None
    max_kernel_frames: int = 1024
    kernel_buffer_limit: int = 64 * 1024 * 1024
    max_client_buffers: int = 1024
    client_partial_limit: int = 512 * 1024 * 1024

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The listener endpoint strings: ``--listen`` or else ``--ip``/``--port``."""
        if self.listen:
            return self.listen
        interface = self.ip.replace(":", "\\:")
        kind = "ssl" if self.certfile else "tcp"
        return (f"{kind}:{self.port}:interface={interface}",)

    @property
    def listen_endpoints(self) -> tuple[str, ...]:
        """:attr:`endpoints` with ``mode=`` added to ``unix:`` ones that do not set it."""
        return tuple(with_socket_mode(e, self.unix_socket_mode) for e in self.endpoints)

    @property
    def kernel_read_limits(self) -> tuple[int, int, int, int]:
        """``(largest frame, largest message, most frames, send buffer)`` of a kernel connection."""
        unlimited = 1 << 34
        tied = self.max_message_size or unlimited
        message = self.max_kernel_message_size or tied
        return (self.max_kernel_frame_size or message, message, self.max_kernel_frames or unlimited,
                self.kernel_buffer_limit or unlimited)

    @property
    def has_credentials(self) -> bool:
        return bool(self.auth_token or self.auth_token_file or self.tenants)

    def replace(self, **changes: Any) -> "GatewayConfig":
        return dataclasses.replace(self, **changes)


def build_config(cli: Mapping[str, Any], environ: Mapping[str, str]) -> GatewayConfig:
    """Merge command-line values over environment over defaults, validating each.

    :param cli: option name to the raw string the user typed (or a list of
        strings for repeatable options); absent or ``None`` means not given.
    :param environ: the process environment.
    :raises ConfigError: naming the option and the problem, in one line.
    """
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw = cli.get(option.name)
        source = f"--{option.cli}"
        if raw in (None, [], ()):
            raw = None
            for env_name in option.env:
                if env_name in environ:
                    raw, source = environ[env_name], env_name
                    break
        if option.repeatable:
            if isinstance(raw, str) and source != f"--{option.cli}" and option.name != "listen":
                raw = [item.strip() for item in raw.split(",")]  # NAME=1,OTHER=2 from the environment
            items: Sequence[str] = [raw] if isinstance(raw, str) else list(raw or [])
            items = [item for item in items if item]
            values[option.name] = tuple(_parse(option, item, source) for item in items)
        else:
            values[option.name] = _parse(option, option.default if raw is None else raw, source)
    config = GatewayConfig(**values)
    if (config.keyfile or config.client_ca) and not config.certfile:
        raise ConfigError("--keyfile and --client-ca need --certfile (KG_CERTFILE)")
    if config.certfile and config.listen:
        raise ConfigError("--certfile applies to --ip/--port; with --listen, use an "
                          "ssl:PORT:privateKey=KEY:certKey=CERT endpoint instead")
    _check_personality(config)
    return config


def _check_personality(config: GatewayConfig) -> None:
    if config.api != "notebook-http":
        return
    if not config.seed_uri and not config.notebook_dir:
        raise ConfigError("--api notebook-http needs a notebook: set --seed-uri (KG_SEED_URI) or --notebook-dir")
    if config.seed_uri and config.notebook_dir:
        raise ConfigError("--seed-uri and --notebook-dir both name notebooks to serve; give one of them")
    if config.keep_kernels_on_exit:
        raise ConfigError("--keep-kernels-on-exit does not apply to --api notebook-http: its kernels hold a "
                          "notebook's state and are started afresh with the gateway")
    if config.notebook_max_kernels and config.notebook_max_kernels < max(1, config.prespawn_count):
        raise ConfigError(f"--notebook-max-kernels ({config.notebook_max_kernels}) is below --prespawn-count "
                          f"({config.prespawn_count})")


def _parse(option: Option, raw: str, source: str) -> Any:
    try:
        return option.parse(raw)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"invalid value for {source}: {error}") from None
