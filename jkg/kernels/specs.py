"""Kernelspec discovery: what the kernelspecs API lists and what a start may name.

jupyter_client's ``KernelSpecManager`` reads kernel.json files and resource
folders from disk, so every lookup runs on a thread and fires a Deferred.
Names and resource paths come from clients: they are checked here before
any file is opened.
"""
from __future__ import annotations

import os
import re

from jupyter_client.kernelspec import NATIVE_KERNEL_NAME, KernelSpecManager, NoSuchKernel
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from ..errors import NotFound, UnknownKernelSpec


class KernelSpecs:
    """Kernelspec discovery, done in a thread because it reads the disk."""

    def __init__(self, manager: KernelSpecManager | None = None):
        self.manager = manager or KernelSpecManager()

    @property
    def default_name(self) -> str:
        return NATIVE_KERNEL_NAME

    def describe_all(self) -> Deferred:
        """Fire with ``{name: (spec_dict, resource_file_names)}`` for every kernelspec."""

        def scan():
            found = {}
            for name, entry in self.manager.get_all_specs().items():
                found[name] = (entry["spec"], _resource_files(entry["resource_dir"]))
            return found

        return deferToThread(scan)

    def describe(self, name: str) -> Deferred:
        """Fire with ``(spec_dict, resource_file_names)`` or fail with UnknownKernelSpec."""

        def lookup():
            spec = self._spec(name)
            return spec.to_dict(), _resource_files(spec.resource_dir)

        return deferToThread(lookup)

    def get(self, name: str) -> Deferred:
        """Fire with the spec dict, or fail with UnknownKernelSpec."""
        return deferToThread(lambda: self._spec(name).to_dict())

    def resource(self, name: str, path: str) -> Deferred:
        """Fire with the bytes of a file in the spec's resource folder.

        Anything that resolves outside that folder (``..``, absolute paths,
        symlinks pointing out) is refused as not found.
        """

        def read():
            if "\0" in path:  # os.path would raise ValueError: embedded null byte
                raise NotFound(f"no resource {path!r} for kernel {name}")
            folder = os.path.realpath(self._spec(name).resource_dir)
            target = os.path.realpath(os.path.join(folder, path))
            if os.path.commonpath([folder, target]) != folder or not os.path.isfile(target):
                raise NotFound(f"no resource {path} for kernel {name}")
            if os.path.getsize(target) > MAX_RESOURCE_SIZE:
                raise NotFound(f"resource {path} is too large")
            with open(target, "rb") as handle:
                return handle.read()

        return deferToThread(read)

    def _spec(self, name: str):
        if not _SPEC_NAME.match(name):
            raise UnknownKernelSpec(name)
        try:
            return self.manager.get_kernel_spec(name)
        except (NoSuchKernel, ValueError, OSError):
            raise UnknownKernelSpec(name) from None


MAX_RESOURCE_SIZE = 4 * 1024 * 1024
_SPEC_NAME = re.compile(r"[\w.\-]{1,255}\Z")


def _resource_files(folder: str) -> list[str]:
    try:
        return sorted(entry for entry in os.listdir(folder) if os.path.isfile(os.path.join(folder, entry)))
    except OSError:
        return []
