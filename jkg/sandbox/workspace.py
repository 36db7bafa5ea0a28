"""Per-kernel directories on the host (workspace, ipc) and the identity kernels run as.

Workspaces live under one root the gateway owns (mode 0700, hidden from every
kernel); each kernel's is bound at :data:`jkg.sandbox.argv.WORKSPACE` in its
sandbox, owned by the kernel's uid.  Only the top directory is chowned --
never recursively, since a kernel may leave symlinks behind -- and removal
uses :func:`shutil.rmtree`, which does not follow them.  Blocking: call from
a thread.
"""
from __future__ import annotations

import grp
import os
import pwd
import shutil

from .settings import TENANT_SAFE


class SandboxError(RuntimeError):
    """A kernel that cannot be sandboxed as configured; ``str()`` says why."""


def resolve_user(spec: str) -> tuple[int, int]:
    """``nobody``, ``1234``, ``1234:1234`` or ``name:group`` -> (uid, gid)."""
    user, _, group = spec.partition(":")
    try:
        if user.isdigit():
            uid = int(user)
            gid = pwd.getpwuid(uid).pw_gid if not group else None
        else:
            entry = pwd.getpwnam(user)
            uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        if user.isdigit() and group:
            uid, gid = int(user), None
        elif user.isdigit():
            uid = gid = int(user)
        else:
            raise ValueError(f"no such user {user!r}") from None
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"no such group {group!r}") from None
    return uid, gid


def make_private_dir(path: str, uid: int | None, gid: int | None, mode: int = 0o700) -> str:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if os.path.islink(path) or not os.path.isdir(path):
            raise SandboxError(f"{path} exists and is not a directory") from None
    os.chmod(path, mode)
    if uid is not None and os.geteuid() == 0:
        os.lchown(path, uid, gid if gid is not None else uid)
    return path


class Workspaces:
    """Workspace directories under ``root``: one per kernel, or one per tenant when kept."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)

    def path_for(self, kernel_id: str, owner: str | None, persist: bool) -> str:
        if persist and owner and TENANT_SAFE.match(owner):
            return os.path.join(self.root, "tenants", owner)
        return os.path.join(self.root, "kernels", kernel_id)

    def create(self, kernel_id: str, owner: str | None, persist: bool, uid, gid) -> str:
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)
        return make_private_dir(self.path_for(kernel_id, owner, persist), uid, gid)

    def remove(self, path: str) -> None:
        if os.path.dirname(os.path.dirname(path)) != self.root:
            return  # only ever remove what path_for made
        shutil.rmtree(path, ignore_errors=True)


def remove_tree(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)
