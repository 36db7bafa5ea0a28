"""Startup checks of settings that would otherwise be ignored or fail only later.

Run once by :mod:`jkg.tap` before anything listens (blocking reads are fine
here: the reactor is not running yet).  Each problem is one
:class:`jkg.config.ConfigError` line: a kernelspec that is not installed
(``--pool nosuch=2`` would otherwise retry for ever), an ``--existing`` file
that is missing or not a connection file, and jupyter-kernel-gateway's
``KG_API`` asking for an API jkg does not serve.
"""
from __future__ import annotations

from typing import Mapping

from .config import OPTIONS_BY_NAME, ConfigError, GatewayConfig

WEBSOCKET_API = "kernel_gateway.jupyter_websocket"


def check_api(environ: Mapping[str, str]) -> None:
    if "api" in OPTIONS_BY_NAME:  # the option exists: the config table validates it
        return
    value = environ.get("KG_API", "").strip()
    if value and value != WEBSOCKET_API:
        raise ConfigError(f"KG_API={value} is not supported: jkg serves only the kernels API "
                          f"({WEBSOCKET_API}); unset KG_API")


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


def check_settings(config: GatewayConfig, environ: Mapping[str, str]) -> None:
    check_api(environ)
    check_existing(config.existing)
    check_kernelspecs(config)
