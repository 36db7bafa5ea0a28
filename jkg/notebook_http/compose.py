"""Wiring the notebook-http personality: options -> notebooks service + resource tree.

Called by :func:`jkg.service.make_gateway` for ``--api notebook-http``; the
only place here that names concrete classes.
"""
from __future__ import annotations

import os
from urllib.parse import urlsplit

from twisted.web.resource import Resource, getChildForRequest

from ..web.site import make_root_resource
from .annotations import AnnotationError
from .app import NotebookApp, PoolSettings
from .notebooks import NotebookSet, notebook_files
from .resource import NotebookResource


class _Split(Resource):
    """Sends requests under the kernels API prefix to its tree, everything else to the notebooks."""

    def __init__(self, kernels_root, notebooks_root, prefix: bytes):
        super().__init__()
        self._kernels = kernels_root
        self._notebooks = notebooks_root
        self._prefix = prefix

    def _target(self, request):
        path = request.path
        if path == self._prefix or path.startswith(self._prefix + b"/"):
            return self._kernels
        return self._notebooks

    def getChildWithDefault(self, name, request):  # noqa: N802 - Twisted API
        request.postpath.insert(0, request.prepath.pop())  # let the chosen tree walk from the top
        return getChildForRequest(self._target(request), request)

    def render(self, request):
        return self._target(request).render(request)


def _seed_path(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        raise AnnotationError("serving a notebook fetched over http(s) is not supported; download it and give "
                              "its path")
    return parts.path if parts.scheme == "file" else uri


def make_notebook_http(config, registry, portal, limiter, cors, reactor, kernels_root=None):
    """The :class:`NotebookSet` service and the root resource for ``config``.

    :raises AnnotationError: a notebook that cannot be served (one line naming it and the cell).
    """
    if config.static_path and not os.path.isdir(config.static_path):
        raise AnnotationError(f"--static-path {config.static_path} is not a folder")
    settings = PoolSettings(
        min_kernels=max(1, config.prespawn_count), max_kernels=config.notebook_max_kernels,
        queue_limit=config.notebook_queue_limit, queue_timeout=config.notebook_queue_timeout,
        request_timeout=config.request_timeout, interrupt_grace=config.interrupt_grace,
        launch_timeout=config.kernel_launch_timeout, idle_ttl=config.notebook_idle_timeout)

    def make_app(api, prefix):
        return NotebookApp(api, registry, reactor, settings, prefix)

    if config.notebook_dir:
        folder = config.notebook_dir

        def sources():
            return notebook_files(folder)
    else:
        path = _seed_path(config.seed_uri)

        def sources():
            return {"": path}

    notebooks = NotebookSet(make_app, sources, reactor, config.notebook_reload_interval,
                            config.force_kernel_name, threadpool=reactor.getThreadPool(), reactor=reactor,
                            cell_parser=config.cell_parser)
    leaf = NotebookResource(notebooks.current, portal, limiter, cors, config.base_url, config.static_path,
                            config.allow_notebook_download,
                            None if config.has_credentials else config.allowed_hosts)
    root = make_root_resource(leaf, cors, config.base_url, leaf.answer_preflight)
    if kernels_root is not None:
        root = _Split(kernels_root, root, (config.base_url + config.kernels_api_prefix.strip("/")).encode("utf-8"))
    return notebooks, root
