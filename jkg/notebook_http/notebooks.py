"""The notebooks being served, and their reload when a file changes.

One notebook (``--seed-uri``) is served at ``base_url``; a folder
(``--notebook-dir``) serves each ``NAME.ipynb`` under ``/NAME``.  Files are
read once at startup -- a notebook with a bad annotation stops the gateway
with one line -- and then polled every ``reload_interval`` seconds (off the
reactor thread).  A changed file is parsed again; if it is good, a new app
with a fresh pool takes the route at once and the old app is drained (queued
and running requests finish, then its kernels are shut down); if it is bad,
the old version keeps serving and the error is logged.  No gateway restart.
"""
from __future__ import annotations

import json
import os
from typing import Callable

from twisted.application.service import Service
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from .annotations import AnnotationError, NotebookAPI, parse_notebook
from .swagger_cells import SWAGGER_PARSER, parse_swagger_notebook

log = Logger()

MAX_NOTEBOOK_BYTES = 64 * 1024 * 1024
MAX_NOTEBOOKS = 1000
STOP_GRACE = 5.0
TRIM_INTERVAL = 10.0


def read_notebook(path: str, force_kernel_name: str = "", cell_parser: str = "") -> NotebookAPI:
    """Parse one notebook file (blocking) with ``cell_parser`` (the reference's module name; "" = default).

    :raises AnnotationError: a bad annotation or an unreadable file, in one line.
    """
    title = os.path.basename(path)
    title = title.split(".")[0] if title.find(".") > 0 else title
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_NOTEBOOK_BYTES + 1)
    except OSError as error:
        raise AnnotationError(f"cannot read notebook {path}: {error.strerror}") from None
    if len(data) > MAX_NOTEBOOK_BYTES:
        raise AnnotationError(f"notebook {path} is larger than {MAX_NOTEBOOK_BYTES} bytes")
    try:
        notebook = json.loads(data)
    except ValueError as error:
        raise AnnotationError(f"notebook {path} is not JSON: {error}") from None
    parse = parse_swagger_notebook if cell_parser == SWAGGER_PARSER else parse_notebook
    return parse(notebook, title, force_kernel_name, source=data)


def declared_kernelspecs(seed_uri: str, folder: str) -> list[tuple[str, str]]:
    """``(where, kernelspec name)`` each notebook's metadata asks for (blocking; for startup checks).

    Unreadable notebooks are skipped here: loading them reports the problem.
    """
    from urllib.parse import urlsplit

    if folder:
        try:
            paths = list(notebook_files(folder).values())
        except OSError:
            return []
    else:
        parts = urlsplit(seed_uri)
        paths = [parts.path if parts.scheme == "file" else seed_uri]
    named = []
    for path in paths:
        try:
            with open(path, "rb") as handle:
                metadata = json.loads(handle.read(MAX_NOTEBOOK_BYTES)).get("metadata") or {}
            name = (metadata.get("kernelspec") or {}).get("name")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(name, str) and name:
            named.append((f"notebook {path}", name))
    return named


def notebook_files(folder: str) -> dict[str, str]:
    """``/NAME`` -> path of every ``NAME.ipynb`` directly in ``folder`` (blocking)."""
    found = {}
    for entry in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(entry)
        if ext == ".ipynb" and not entry.startswith(".") and os.path.isfile(os.path.join(folder, entry)):
            found["/" + stem] = os.path.join(folder, entry)
            if len(found) >= MAX_NOTEBOOKS:
                break
    return found


def _stamp(path: str):
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def scan(sources: Callable[[], dict[str, str]]) -> dict[str, tuple]:
    """prefix -> (path, stamp) for the current files (blocking)."""
    return {prefix: (path, _stamp(path)) for prefix, path in sources().items()}


class NotebookSet(Service):
    """The served apps by prefix, kept up to date with the files.

    :param make_app: ``make_app(api, prefix)`` -> a :class:`NotebookApp`.
    :param sources: returns ``{prefix: path}`` (blocking; run on a thread after startup).
    """

    name = "notebooks"

    def __init__(self, make_app, sources: Callable[[], dict[str, str]], clock, reload_interval: float = 2.0,
                 force_kernel_name: str = "", threadpool=None, reactor=None, cell_parser: str = ""):
        self._make_app = make_app
        self._sources = sources
        self._clock = clock
        self._reactor = reactor or clock
        self._threadpool = threadpool
        self._force = force_kernel_name
        self._parser = cell_parser
        self.reload_interval = reload_interval
        self.apps: dict[str, object] = {}
        self._stamps: dict[str, tuple] = {}
        self._draining: list = []
        self._watcher = LoopingCall(self._check)
        self._watcher.clock = clock
        self._trimmer = LoopingCall(self._trim)
        self._trimmer.clock = clock
        self._load_all()

    def _load_all(self) -> None:
        """Startup: every notebook must parse, or the gateway does not start."""
        for prefix, (path, stamp) in scan(self._sources).items():
            self.apps[prefix] = self._make_app(read_notebook(path, self._force, self._parser), prefix)
            self._stamps[prefix] = (path, stamp)
        if not self.apps:
            raise AnnotationError("no notebook to serve: the notebook folder has no .ipynb file")

    def current(self) -> list:
        return list(self.apps.values())

    def _blocking(self, function, *args):
        if self._threadpool is None:
            from twisted.internet.defer import maybeDeferred

            return maybeDeferred(function, *args)
        return deferToThreadPool(self._reactor, self._threadpool, function, *args)

    @inlineCallbacks
    def _check(self):
        try:
            found = yield self._blocking(scan, self._sources)
        except OSError as error:
            log.error("notebook-http: cannot scan notebooks: {error}", error=error)
            return
        for prefix in [p for p in self.apps if p not in found]:
            log.info("notebook-http: {prefix} removed; draining it", prefix=prefix)
            self._stamps.pop(prefix, None)
            self._retire(self.apps.pop(prefix))
        for prefix, (path, stamp) in found.items():
            if self._stamps.get(prefix) == (path, stamp) or stamp is None:
                continue
            self._stamps[prefix] = (path, stamp)
            try:
                api = yield self._blocking(read_notebook, path, self._force, self._parser)
            except AnnotationError as error:
                log.error("notebook-http: not reloading {path}: {error}", path=path, error=error)
                continue
            app = self._make_app(api, prefix)
            old = self.apps.get(prefix)
            if self.running:
                app.start()
                if old is not None:
                    # the old version serves until the new one has a kernel; a broken seed keeps it
                    try:
                        yield app.pool.when_ready()
                    except Exception as error:  # noqa: BLE001 - any launch or seed failure
                        log.error("notebook-http: not reloading {path}: {error}", path=path, error=error)
                        app.drain()
                        continue
                    if not self.running or self.apps.get(prefix) is not old:
                        app.drain()
                        continue
            self.apps[prefix] = app
            log.info("notebook-http: {what} {path} at {prefix}", what="reloaded" if old else "serving",
                     path=path, prefix=prefix or "/")
            if old is not None:
                self._retire(old)

    def _trim(self) -> None:
        for app in self.apps.values():
            app.pool.trim()

    def _retire(self, app) -> None:
        d = app.drain()
        self._draining.append(d)
        d.addBoth(lambda result: self._draining.remove(d))

    def startService(self):  # noqa: N802 - Twisted API
        super().startService()
        for prefix, app in sorted(self.apps.items()):
            routes = ", ".join(f"{verb} {prefix}{endpoint.path}" for endpoint in app.api.endpoints
                               for verb in endpoint.sources)
            log.info("notebook-http: {title} at {prefix}: {routes}", title=app.api.title, prefix=prefix or "/",
                     routes=routes)
            app.start()
        if self.reload_interval:
            self._watcher.start(self.reload_interval, now=False)
        self._trimmer.start(TRIM_INTERVAL, now=False)

    @inlineCallbacks
    def stopService(self):  # noqa: N802 - Twisted API
        super().stopService()
        for loop in (self._watcher, self._trimmer):
            if loop.running:
                loop.stop()
        drains = [app.drain() for app in self.apps.values()] + list(self._draining)
        # bounded: the registry, stopped next, shuts down whatever a hung request still holds
        yield DeferredList(drains, consumeErrors=True).addTimeout(STOP_GRACE, self._clock).addErrback(
            lambda failure: None)
