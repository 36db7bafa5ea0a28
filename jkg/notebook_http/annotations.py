"""A notebook's annotated cells as HTTP endpoints (pure: no Twisted, no I/O).

The syntax is jupyter-kernel-gateway's, so a notebook written for it works
unchanged: a code cell whose source *starts* with ``# GET /path`` (the
language's comment token, one of GET/PUT/POST/DELETE, a path with ``:name``
parameters) is the code of that endpoint; ``# ResponseInfo GET /path`` cells
print ``{"status": ..., "headers": {...}}``; several cells with the same verb
and path are joined with newlines in notebook order; every other code cell
seeds each kernel.  Routes are tried in the reference's order: paths without
parameters first, then by the depth of their first parameter, deepest first.

Where the reference silently ignores a mistake (``# GET hello``, ``# PATCH
/x``, a path that is no regular expression), this parser refuses the notebook
with one line naming the cell, so a typo is found at startup, not in production.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

VERBS = ("GET", "PUT", "POST", "DELETE")
#: comment tokens by ``metadata.language_info.name``; anything else uses ``#``
COMMENT_PREFIXES = {"scala": "//"}
_PARAM = re.compile(r"(:([^/\s]*))")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_CELLS = 10_000


class AnnotationError(ValueError):
    """A notebook that cannot be served; ``str()`` is one line naming the notebook and the cell."""


@dataclass(frozen=True)
class Endpoint:
    """One annotated path: its code per verb and its ResponseInfo code per verb."""

    path: str  # as annotated, e.g. /hello/:name
    pattern: re.Pattern
    sources: dict = field(default_factory=dict)  # verb -> code
    responses: dict = field(default_factory=dict)  # verb -> ResponseInfo code

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(name for _, name in _PARAM.findall(self.path))


@dataclass(frozen=True)
class NotebookAPI:
    """Everything a notebook defines: endpoints in routing order, seed cells, kernel."""

    title: str
    kernel_name: str  # "" means the gateway's default
    language: str
    endpoints: tuple[Endpoint, ...]
    seed_cells: tuple[str, ...]
    source: bytes = b""  # the notebook file, for /_api/source
    spec_order: tuple[str, ...] = ()  # paths in notebook order, as the reference's swagger lists them
    swagger: dict | None = None  # the notebook's own Swagger document (swagger-style notebooks)

    def route(self, path: str) -> tuple[Endpoint, dict] | None:
        """The first endpoint whose pattern matches the (still percent-encoded) path, with its raw params."""
        for endpoint in self.endpoints:
            match = endpoint.pattern.match(path)
            if match:
                return endpoint, match.groupdict()
        return None


def comment_prefix(language: str) -> str:
    return COMMENT_PREFIXES.get(language, "#")


def first_param_depth(path: str) -> int:
    """The reference's sort key: depth of the first ``:param``, or ``sys.maxsize`` without one."""
    position = path.find(":")
    return sys.maxsize if position < 0 else path.count("/", 0, position) - 1


def path_regex(path: str) -> str:
    """``/hello/:name`` -> ``/hello/(?P<name>[^\\/]+)``, as the reference registers it."""
    for whole, name in _PARAM.findall(path):
        path = path.replace(whole, rf"(?P<{name}>[^\/]+)")
    return path.strip()


def _cell_sources(notebook) -> list[str]:
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        raise AnnotationError("not a notebook: no cells list")
    cells = notebook["cells"]
    if len(cells) > MAX_CELLS:
        raise AnnotationError(f"too many cells ({len(cells)} > {MAX_CELLS})")
    sources = []
    for cell in cells:
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            source = cell.get("source", "")
            sources.append("".join(map(str, source)) if isinstance(source, list) else str(source))
    return sources


def notebook_metadata(notebook: dict, key: str, name_key: str) -> str:
    value = (notebook.get("metadata") or {}).get(key) or {}
    found = value.get(name_key) if isinstance(value, dict) else None
    return found if isinstance(found, str) else ""


class _Patterns:
    """The reference's two annotation regexes plus a loose one that spots near-misses."""

    def __init__(self, prefix: str):
        token = re.escape(prefix)
        self.endpoint = re.compile(token + r"\s+(GET|PUT|POST|DELETE)\s+(\/.*)+")
        self.response = re.compile(token + r"\s+ResponseInfo\s+(GET|PUT|POST|DELETE)\s+(\/.*)+")
        self.near_miss = re.compile(token + r"\s*(ResponseInfo\s+)?(GET|PUT|POST|DELETE|PATCH|HEAD|OPTIONS)\b",
                                    re.IGNORECASE)


def check_path(path: str, where: str) -> re.Pattern:
    names = []
    for _, name in _PARAM.findall(path):
        if not _IDENTIFIER.match(name):
            raise AnnotationError(f"{where}: path parameter {':' + name!r} in {path} is not a name")
        if name in names:
            raise AnnotationError(f"{where}: path parameter :{name} appears twice in {path}")
        names.append(name)
    try:
        return re.compile(path_regex(path) + "$")
    except re.error as error:
        raise AnnotationError(f"{where}: path {path} is not a valid route pattern: {error}") from None


def parse_notebook(notebook, title: str, force_kernel_name: str = "", source: bytes = b"") -> NotebookAPI:
    """The endpoints of a parsed notebook (a dict as in the ``.ipynb`` JSON).

    :param title: the notebook's name, for messages and the swagger title.
    :raises AnnotationError: naming the notebook and the cell (1-based, code cells and others counted).
    """
    language = notebook_metadata(notebook, "language_info", "name")
    kernel_name = force_kernel_name or notebook_metadata(notebook, "kernelspec", "name")
    patterns = _Patterns(comment_prefix(language))
    endpoints: dict[str, dict[str, str]] = {}
    responses: dict[str, dict[str, str]] = {}
    places: dict[tuple[str, str], str] = {}
    seeds = []
    for number, code in enumerate(_cell_sources(notebook), start=1):
        where = f"{title}: code cell {number}"
        first_line = code.split("\n", 1)[0]
        response = patterns.response.match(code)
        endpoint = None if response else patterns.endpoint.match(code)
        found = response or endpoint
        if found is None:
            if patterns.near_miss.match(first_line):
                raise AnnotationError(f"{where}: bad annotation {first_line.strip()!r}; expected "
                                      f"'{comment_prefix(language)} [ResponseInfo] GET|PUT|POST|DELETE /path'")
            seeds.append(code)
            continue
        verb, path = found.group(1), found.group(2).strip()
        check_path(path, where)
        table = responses if response else endpoints
        table.setdefault(path, {}).setdefault(verb, "")
        table[path][verb] += code + "\n"
        places.setdefault((verb, path), where)
    if not endpoints:
        raise AnnotationError(f"{title}: no endpoints were discovered; annotate a code cell with "
                              f"'{comment_prefix(language)} GET /path'")
    for path, verbs in responses.items():
        for verb in verbs:
            if verb not in endpoints.get(path, {}):
                raise AnnotationError(f"{places[(verb, path)]}: ResponseInfo for {verb} {path}, "
                                      "which no cell defines")
    ordered = sorted(endpoints, key=first_param_depth, reverse=True)
    return NotebookAPI(
        title=title, kernel_name=kernel_name, language=language, seed_cells=tuple(seeds), source=source,
        spec_order=tuple(endpoints),
        endpoints=tuple(Endpoint(path, check_path(path, title), endpoints[path], responses.get(path, {}))
                        for path in ordered))


def swagger_spec(api: NotebookAPI) -> dict:
    """The reference's Swagger 2.0 document: the notebook's own if it declares one (swagger-style
    notebooks), else paths in ``:name`` form with every verb "200 Success"."""
    if api.swagger is not None:
        return api.swagger
    paths: dict = {}
    by_path = {endpoint.path: endpoint for endpoint in api.endpoints}
    for endpoint in (by_path[path] for path in api.spec_order or by_path):
        paths[endpoint.path] = {verb.lower(): {"responses": {"200": {"description": "Success"}}}
                                for verb in endpoint.sources}
    return {"swagger": "2.0", "paths": paths, "info": {"version": "0.0.0", "title": api.title}}


def openapi_spec(api: NotebookAPI, server_url: str = "/") -> dict:
    """An OpenAPI 3.0 document of the endpoints: ``{name}`` path templates and their parameters."""
    paths: dict = {}
    for endpoint in api.endpoints:
        template = _PARAM.sub(lambda m: "{" + m.group(2) + "}", endpoint.path)
        parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                      for name in endpoint.params]
        operations = {}
        for verb in endpoint.sources:
            operation = {
                "operationId": f"{verb.lower()}_{re.sub(r'[^A-Za-z0-9]+', '_', endpoint.path).strip('_') or 'root'}",
                "responses": {
                    "200": {"description": "The cell's output", "content": {"text/plain": {}}},
                    "500": {"description": "The cell raised: Error <name>: <message>"},
                    "503": {"description": "No kernel became free in time"},
                    "504": {"description": "The cell ran longer than the request timeout"},
                },
            }
            if parameters:
                operation["parameters"] = parameters
            if verb in ("POST", "PUT"):
                operation["requestBody"] = {"required": False, "content": {
                    "application/json": {}, "application/x-www-form-urlencoded": {}, "text/plain": {}}}
            operations[verb.lower()] = operation
        paths[template] = operations
    return {"openapi": "3.0.3", "info": {"title": api.title, "version": "0.0.0"},
            "servers": [{"url": server_url}], "paths": paths}
