"""The option table: every setting of the gateway named once.

One table (:data:`OPTIONS`) names every option: its command-line flag, the
environment variables it falls back to (jupyter-kernel-gateway's ``KG_*``
names first, so existing deployments move over unchanged), its default, its
help text and the parser that validates it.  ``tap`` builds its command line
from the table, ``docs/options.md`` is checked against it by a test, and
:func:`jkg.config.build_config` reads values through it.  Adding an option
means a row here, a field of :class:`jkg.config.GatewayConfig` and a row in
``docs/options.md``.  Pure: no Twisted, no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .event_loop import CHOICES as EVENT_LOOPS
from .option_parsers import (
    base_url,
    boolean,
    cell_parser,
    choice,
    comma_list,
    file_mode,
    ip_address,
    kernel_name,
    non_negative_float,
    non_negative_int,
    optional_limit,
    path_prefix,
    personality,
    port,
    positive_float,
    text,
)

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
    Option("ip", "127.0.0.1", ip_address, "Address to listen on (ignored when --listen is given).", ("KG_IP",)),
    Option("port", "8888", port, "Port to listen on (ignored when --listen is given).", ("KG_PORT",)),
    Option("listen", "", text, "Twisted endpoint string to listen on, e.g. tcp:8888:interface=127.0.0.1, "
           "unix:/run/jkg.sock, ssl:8443:privateKey=key.pem:certKey=cert.pem, systemd:domain=INET:index=0. "
           "Repeatable; replaces --ip/--port.", ("JKG_LISTEN",), repeatable=True),
    Option("certfile", "", text, "PEM certificate: serve HTTPS/WSS on --ip/--port.", ("KG_CERTFILE",)),
    Option("keyfile", "", text, "PEM private key of --certfile (default: read from the certificate file).",
           ("KG_KEYFILE",)),
    Option("client_ca", "", text, "PEM CA certificates: clients must present a certificate they signed "
           "(needs --certfile).", ("KG_CLIENT_CA",)),
    Option("base_url", "/", base_url, "URL prefix of every route.", ("KG_BASE_URL",)),
    Option("auth_token", "", text, "Token clients must present (Authorization: token T, Bearer T or ?token=T).",
           ("KG_AUTH_TOKEN",)),
    Option("auth_token_file", "", text, "File holding the token (mode 0600), so that it need not sit in the "
           "command line or the environment; overrides --auth-token.", ("KG_AUTH_TOKEN_FILE", "JKG_AUTH_TOKEN_FILE")),
    Option("tenants", "", text, "Tenants file (TOML) with per-tenant token hashes, passwords and quotas; "
           "reloaded on SIGHUP. Manage it with python -m jkg.tenants.", ("JKG_TENANTS",)),
    Option("allow_unauthenticated", "false", boolean, "Serve without any credentials on a non-loopback listener "
           "(refused otherwise).", ("JKG_ALLOW_UNAUTHENTICATED",), flag=True),
    Option("allow_origin", "", text, "Access-Control-Allow-Origin value; * allows any origin.", ("KG_ALLOW_ORIGIN",)),
    Option("allow_headers", "authorization,content-type,x-xsrftoken", text,
           "Access-Control-Allow-Headers value.", ("KG_ALLOW_HEADERS",)),
    Option("allow_methods", "GET,POST,PATCH,DELETE,OPTIONS", text, "Access-Control-Allow-Methods value.",
           ("KG_ALLOW_METHODS",)),
    Option("allow_credentials", "", text, "Access-Control-Allow-Credentials value.", ("KG_ALLOW_CREDENTIALS",)),
    Option("expose_headers", "", text, "Access-Control-Expose-Headers value.", ("KG_EXPOSE_HEADERS",)),
    Option("max_age", "", text, "Access-Control-Max-Age value.", ("KG_MAX_AGE",)),
    Option("max_kernels", "", optional_limit, "Most kernels running at once (starts in flight count); "
           "empty or 0 means unlimited.", ("KG_MAX_KERNELS",)),
    Option("default_kernel_name", "", kernel_name, "Kernelspec started when a request names none "
           "(default: jupyter_client's default, python3).", ("KG_DEFAULT_KERNEL_NAME",)),
    Option("force_kernel_name", "", kernel_name, "Kernelspec started whatever a request names.",
           ("KG_FORCE_KERNEL_NAME",)),
    Option("list_kernels", "true", boolean, "Whether GET /api/kernels and /api/sessions list kernels "
           "(jupyter_server's gateway client needs it).", ("KG_LIST_KERNELS",)),
    Option("env_process_whitelist", "", comma_list, "Comma-separated names of the gateway's own environment "
           "variables passed on to kernels.", ("KG_ENV_PROCESS_WHITELIST",)),
    Option("env_whitelist", "", comma_list, "Comma-separated names of client-supplied environment variables "
           "(besides KERNEL_*) passed on to kernels.", ("KG_ENV_WHITELIST",)),
    Option("kernel_launch_timeout", "60", positive_float, "Seconds a kernel may take to start and answer "
           "kernel_info; a request's KERNEL_LAUNCH_TIMEOUT may ask for less or more, up to 10x this.",
           ("JKG_KERNEL_LAUNCH_TIMEOUT", "KERNEL_LAUNCH_TIMEOUT")),
    Option("restart_limit", "5", non_negative_int, "Automatic restarts of a crashed kernel in a row (until it "
           "stays up 10 s) before it is declared dead.", ("JKG_RESTART_LIMIT",)),
    Option("prespawn_count", "0", non_negative_int, "Kernels of the default kernelspec kept started in a "
           "warm pool and handed out by POST /api/kernels.", ("KG_PRESPAWN_COUNT",)),
    Option("pool", "", text, "Warm pool size for one kernelspec, NAME=COUNT (repeatable; env: comma-separated).",
           ("JKG_POOL",), repeatable=True),
    Option("seed_uri", "", text, "Notebook (path or file:// URL) whose code cells every new kernel runs before "
           "it is handed out; with --api notebook-http, the notebook whose annotated cells are served.",
           ("KG_SEED_URI",)),
    Option("api", "jupyter-websocket", personality, "Personality: jupyter-websocket (the kernels REST and WebSocket "
           "API) or notebook-http (a notebook's annotated cells as HTTP endpoints); the reference's module "
           "names kernel_gateway.jupyter_websocket and kernel_gateway.notebook_http are accepted.", ("KG_API",)),
    Option("notebook_dir", "", text, "notebook-http: serve every NAME.ipynb in this folder under /NAME "
           "(instead of --seed-uri).", ("JKG_NOTEBOOK_DIR",)),
    Option("allow_notebook_download", "false", boolean, "notebook-http: serve the notebook file at "
           "/_api/source.", ("KG_ALLOW_NOTEBOOK_DOWNLOAD",), flag=True),
    Option("static_path", "", text, "notebook-http: serve the files of this folder at /public/ "
           "(without credentials, as the reference does).", ("KG_STATIC_PATH",)),
    Option("cell_parser", "", cell_parser, "notebook-http: the annotation parser, by the reference's module "
           "name: kernel_gateway.notebook_http.cell.parser (# GET /path, the default) or "
           "kernel_gateway.notebook_http.swagger.parser (a Swagger document and # operationId: ID cells).",
           ("KG_CELL_PARSER",)),
    Option("kernels_api_prefix", "", path_prefix, "notebook-http: also serve the kernels API under this path "
           "prefix, e.g. /kernels (empty: not served).", ("JKG_KERNELS_API_PREFIX",)),
    Option("notebook_max_kernels", "4", non_negative_int, "notebook-http: most kernels per notebook; the "
           "pool grows from --prespawn-count (at least 1) to this under load.", ("JKG_NOTEBOOK_MAX_KERNELS",)),
    Option("notebook_queue_limit", "100", non_negative_int, "notebook-http: requests that may wait for a "
           "kernel per notebook; more get 503 with Retry-After.", ("JKG_NOTEBOOK_QUEUE_LIMIT",)),
    Option("notebook_queue_timeout", "30", non_negative_float, "notebook-http: seconds a request may wait "
           "for a kernel before 503 with Retry-After (0: no limit).", ("JKG_NOTEBOOK_QUEUE_TIMEOUT",)),
    Option("request_timeout", "60", non_negative_float, "notebook-http: seconds a request's cells may run; "
           "past it the client gets 504 and the kernel is interrupted (0: no limit).", ("JKG_REQUEST_TIMEOUT",)),
    Option("interrupt_grace", "5", non_negative_float, "notebook-http: seconds an interrupted kernel has "
           "to become idle before it is shut down and replaced.", ("JKG_INTERRUPT_GRACE",)),
    Option("notebook_reload_interval", "2", non_negative_float, "notebook-http: seconds between checks "
           "for changed notebook files, reloaded without a restart (0: never).",
           ("JKG_NOTEBOOK_RELOAD_INTERVAL",)),
    Option("notebook_idle_timeout", "300", non_negative_float, "notebook-http: seconds after which a kernel "
           "above the pool's minimum that served nothing is shut down.", ("JKG_NOTEBOOK_IDLE_TIMEOUT",)),
    Option("cull_idle_timeout", "0", non_negative_float, "Shut down kernels inactive for this many seconds "
           "(0 disables culling).", ("JKG_CULL_IDLE_TIMEOUT", "KG_CULL_IDLE_TIMEOUT")),
    Option("cull_interval", "300", positive_float, "Seconds between culling checks.",
           ("JKG_CULL_INTERVAL", "KG_CULL_INTERVAL")),
    Option("cull_connected", "false", boolean, "Also cull idle kernels that have open WebSockets.",
           ("JKG_CULL_CONNECTED", "KG_CULL_CONNECTED"), flag=True),
    Option("cull_busy", "false", boolean, "Also cull kernels that are busy.", ("JKG_CULL_BUSY", "KG_CULL_BUSY"),
           flag=True),
    Option("state_db", "", text, "SQLite file keeping kernel records (mode 0600: it holds signing keys); "
           "empty means jkg-state.sqlite in the Jupyter runtime directory, none disables it.", ("JKG_STATE_DB",)),
    Option("keep_kernels_on_exit", "false", boolean, "On SIGTERM leave kernels running; the next jkg with the "
           "same state database reattaches to them.", ("JKG_KEEP_KERNELS_ON_EXIT",), flag=True),
    Option("existing", "", text, "Connection file of a kernel started outside jkg to serve (repeatable; env: "
           "comma-separated).", ("JKG_EXISTING",), repeatable=True),
    Option("existing_dir", "", text, "Runtime directory whose kernel-*.json kernels are served as they appear "
           "and dropped when they die.", ("JKG_EXISTING_DIR",)),
    Option("own_existing", "false", boolean, "DELETE and gateway shutdown stop existing kernels instead of only "
           "detaching from them.", ("JKG_OWN_EXISTING",), flag=True),
    Option("sandbox", "auto", choice("auto", "bwrap", "none"), "Kernel sandbox: bwrap (bubblewrap namespaces), "
           "none, or auto (bwrap where tenants or non-loopback listeners are configured; refuses to start there "
           "without one). See docs/isolation.md.", ("JKG_SANDBOX",)),
    Option("sandbox_network", "full", choice("full", "loopback", "none"), "Network of sandboxed kernels: full "
           "(the host's), loopback (a private loopback only) or none; the tenants file can set it per tenant.",
           ("JKG_SANDBOX_NETWORK",)),
    Option("kernel_user", "nobody", text, "User (NAME, UID or UID:GID) sandboxed kernels run as when jkg runs as "
           "root.", ("JKG_KERNEL_USER",)),
    Option("kernel_uid_range", "", text, "FIRST-LAST: when jkg runs as root, each tenant's kernels run as a uid "
           "(and gid) of their own from this range, derived from the tenant's name; a tenant's uid in the "
           "tenants file wins. Empty: every kernel runs as --kernel-user.", ("JKG_KERNEL_UID_RANGE",)),
    Option("workspace_dir", "", text, "Directory holding sandboxed kernels' workspaces; empty means "
           "jkg-workspaces in the Jupyter runtime directory.", ("JKG_WORKSPACE_DIR",)),
    Option("sandbox_expose", "", comma_list, "Comma-separated host paths shown read-only inside sandboxes although "
           "they sit in a hidden directory (e.g. a virtualenv under /home).", ("JKG_SANDBOX_EXPOSE",)),
    Option("heartbeat_interval", "5", non_negative_float, "Seconds between heartbeat pings to every kernel; "
           "three unanswered in a row mark it dead (0 disables).", ("JKG_HEARTBEAT_INTERVAL",)),
    Option("kernel_poll_interval", "1.0", positive_float, "Seconds between checks that kernel processes "
           "are alive.", ("JKG_KERNEL_POLL_INTERVAL",)),
    Option("ws_ping_interval", "30", non_negative_float, "Seconds between WebSocket pings (0 disables).",
           ("KG_WS_PING_INTERVAL_SECS",)),
    Option("ws_ping_timeout", "90", non_negative_float, "Seconds without a pong before a WebSocket is "
           "dropped (0 disables).", ("JKG_WS_PING_TIMEOUT",)),
    Option("max_message_size", str(256 * 1024 * 1024), non_negative_int, "Largest WebSocket message "
           "accepted from a client, in bytes.", ("JKG_MAX_MESSAGE_SIZE",)),
    Option("replay_buffer_limit", str(64 * 1024 * 1024), non_negative_int, "Bytes of output kept for a "
           "disconnected session, replayed when it reconnects.", ("JKG_REPLAY_BUFFER_LIMIT",)),
    Option("client_buffer_limit", str(16 * 1024 * 1024), non_negative_int, "Bytes that may wait to be sent to "
           "one WebSocket client; beyond that a client that stops reading is disconnected (code 4008) and its "
           "output kept for replay (0 means no limit).", ("JKG_CLIENT_BUFFER_LIMIT",)),
    Option("iopub_batch_ms", "0", non_negative_int, "Milliseconds a kernel's iopub is left unread after each "
           "read while an execution streams output (32 outputs in a row), to read and send it in batches "
           "(0, the default: never).", ("JKG_IOPUB_BATCH_MS",)),
    Option("event_loop", "auto", choice(*EVENT_LOOPS), "The asyncio event loop the reactor runs "
           "on: uvloop (compiled; less CPU per message), asyncio (the standard library's), or auto (uvloop when "
           "installed). Applies when jkg installs the reactor, not under twistd --reactor.", ("JKG_EVENT_LOOP",)),
    Option("iopub_msg_rate_limit", "0", non_negative_float, "IOPub messages per second a client may get, "
           "averaged over --rate-limit-window, as jupyter_server's (0 disables).",
           ("JKG_IOPUB_MSG_RATE_LIMIT", "KG_IOPUB_MSG_RATE_LIMIT")),
    Option("iopub_data_rate_limit", "0", non_negative_float, "Bytes of stream output per second a client "
           "may get, averaged over --rate-limit-window, as jupyter_server's (0 disables).",
           ("JKG_IOPUB_DATA_RATE_LIMIT", "KG_IOPUB_DATA_RATE_LIMIT")),
    Option("rate_limit_window", "3", positive_float, "Seconds over which the iopub rate limits are averaged.",
           ("JKG_RATE_LIMIT_WINDOW", "KG_RATE_LIMIT_WINDOW")),
    Option("metrics_public", "false", boolean, "Serve /metrics without credentials (otherwise it needs an admin "
           "tenant's, like the API).", ("JKG_METRICS_PUBLIC",), flag=True),
    Option("log_level", "info", choice("debug", "info", "warn", "error", "critical"), "Least severe log "
           "level written: debug, info, warn, error or critical.", ("JKG_LOG_LEVEL",)),
    Option("log_format", "text", choice("text", "json"), "text (twistd's lines) or json (one JSON object per "
           "line, for journald and log shippers).", ("JKG_LOG_FORMAT",)),
    Option("access_log", "", text, "Write one line per HTTP request to this file (- for the gateway's log); "
           "tokens are never written.", ("JKG_ACCESS_LOG",)),
    Option("max_body_size", str(1024 * 1024), non_negative_int, "Largest HTTP request body in bytes; a larger "
           "Content-Length or chunked body gets 413 before anything is read or authenticated.",
           ("JKG_MAX_BODY_SIZE",)),
    Option("header_timeout", "20", positive_float, "Seconds a client may take to send a request's headers "
           "(and an idle kept-alive connection may wait for its next request) before it is disconnected.",
           ("JKG_HEADER_TIMEOUT",)),
    Option("max_http_connections", "", optional_limit, "Most HTTP and WebSocket connections open at once; "
           "beyond it new connections get 503. Empty or 0 means half the descriptor limit.",
           ("JKG_MAX_HTTP_CONNECTIONS",)),
    Option("max_pending_per_address", "64", non_negative_int, "Most connections from one client address that "
           "are still sending request headers; beyond it new connections from that address get 503 "
           "(0 means no limit).", ("JKG_MAX_PENDING_PER_ADDRESS",)),
    Option("password_hash_threads", "2", non_negative_int, "Threads checking HTTP Basic passwords (bcrypt), "
           "apart from every other thread pool (0 means 1).", ("JKG_PASSWORD_HASH_THREADS",)),
    Option("password_checks_per_address", "4", non_negative_int, "HTTP Basic password checks one client "
           "address may have in progress; more get 429 (0 means no limit).", ("JKG_PASSWORD_CHECKS_PER_ADDRESS",)),
    Option("password_checks_per_tenant", "8", non_negative_int, "HTTP Basic password checks for one tenant "
           "name in progress at once; more get 429 (0 means no limit).", ("JKG_PASSWORD_CHECKS_PER_TENANT",)),
    Option("allowed_hosts", "localhost", comma_list, "Host names accepted in the Host header without credentials and "
           "for the same-origin check (IP addresses are always accepted; * accepts any name).",
           ("JKG_ALLOWED_HOSTS",)),
    Option("unix_socket_mode", "0600", file_mode, "Permissions of unix: listener sockets that do not set "
           "mode= themselves (octal).", ("JKG_UNIX_SOCKET_MODE",)),
    Option("max_sessions_per_tenant", "1000", non_negative_int, "Sessions one tenant may have; more get 403 "
           "(0 means no limit).", ("JKG_MAX_SESSIONS_PER_TENANT",)),
    Option("log_max_files", "10", non_negative_int, "Rotated twistd log files (--logfile) kept; older ones are "
           "deleted (0 keeps all).", ("JKG_LOG_MAX_FILES",)),
    Option("protocol_error_log_interval", "10", positive_float, "Seconds over which malformed or badly signed "
           "kernel messages are counted into one log line per kernel.", ("JKG_PROTOCOL_ERROR_LOG_INTERVAL",)),
    # Engines driven by gateway_provisioners (see docs/engines.md): set once for the gateway.
    Option("docker_host", "", text, "Docker engine for container kernelspecs (sets DOCKER_HOST), e.g. "
           "unix:///run/docker.sock.", ("JKG_DOCKER_HOST",)),
    Option("docker_network", "", text, "Docker network container kernels join; the gateway must reach it "
           "(sets GP_DOCKER_NETWORK).", ("JKG_DOCKER_NETWORK", "GP_DOCKER_NETWORK")),
    Option("response_ip", "", text, "Address remote kernel launchers send their connection info to; must be "
           "the gateway's address on the kernels' network (sets GP_RESPONSE_IP).",
           ("JKG_RESPONSE_IP", "GP_RESPONSE_IP")),
    Option("response_port", "8877", port, "Port of the response address (sets GP_RESPONSE_PORT).",
           ("JKG_RESPONSE_PORT", "GP_RESPONSE_PORT")),
    Option("remote_hosts", "", comma_list, "Comma-separated SSH hosts for the distributed provisioner "
           "(sets GP_REMOTE_HOSTS).", ("JKG_REMOTE_HOSTS", "GP_REMOTE_HOSTS")),
    Option("remote_user", "", text, "SSH user for the distributed provisioner (sets GP_REMOTE_USER).",
           ("JKG_REMOTE_USER", "GP_REMOTE_USER")),
    Option("max_kernel_frame_size", "", optional_limit, "Largest ZeroMQ frame accepted from a kernel, in bytes; "
           "a kernel sending a larger one has that connection dropped (empty: --max-kernel-message-size).",
           ("JKG_MAX_KERNEL_FRAME_SIZE",)),
    Option("max_kernel_message_size", "", optional_limit, "Largest message (all frames) accepted from a kernel, "
           "in bytes; also what one kernel connection may hold while a message arrives (empty: "
           "--max-message-size).", ("JKG_MAX_KERNEL_MESSAGE_SIZE",)),
    Option("max_kernel_frames", "1024", non_negative_int, "Most frames in one message from a kernel "
           "(0 means no limit).", ("JKG_MAX_KERNEL_FRAMES",)),
    Option("kernel_buffer_limit", str(64 * 1024 * 1024), non_negative_int, "Bytes that may wait to be sent to "
           "one kernel socket (kernel not reading or not reachable yet); beyond it, messages are dropped and "
           "logged (0 means no limit).", ("JKG_KERNEL_BUFFER_LIMIT",)),
    Option("max_client_buffers", "1024", non_negative_int, "Most binary buffers in one WebSocket message from a "
           "client (0 means no limit).", ("JKG_MAX_CLIENT_BUFFERS",)),
    Option("client_partial_limit", str(512 * 1024 * 1024), non_negative_int, "Bytes of large WebSocket messages "
           "still arriving, over all clients; a frame that does not fit is refused (close 1009) "
           "(0 means no limit).", ("JKG_CLIENT_PARTIAL_LIMIT",)),
)
