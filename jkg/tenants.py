"""``python -m jkg.tenants``: manage the tenants file.

``add`` creates a tenant with a fresh random token and prints the token once;
only its hash is stored.  ``rotate`` replaces a tenant's tokens, ``remove``
deletes it, ``password`` sets the HTTP Basic password (read from standard
input, stored as a bcrypt hash), ``list`` shows names and quotas.  The file
is rewritten atomically with mode 0600; send the gateway SIGHUP to apply.
"""
from __future__ import annotations

import argparse
import getpass
import os
import sys
from dataclasses import replace

from .auth.tenants import (
    RESERVED_NAMES, TENANT_NAME, TenantRecord, TenantsFileError, TenantTable, hash_token, new_token,
    read_tenants, write_tenants)


def _load(path: str, create: bool = False) -> TenantTable:
    if create and not os.path.exists(path):
        return TenantTable({})
    return read_tenants(path)


def _limit(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return number


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jkg.tenants", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--file", default=os.environ.get("JKG_TENANTS"), required="JKG_TENANTS" not in os.environ,
                         help="the tenants file (default: $JKG_TENANTS)")
        return sub

    add = command("add", "create a tenant and print its new token once")
    add.add_argument("name")
    add.add_argument("--max-kernels", type=_limit)
    add.add_argument("--max-connections", type=_limit)
    add.add_argument("--kernelspecs", help="comma-separated kernelspec names this tenant may start")
    add.add_argument("--admin", action="store_true", help="may see and manage every tenant's kernels")
    for name, help_text in (("rotate", "replace a tenant's tokens with a new one, printed once"),
                            ("remove", "delete a tenant"),
                            ("password", "set the HTTP Basic password (read from stdin)")):
        command(name, help_text).add_argument("name")
    command("list", "show tenants and their quotas")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except TenantsFileError as error:
        print(f"jkg.tenants: error: {error}", file=sys.stderr)
        return 2


def _run(args) -> int:
    path = args.file
    if args.command == "list":
        for record in sorted(_load(path).tenants.values(), key=lambda r: r.name):
            print(f"{record.name}\tadmin={record.admin}\tmax_kernels={record.max_kernels}\t"
                  f"max_connections={record.max_connections}\tkernelspecs={record.kernelspecs}\t"
                  f"tokens={len(record.tokens)}\tpassword={'yes' if record.password else 'no'}")
        return 0
    name = args.name
    if args.command == "add":
        if not TENANT_NAME.match(name) or name in RESERVED_NAMES:
            raise TenantsFileError(f"invalid tenant name {name!r}")
        table = _load(path, create=True)
        if table.get(name) is not None:
            raise TenantsFileError(f"tenant {name} already exists (use rotate for a new token)")
        token = new_token()
        kernelspecs = tuple(k.strip() for k in args.kernelspecs.split(",") if k.strip()) if args.kernelspecs else None
        record = TenantRecord(name, (hash_token(token),), None, args.max_kernels, args.max_connections,
                              kernelspecs, args.admin)
        write_tenants(path, table.with_tenant(record))
        print(token)
        print(f"tenant {name} added; the token above is shown only once. Send the gateway SIGHUP to apply.",
              file=sys.stderr)
        return 0
    table = _load(path)
    record = table.get(name)
    if record is None:
        raise TenantsFileError(f"no tenant named {name}")
    if args.command == "remove":
        write_tenants(path, table.without(name))
        print(f"tenant {name} removed. Send the gateway SIGHUP to apply.", file=sys.stderr)
    elif args.command == "rotate":
        token = new_token()
        write_tenants(path, table.with_tenant(replace(record, tokens=(hash_token(token),))))
        print(token)
        print(f"tenant {name}: old tokens revoked once the gateway gets SIGHUP.", file=sys.stderr)
    elif args.command == "password":
        import bcrypt

        password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        if len(password) < 8:
            raise TenantsFileError("the password must have at least 8 characters")
        hashed = "bcrypt:" + bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt()).decode("ascii")
        write_tenants(path, table.with_tenant(replace(record, password=hashed)))
        print(f"tenant {name}: password set. Send the gateway SIGHUP to apply.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
