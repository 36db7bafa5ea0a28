"""The gateway's frozen configuration and the table of options that feeds it.

One table (:data:`OPTIONS`) names every option once: its command-line flag,
the environment variables it falls back to (jupyter-kernel-gateway's ``KG_*``
names first, so existing deployments move over unchanged), its default and the
parser that validates it.  ``tap`` builds its command line from the table,
``docs/options.md`` is checked against it by a test, and :func:`build_config`
turns raw strings into a :class:`GatewayConfig` or a one-line
:class:`ConfigError`.  Pure: no Twisted, no I/O.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence


class ConfigError(ValueError):
    """A bad option value; ``str()`` is the one line printed before exiting."""


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    return port


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"must not be negative: {number}")
    return number


def _optional_limit(value: str) -> int | None:
    """A limit where 0 or an empty string means "no limit"."""
    if value.strip() == "":
        return None
    number = _non_negative_int(value)
    return number or None


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(f"must be positive: {value}")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError(f"must not be negative: {value}")
    return number


def _csv(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _base_url(value: str) -> str:
    """Normalise to ``/`` or ``/prefix/`` so routes can be joined blindly."""
    stripped = value.strip().strip("/")
    if any(c in stripped for c in "?#\\ ") or ".." in stripped.split("/"):
        raise ValueError(f"not a URL path: {value!r}")
    return "/" + stripped + "/" if stripped else "/"


def _kernel_name(value: str) -> str:
    stripped = value.strip()
    if stripped and not all(c.isalnum() or c in "._-" for c in stripped):
        raise ValueError(f"not a kernel name: {value!r}")
    return stripped


def _text(value: str) -> str:
    return value


def _ip(value: str) -> str:
    """An IP address literal or ``localhost`` (``--ip``), so a typo is reported as one."""
    import ipaddress

    stripped = value.strip()
    if stripped == "localhost":
        return stripped
    try:
        return str(ipaddress.ip_address(stripped.strip("[]")))
    except ValueError:
        raise ValueError(f"not an IP address: {value!r}") from None


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        lowered = value.strip().lower()
        if lowered not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return lowered

    return parse


_PERSONALITIES = {"jupyter-websocket": "jupyter-websocket", "kernel_gateway.jupyter_websocket": "jupyter-websocket",
                  "notebook-http": "notebook-http", "kernel_gateway.notebook_http": "notebook-http"}


def _api(value: str) -> str:
    """The personality: the reference's module names and their short aliases."""
    try:
        return _PERSONALITIES[value.strip()]
    except KeyError:
        raise ValueError(f"unknown personality {value!r}; use jupyter-websocket or notebook-http") from None


def _cell_parser(value: str) -> str:
    if value.strip() not in ("", "kernel_gateway.notebook_http.cell.parser"):
        raise ValueError(f"{value!r} is not supported; only the default annotation parser "
                         "(kernel_gateway.notebook_http.cell.parser) is")
    return value.strip()


def _prefix(value: str) -> str:
    """``""`` (off) or ``/path`` without a trailing slash."""
    normalised = _base_url(value)
    return "" if normalised == "/" else normalised.rstrip("/")


def _file_mode(value: str) -> int:
    """An octal permission mode such as ``0600`` or ``660``."""
    mode = int(value.strip(), 8)
    if not 0 <= mode <= 0o777:
        raise ValueError(f"not a file mode: {value!r}")
    return mode


@dataclass(frozen=True)
class Option:
    """One configurable setting, described once for the CLI, env and docs."""

    name: str
    default: str
    parse: Callable[[str], Any]
    help: str
    env: tuple[str, ...] = ()
    repeatable: bool = False
    flag: bool = False

    @property
    def cli(self) -> str:
        return self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("ip", "127.0.0.1", _ip, "Address to listen on (ignored when --listen is given).", ("KG_IP",)),
    Option("port", "8888", _port, "Port to listen on (ignored when --listen is given).", ("KG_PORT",)),
    Option("listen", "", _text, "Twisted endpoint string to listen on, e.g. tcp:8888:interface=127.0.0.1, "
           "unix:/run/jkg.sock, ssl:8443:privateKey=key.pem:certKey=cert.pem, systemd:domain=INET:index=0. "
           "Repeatable; replaces --ip/--port.", ("JKG_LISTEN",), repeatable=True),
    Option("certfile", "", _text, "PEM certificate: serve HTTPS/WSS on --ip/--port.", ("KG_CERTFILE",)),
    Option("keyfile", "", _text, "PEM private key of --certfile (default: read from the certificate file).",
           ("KG_KEYFILE",)),
    Option("client_ca", "", _text, "PEM CA certificates: clients must present a certificate they signed "
           "(needs --certfile).", ("KG_CLIENT_CA",)),
    Option("base_url", "/", _base_url, "URL prefix of every route.", ("KG_BASE_URL",)),
    Option("auth_token", "", _text, "Token clients must present (Authorization: token T, Bearer T or ?token=T).",
           ("KG_AUTH_TOKEN",)),
    Option("auth_token_file", "", _text, "File holding the token (mode 0600), so that it need not sit in the "
           "command line or the environment; overrides --auth-token.", ("KG_AUTH_TOKEN_FILE", "JKG_AUTH_TOKEN_FILE")),
    Option("tenants", "", _text, "Tenants file (TOML) with per-tenant token hashes, passwords and quotas; "
           "reloaded on SIGHUP. Manage it with python -m jkg.tenants.", ("JKG_TENANTS",)),
    Option("allow_unauthenticated", "false", _flag, "Serve without any credentials on a non-loopback listener "
           "(refused otherwise).", ("JKG_ALLOW_UNAUTHENTICATED",), flag=True),
    Option("allow_origin", "", _text, "Access-Control-Allow-Origin value; * allows any origin.", ("KG_ALLOW_ORIGIN",)),
    Option("allow_headers", "authorization,content-type,x-xsrftoken", _text,
           "Access-Control-Allow-Headers value.", ("KG_ALLOW_HEADERS",)),
    Option("allow_methods", "GET,POST,PATCH,DELETE,OPTIONS", _text, "Access-Control-Allow-Methods value.",
           ("KG_ALLOW_METHODS",)),
    Option("allow_credentials", "", _text, "Access-Control-Allow-Credentials value.", ("KG_ALLOW_CREDENTIALS",)),
    Option("expose_headers", "", _text, "Access-Control-Expose-Headers value.", ("KG_EXPOSE_HEADERS",)),
    Option("max_age", "", _text, "Access-Control-Max-Age value.", ("KG_MAX_AGE",)),
    Option("max_kernels", "", _optional_limit, "Most kernels running at once (starts in flight count); "
           "empty or 0 means unlimited.", ("KG_MAX_KERNELS",)),
    Option("default_kernel_name", "", _kernel_name, "Kernelspec started when a request names none "
           "(default: jupyter_client's default, python3).", ("KG_DEFAULT_KERNEL_NAME",)),
    Option("force_kernel_name", "", _kernel_name, "Kernelspec started whatever a request names.",
           ("KG_FORCE_KERNEL_NAME",)),
    Option("list_kernels", "true", _flag, "Whether GET /api/kernels and /api/sessions list kernels "
           "(jupyter_server's gateway client needs it).", ("KG_LIST_KERNELS",)),
    Option("env_process_whitelist", "", _csv, "Comma-separated names of the gateway's own environment "
           "variables passed on to kernels.", ("KG_ENV_PROCESS_WHITELIST",)),
    Option("env_whitelist", "", _csv, "Comma-separated names of client-supplied environment variables "
           "(besides KERNEL_*) passed on to kernels.", ("KG_ENV_WHITELIST",)),
    Option("kernel_launch_timeout", "60", _positive_float, "Seconds a kernel may take to start and answer "
           "kernel_info; a request's KERNEL_LAUNCH_TIMEOUT may ask for less or more, up to 10x this.",
           ("JKG_KERNEL_LAUNCH_TIMEOUT", "KERNEL_LAUNCH_TIMEOUT")),
    Option("restart_limit", "5", _non_negative_int, "Automatic restarts of a crashed kernel in a row (until it "
           "stays up 10 s) before it is declared dead.", ("JKG_RESTART_LIMIT",)),
    Option("prespawn_count", "0", _non_negative_int, "Kernels of the default kernelspec kept started in a "
           "warm pool and handed out by POST /api/kernels.", ("KG_PRESPAWN_COUNT",)),
    Option("pool", "", _text, "Warm pool size for one kernelspec, NAME=COUNT (repeatable; env: comma-separated).",
           ("JKG_POOL",), repeatable=True),
    Option("seed_uri", "", _text, "Notebook (path or file:// URL) whose code cells every new kernel runs before "
           "it is handed out; with --api notebook-http, the notebook whose annotated cells are served.",
           ("KG_SEED_URI",)),
    Option("api", "jupyter-websocket", _api, "Personality: jupyter-websocket (the kernels REST and WebSocket "
           "API) or notebook-http (a notebook's annotated cells as HTTP endpoints); the reference's module "
           "names kernel_gateway.jupyter_websocket and kernel_gateway.notebook_http are accepted.", ("KG_API",)),
    Option("notebook_dir", "", _text, "notebook-http: serve every NAME.ipynb in this folder under /NAME "
           "(instead of --seed-uri).", ("JKG_NOTEBOOK_DIR",)),
    Option("allow_notebook_download", "false", _flag, "notebook-http: serve the notebook file at "
           "/_api/source.", ("KG_ALLOW_NOTEBOOK_DOWNLOAD",), flag=True),
    Option("static_path", "", _text, "notebook-http: serve the files of this folder at /public/ "
           "(without credentials, as the reference does).", ("KG_STATIC_PATH",)),
    Option("cell_parser", "", _cell_parser, "notebook-http: the annotation parser; only the reference's "
           "default (kernel_gateway.notebook_http.cell.parser) is supported.", ("KG_CELL_PARSER",)),
    Option("kernels_api_prefix", "", _prefix, "notebook-http: also serve the kernels API under this path "
           "prefix, e.g. /kernels (empty: not served).", ("JKG_KERNELS_API_PREFIX",)),
    Option("notebook_max_kernels", "4", _non_negative_int, "notebook-http: most kernels per notebook; the "
           "pool grows from --prespawn-count (at least 1) to this under load.", ("JKG_NOTEBOOK_MAX_KERNELS",)),
    Option("notebook_queue_limit", "100", _non_negative_int, "notebook-http: requests that may wait for a "
           "kernel per notebook; more get 503 with Retry-After.", ("JKG_NOTEBOOK_QUEUE_LIMIT",)),
    Option("notebook_queue_timeout", "30", _non_negative_float, "notebook-http: seconds a request may wait "
           "for a kernel before 503 with Retry-After (0: no limit).", ("JKG_NOTEBOOK_QUEUE_TIMEOUT",)),
    Option("request_timeout", "60", _non_negative_float, "notebook-http: seconds a request's cells may run; "
           "past it the client gets 504 and the kernel is interrupted (0: no limit).", ("JKG_REQUEST_TIMEOUT",)),
    Option("interrupt_grace", "5", _non_negative_float, "notebook-http: seconds an interrupted kernel has "
           "to become idle before it is shut down and replaced.", ("JKG_INTERRUPT_GRACE",)),
    Option("notebook_reload_interval", "2", _non_negative_float, "notebook-http: seconds between checks "
           "for changed notebook files, reloaded without a restart (0: never).",
           ("JKG_NOTEBOOK_RELOAD_INTERVAL",)),
    Option("notebook_idle_timeout", "300", _non_negative_float, "notebook-http: seconds after which a kernel "
           "above the pool's minimum that served nothing is shut down.", ("JKG_NOTEBOOK_IDLE_TIMEOUT",)),
    Option("cull_idle_timeout", "0", _non_negative_float, "Shut down kernels inactive for this many seconds "
           "(0 disables culling).", ("JKG_CULL_IDLE_TIMEOUT", "KG_CULL_IDLE_TIMEOUT")),
    Option("cull_interval", "300", _positive_float, "Seconds between culling checks.",
           ("JKG_CULL_INTERVAL", "KG_CULL_INTERVAL")),
    Option("cull_connected", "false", _flag, "Also cull idle kernels that have open WebSockets.",
           ("JKG_CULL_CONNECTED", "KG_CULL_CONNECTED"), flag=True),
    Option("cull_busy", "false", _flag, "Also cull kernels that are busy.", ("JKG_CULL_BUSY", "KG_CULL_BUSY"),
           flag=True),
    Option("state_db", "", _text, "SQLite file keeping kernel records (mode 0600: it holds signing keys); "
           "empty means jkg-state.sqlite in the Jupyter runtime directory, none disables it.", ("JKG_STATE_DB",)),
    Option("keep_kernels_on_exit", "false", _flag, "On SIGTERM leave kernels running; the next jkg with the "
           "same state database reattaches to them.", ("JKG_KEEP_KERNELS_ON_EXIT",), flag=True),
    Option("existing", "", _text, "Connection file of a kernel started outside jkg to serve (repeatable; env: "
           "comma-separated).", ("JKG_EXISTING",), repeatable=True),
    Option("existing_dir", "", _text, "Runtime directory whose kernel-*.json kernels are served as they appear "
           "and dropped when they die.", ("JKG_EXISTING_DIR",)),
    Option("own_existing", "false", _flag, "DELETE and gateway shutdown stop existing kernels instead of only "
           "detaching from them.", ("JKG_OWN_EXISTING",), flag=True),
    Option("sandbox", "auto", _choice("auto", "bwrap", "none"), "Kernel sandbox: bwrap (bubblewrap namespaces), "
           "none, or auto (bwrap where tenants or non-loopback listeners are configured; refuses to start there "
           "without one). See docs/isolation.md.", ("JKG_SANDBOX",)),
    Option("sandbox_network", "full", _choice("full", "loopback", "none"), "Network of sandboxed kernels: full "
           "(the host's), loopback (a private loopback only) or none; the tenants file can set it per tenant.",
           ("JKG_SANDBOX_NETWORK",)),
    Option("kernel_user", "nobody", _text, "User (NAME, UID or UID:GID) sandboxed kernels run as when jkg runs as "
           "root.", ("JKG_KERNEL_USER",)),
    Option("workspace_dir", "", _text, "Directory holding sandboxed kernels' workspaces; empty means "
           "jkg-workspaces in the Jupyter runtime directory.", ("JKG_WORKSPACE_DIR",)),
    Option("sandbox_expose", "", _csv, "Comma-separated host paths shown read-only inside sandboxes although "
           "they sit in a hidden directory (e.g. a virtualenv under /home).", ("JKG_SANDBOX_EXPOSE",)),
    Option("heartbeat_interval", "5", _non_negative_float, "Seconds between heartbeat pings to every kernel; "
           "three unanswered in a row mark it dead (0 disables).", ("JKG_HEARTBEAT_INTERVAL",)),
    Option("kernel_poll_interval", "1.0", _positive_float, "Seconds between checks that kernel processes "
           "are alive.", ("JKG_KERNEL_POLL_INTERVAL",)),
    Option("ws_ping_interval", "30", _non_negative_float, "Seconds between WebSocket pings (0 disables).",
           ("KG_WS_PING_INTERVAL_SECS",)),
    Option("ws_ping_timeout", "90", _non_negative_float, "Seconds without a pong before a WebSocket is "
           "dropped (0 disables).", ("JKG_WS_PING_TIMEOUT",)),
    Option("max_message_size", str(256 * 1024 * 1024), _non_negative_int, "Largest WebSocket message "
           "accepted from a client, in bytes.", ("JKG_MAX_MESSAGE_SIZE",)),
    Option("replay_buffer_limit", str(64 * 1024 * 1024), _non_negative_int, "Bytes of output kept for a "
           "disconnected session, replayed when it reconnects.", ("JKG_REPLAY_BUFFER_LIMIT",)),
    Option("client_buffer_limit", str(16 * 1024 * 1024), _non_negative_int, "Bytes that may wait to be sent to "
           "one WebSocket client; beyond that a client that stops reading is disconnected (code 4008) and its "
           "output kept for replay (0 means no limit).", ("JKG_CLIENT_BUFFER_LIMIT",)),
    Option("iopub_msg_rate_limit", "0", _non_negative_float, "IOPub messages per second a client may get, "
           "averaged over --rate-limit-window, as jupyter_server's (0 disables).",
           ("JKG_IOPUB_MSG_RATE_LIMIT", "KG_IOPUB_MSG_RATE_LIMIT")),
    Option("iopub_data_rate_limit", "0", _non_negative_float, "Bytes of stream output per second a client "
           "may get, averaged over --rate-limit-window, as jupyter_server's (0 disables).",
           ("JKG_IOPUB_DATA_RATE_LIMIT", "KG_IOPUB_DATA_RATE_LIMIT")),
    Option("rate_limit_window", "3", _positive_float, "Seconds over which the iopub rate limits are averaged.",
           ("JKG_RATE_LIMIT_WINDOW", "KG_RATE_LIMIT_WINDOW")),
    Option("metrics_public", "false", _flag, "Serve /metrics without credentials (otherwise it needs an admin "
           "tenant's, like the API).", ("JKG_METRICS_PUBLIC",), flag=True),
    Option("log_level", "info", _choice("debug", "info", "warn", "error", "critical"), "Least severe log "
           "level written: debug, info, warn, error or critical.", ("JKG_LOG_LEVEL",)),
    Option("log_format", "text", _choice("text", "json"), "text (twistd's lines) or json (one JSON object per "
           "line, for journald and log shippers).", ("JKG_LOG_FORMAT",)),
    Option("access_log", "", _text, "Write one line per HTTP request to this file (- for the gateway's log); "
           "tokens are never written.", ("JKG_ACCESS_LOG",)),
    Option("max_body_size", str(1024 * 1024), _non_negative_int, "Largest HTTP request body in bytes; a larger "
           "Content-Length or chunked body gets 413 before anything is read or authenticated.",
           ("JKG_MAX_BODY_SIZE",)),
    Option("header_timeout", "20", _positive_float, "Seconds a client may take to send a request's headers "
           "(and an idle kept-alive connection may wait for its next request) before it is disconnected.",
           ("JKG_HEADER_TIMEOUT",)),
    Option("max_http_connections", "", _optional_limit, "Most HTTP and WebSocket connections open at once; "
           "beyond it new connections get 503. Empty or 0 means half the descriptor limit.",
           ("JKG_MAX_HTTP_CONNECTIONS",)),
    Option("max_pending_per_address", "64", _non_negative_int, "Most connections from one client address that "
           "are still sending request headers; beyond it new connections from that address get 503 "
           "(0 means no limit).", ("JKG_MAX_PENDING_PER_ADDRESS",)),
    Option("password_hash_threads", "2", _non_negative_int, "Threads checking HTTP Basic passwords (bcrypt), "
           "apart from every other thread pool (0 means 1).", ("JKG_PASSWORD_HASH_THREADS",)),
    Option("password_checks_per_address", "4", _non_negative_int, "HTTP Basic password checks one client "
           "address may have in progress; more get 429 (0 means no limit).", ("JKG_PASSWORD_CHECKS_PER_ADDRESS",)),
    Option("password_checks_per_tenant", "8", _non_negative_int, "HTTP Basic password checks for one tenant "
           "name in progress at once; more get 429 (0 means no limit).", ("JKG_PASSWORD_CHECKS_PER_TENANT",)),
    Option("allowed_hosts", "localhost", _csv, "Host names accepted in the Host header without credentials and "
           "for the same-origin check (IP addresses are always accepted; * accepts any name).",
           ("JKG_ALLOWED_HOSTS",)),
    Option("unix_socket_mode", "0600", _file_mode, "Permissions of unix: listener sockets that do not set "
           "mode= themselves (octal).", ("JKG_UNIX_SOCKET_MODE",)),
    Option("max_sessions_per_tenant", "1000", _non_negative_int, "Sessions one tenant may have; more get 403 "
           "(0 means no limit).", ("JKG_MAX_SESSIONS_PER_TENANT",)),
    Option("log_max_files", "10", _non_negative_int, "Rotated twistd log files (--logfile) kept; older ones are "
           "deleted (0 keeps all).", ("JKG_LOG_MAX_FILES",)),
    Option("protocol_error_log_interval", "10", _positive_float, "Seconds over which malformed or badly signed "
           "kernel messages are counted into one log line per kernel.", ("JKG_PROTOCOL_ERROR_LOG_INTERVAL",)),
    # Engines driven by gateway_provisioners (see docs/engines.md): set once for the gateway.
    Option("docker_host", "", _text, "Docker engine for container kernelspecs (sets DOCKER_HOST), e.g. "
           "unix:///run/docker.sock.", ("JKG_DOCKER_HOST",)),
    Option("docker_network", "", _text, "Docker network container kernels join; the gateway must reach it "
           "(sets GP_DOCKER_NETWORK).", ("JKG_DOCKER_NETWORK", "GP_DOCKER_NETWORK")),
    Option("response_ip", "", _text, "Address remote kernel launchers send their connection info to; must be "
           "the gateway's address on the kernels' network (sets GP_RESPONSE_IP).",
           ("JKG_RESPONSE_IP", "GP_RESPONSE_IP")),
    Option("response_port", "8877", _port, "Port of the response address (sets GP_RESPONSE_PORT).",
           ("JKG_RESPONSE_PORT", "GP_RESPONSE_PORT")),
    Option("remote_hosts", "", _csv, "Comma-separated SSH hosts for the distributed provisioner "
           "(sets GP_REMOTE_HOSTS).", ("JKG_REMOTE_HOSTS", "GP_REMOTE_HOSTS")),
    Option("remote_user", "", _text, "SSH user for the distributed provisioner (sets GP_REMOTE_USER).",
           ("JKG_REMOTE_USER", "GP_REMOTE_USER")),
    Option("max_kernel_frame_size", "", _optional_limit, "Largest ZeroMQ frame accepted from a kernel, in bytes; "
           "a kernel sending a larger one has that connection dropped (empty: --max-kernel-message-size).",
           ("JKG_MAX_KERNEL_FRAME_SIZE",)),
    Option("max_kernel_message_size", "", _optional_limit, "Largest message (all frames) accepted from a kernel, "
           "in bytes; also what one kernel connection may hold while a message arrives (empty: "
           "--max-message-size).", ("JKG_MAX_KERNEL_MESSAGE_SIZE",)),
    Option("max_kernel_frames", "1024", _non_negative_int, "Most frames in one message from a kernel "
           "(0 means no limit).", ("JKG_MAX_KERNEL_FRAMES",)),
    Option("kernel_buffer_limit", str(64 * 1024 * 1024), _non_negative_int, "Bytes that may wait to be sent to "
           "one kernel socket (kernel not reading or not reachable yet); beyond it, messages are dropped and "
           "logged (0 means no limit).", ("JKG_KERNEL_BUFFER_LIMIT",)),
    Option("max_client_buffers", "1024", _non_negative_int, "Most binary buffers in one WebSocket message from a "
           "client (0 means no limit).", ("JKG_MAX_CLIENT_BUFFERS",)),
    Option("client_partial_limit", str(512 * 1024 * 1024), _non_negative_int, "Bytes of large WebSocket messages "
           "still arriving, over all clients; a frame that does not fit is refused (close 1009) "
           "(0 means no limit).", ("JKG_CLIENT_PARTIAL_LIMIT",)),
)

OPTIONS_BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}


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
    workspace_dir: str = ""
    sandbox_expose: tuple[str, ...] = ()
    heartbeat_interval: float = 5.0
    kernel_poll_interval: float = 1.0
    ws_ping_interval: float = 30.0
    ws_ping_timeout: float = 90.0
    max_message_size: int = 256 * 1024 * 1024
    replay_buffer_limit: int = 64 * 1024 * 1024
    client_buffer_limit: int = 16 * 1024 * 1024
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


_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback_endpoint(description: str) -> bool:
    """Whether a listener endpoint can only be reached from this machine.

    ``tcp``/``tcp6``/``ssl`` count as loopback only with an explicit
    ``interface=`` in 127.0.0.0/8 or ``::1``; UNIX sockets are local; anything
    else (``systemd:`` sockets, no interface, other addresses) is not.
    """
    import ipaddress

    kind, _, rest = description.partition(":")
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    fields = {}
    for item in rest.replace("\\:", "\0").split(":"):
        key, sep, value = item.partition("=")
        if sep:
            fields[key] = value.replace("\0", ":")
    interface = fields.get("interface", "")
    if interface in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def with_socket_mode(description: str, mode: int) -> str:
    """A ``unix:`` endpoint string with ``mode=`` set, unless it sets one already.

    Twisted creates UNIX sockets 0666 by default: any local user could
    connect, which matters most when no credentials are configured.
    """
    kind, _, rest = description.partition(":")
    if kind != "unix":
        return description
    keys = {item.partition("=")[0] for item in rest.replace("\\:", "\0").split(":")}
    if "mode" in keys:
        return description
    return f"{description}:mode={mode:o}"


def check_exposure(config: GatewayConfig, socket_is_loopback: Callable[[str], bool | None] = lambda d: None) -> None:
    """Refuse to serve anonymously beyond loopback unless explicitly asked to.

    :param socket_is_loopback: for an endpoint description, whether its
        already-open socket (one systemd passed) is bound to loopback; None
        when the description alone decides.
    """
    if config.has_credentials or config.allow_unauthenticated:
        return

    def loopback(description: str) -> bool:
        bound = socket_is_loopback(description)
        return is_loopback_endpoint(description) if bound is None else bound

    exposed = [e for e in config.endpoints if not loopback(e)]
    if exposed:
        raise ConfigError(f"refusing to serve without credentials on {exposed[0]} (not loopback): set "
                          "--auth-token or --tenants, or pass --allow-unauthenticated to accept the risk")


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
