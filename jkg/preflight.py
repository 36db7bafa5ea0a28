"""Startup checks of settings that would otherwise be ignored or fail only later.

Run once by :mod:`jkg.tap` before anything listens (blocking reads are fine
here: the reactor is not running yet).  Where :mod:`jkg.config` validates
each value as typed, these check the settings against the world: a gateway
without credentials on a listener beyond loopback (refused unless
``--allow-unauthenticated``), a kernelspec that is not installed (``--pool
nosuch=2`` would otherwise retry for ever), an ``--existing`` file that is
missing or not a connection file.  Each problem is one
:class:`jkg.config.ConfigError` line.
"""
from __future__ import annotations

from typing import Callable

from .config import ConfigError, GatewayConfig
from .endpoints import is_loopback_endpoint


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


def check_existing(paths) -> None:
    from .kernels.discovery import ConnectionFileError, read_connection_file

    for path in paths:
        try:
            read_connection_file(path)
        except ConnectionFileError as error:
            raise ConfigError(f"--existing: {error}") from None


def named_kernelspecs(config: GatewayConfig) -> list[tuple[str, str]]:
    """``(flag, kernelspec name)`` for every kernelspec a setting names."""
    from .kernels.lifecycle import parse_pool_sizes

    named = []
    for flag in ("default_kernel_name", "force_kernel_name"):
        if getattr(config, flag):
            named.append((f"--{flag.replace('_', '-')}", getattr(config, flag)))
    try:
        sizes = parse_pool_sizes(config.pool, 0, "")
    except ValueError as error:
        raise ConfigError(f"invalid value for --pool: {error}") from None
    named += [("--pool", name) for name in sizes]
    if config.api == "notebook-http" and not config.force_kernel_name:
        from .notebook_http.notebooks import declared_kernelspecs

        named += declared_kernelspecs(config.seed_uri, config.notebook_dir)
    return named


def check_kernelspecs(config: GatewayConfig, installed=None) -> None:
    named = named_kernelspecs(config)
    if not named:
        return
    if installed is None:
        from jupyter_client.kernelspec import KernelSpecManager

        installed = set(KernelSpecManager().find_kernel_specs())
    for flag, name in named:
        if name not in installed:
            raise ConfigError(f"{flag} names kernelspec {name!r}, which is not installed "
                              f"(installed: {', '.join(sorted(installed)) or 'none'})")


def check_settings(config: GatewayConfig) -> None:
    check_existing(config.existing)
    check_kernelspecs(config)
