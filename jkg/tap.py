"""``twistd jkg``: command-line options to a running gateway service.

Options come from :data:`jkg.options.OPTIONS`, with jupyter-kernel-gateway's
``KG_*`` environment variables as fallback.  The asyncio reactor is installed
here when twistd has not installed one yet (the plugin file and ``jkg``'s
``__init__`` import nothing that would install the default reactor first).
"""
from __future__ import annotations

import os
import sys

from twisted.python import usage

from .config import ConfigError, build_config
from .options import OPTIONS


class Options(usage.Options):
    """twistd jkg [options]; every option also reads its environment variable."""

    optParameters = [
        [option.cli, None, None, f"{option.help} [env: {', '.join(option.env) or '-'}; "
                                 f"default: {option.default or 'none'}]"]
        for option in OPTIONS if not option.repeatable and not option.flag
    ]
    optFlags = [[option.cli, None, f"{option.help} [env: {', '.join(option.env)}]"]
                for option in OPTIONS if option.flag]

    def __init__(self):
        super().__init__()
        self["listen"] = []
        self["pool"] = []
        self["existing"] = []

    def opt_listen(self, endpoint):
        """Twisted endpoint string to listen on (repeatable), e.g. tcp:8888:interface=127.0.0.1"""
        self["listen"].append(endpoint)

    def opt_existing(self, path):
        """Connection file of a kernel started outside jkg to serve (repeatable) [env: JKG_EXISTING]"""
        self["existing"].append(path)

    def opt_pool(self, entry):
        """Warm pool size for one kernelspec, NAME=COUNT (repeatable) [env: JKG_POOL, comma-separated]"""
        self["pool"].append(entry)

    def parseOptions(self, options=None):  # noqa: N802 - Twisted API
        """A mistyped flag gets one line, not twistd's whole usage text."""
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            _fail(f"{error} (twistd jkg --help lists the options)")

    def opt_version(self):
        from . import __version__

        print(f"jkg {__version__}")
        sys.exit(0)


def _fail(message: str) -> "NoReturn":  # noqa: F821
    sys.stderr.write(f"jkg: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(2)


def _one_line_errors(hook=sys.excepthook):
    """Print startup errors (a busy port, a bad endpoint) as one line, not a traceback."""
    from .service import ListenError

    def excepthook(kind, value, traceback):
        if isinstance(value, ListenError):
            sys.stderr.write(f"jkg: error: {value}\n")
        else:
            hook(kind, value, traceback)

    sys.excepthook = excepthook


def install_asyncio_reactor(event_loop: str = "auto"):
    """Return the asyncio reactor, installing it on an ``event_loop`` loop if no reactor is installed yet."""
    if "twisted.internet.reactor" not in sys.modules:
        import asyncio

        from twisted.internet import asyncioreactor

        from .event_loop import EventLoopError, new_loop, resolve

        try:
            loop = new_loop(resolve(event_loop))
        except EventLoopError as error:
            _fail(str(error))
        asyncio.set_event_loop(loop)  # what asyncio-based libraries find before the reactor runs
        asyncioreactor.install(loop)
    from twisted.internet import reactor
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        _fail(f"jkg needs the asyncio reactor but {type(reactor).__name__} is installed; "
              "use twistd --reactor=asyncio (or no --reactor)")
    return reactor


def makeService(options):  # noqa: N802 - twistd API
    """The gateway service for parsed :class:`Options`.

    ``options.parent`` (declared by ``usage.Options``, ``None`` by default) is
    twistd's own options when twistd calls this: then jkg sets up logging.
    """
    cli = {option.name: options.get(option.cli) for option in OPTIONS}
    for option in OPTIONS:
        if option.flag:
            cli[option.name] = "true" if options.get(option.cli) else None
    from .secrets import SecretsError, make_non_dumpable, read_token_file

    try:
        config = build_config(cli, os.environ)
        if config.auth_token_file:
            config = config.replace(auth_token=read_token_file(config.auth_token_file))
    except (ConfigError, SecretsError) as error:
        _fail(str(error))
    # same-uid processes (kernels, when not sandboxed) may not ptrace us or read /proc/<pid>/environ
    make_non_dumpable()
    reactor = install_asyncio_reactor(config.event_loop)
    from .startup import report_event_loop

    reactor.callLater(0, report_event_loop, config.event_loop)  # in the loop's first turn: the loop runs then
    from .service import ListenError, endpoint_is_loopback, make_gateway_service, parse_endpoint
    from .preflight import check_exposure, check_settings

    _one_line_errors()
    from .auth.tenants import TenantsFileError
    from .kernels.seed import SeedError
    from .kernels.store import StateDatabaseInUse

    try:
        endpoints = {description: parse_endpoint(description, reactor, config) for description in config.endpoints}
        check_exposure(config, lambda description: endpoint_is_loopback(endpoints[description]))
        check_settings(config)
        service = make_gateway_service(config, reactor)
    except (ConfigError, ListenError, TenantsFileError, SeedError, StateDatabaseInUse, ValueError, OSError) as error:
        _fail(str(error))
    twistd_options = options.parent
    if twistd_options is None:  # makeService called directly, not by twistd: logging is the caller's
        return service
    from .logs import LoggedService, make_observer

    try:
        observer = make_observer(config.log_level, config.log_format, twistd_options, config.log_max_files)
        return LoggedService(service, observer)
    except (ConfigError, ListenError, TenantsFileError, SeedError, StateDatabaseInUse, ValueError, OSError) as error:
        _fail(str(error))
