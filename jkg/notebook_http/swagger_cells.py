"""The reference's second annotation style: a Swagger document plus ``operationId`` cells (pure).

With ``KG_CELL_PARSER=kernel_gateway.notebook_http.swagger.parser`` a notebook
declares its API as a Swagger 2.0 JSON document inside a ``` fence in a
(markdown) cell, and code cells start with ``# operationId: ID`` (the
endpoint's code) or ``# ResponseInfo operationId: ID``.  As in
jupyter-kernel-gateway: each declared operation whose ``operationId`` a cell
references becomes an endpoint at its path, with ``/:name`` appended for every
parameter the operation lists; cells with the same ID are joined in notebook
order; every other code cell seeds the kernels; the document itself is what
``/_api/spec/swagger.json`` serves.

Where the reference fails later or quietly, this parser refuses the notebook
with one line naming the cell: an ID no operation declares, a verb other than
GET/PUT/POST/DELETE, no document.  One difference on purpose: Swagger's
lower-case verbs (``"get"``) are served -- the reference compares them with
the request's upper-case method and answers every request 405.
"""
from __future__ import annotations

import json
import re

from .annotations import (
    MAX_CELLS,
    VERBS,
    AnnotationError,
    Endpoint,
    NotebookAPI,
    check_path,
    comment_prefix,
    first_param_depth,
    notebook_metadata,
)

SWAGGER_PARSER = "kernel_gateway.notebook_http.swagger.parser"


def _text(source) -> str:
    return "".join(map(str, source)) if isinstance(source, list) else str(source)


def swagger_from_cell(source: str) -> dict | None:
    """The JSON object between a cell's first two ``` lines if it has a ``"swagger"`` key, else None.

    As the reference reads it: the fence is looked for only in cells of more
    than two lines, and the lines in between are joined without separators.
    """
    lines = source.splitlines()
    if len(lines) > 2:
        for number, line in enumerate(lines):
            if line.startswith("```"):
                lines = lines[number + 1:]
                break
        for number, line in enumerate(lines):
            if line.startswith("```"):
                lines = lines[:number]
                break
    try:
        document = json.loads("".join(lines))
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) and "swagger" in document else None


def _operations(document: dict, title: str) -> dict[str, tuple[str, str, list]]:
    """operationId -> (path, VERB, parameter names) for every declared operation."""
    paths = document.get("paths")
    if not isinstance(paths, dict) or not paths:
        raise AnnotationError(f"{title}: the Swagger document declares no paths")
    operations: dict[str, tuple[str, str, list]] = {}
    for path, verbs in paths.items():
        if not isinstance(verbs, dict):
            continue
        for verb, operation in verbs.items():
            if not isinstance(operation, dict) or not isinstance(operation.get("operationId"), str):
                continue
            names = [p["name"] for p in operation.get("parameters") or []
                     if isinstance(p, dict) and isinstance(p.get("name"), str)]
            operations[operation["operationId"]] = (str(path), str(verb).upper(), names)
    return operations


def parse_swagger_notebook(notebook, title: str, force_kernel_name: str = "", source: bytes = b"") -> NotebookAPI:
    """The endpoints of a notebook in the reference's Swagger style (a dict as in the ``.ipynb`` JSON).

    :raises AnnotationError: one line naming the notebook and, where there is one, the code cell.
    """
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        raise AnnotationError("not a notebook: no cells list")
    cells = [cell for cell in notebook["cells"] if isinstance(cell, dict)]
    if len(cells) > MAX_CELLS:
        raise AnnotationError(f"too many cells ({len(cells)} > {MAX_CELLS})")
    language = notebook_metadata(notebook, "language_info", "name")
    token = re.escape(comment_prefix(language))
    endpoint_cell = re.compile(token + r"\s*operationId:\s*(.*)")
    response_cell = re.compile(token + r"\s*ResponseInfo\s+operationId:\s*(.*)")
    document: dict = {}
    for cell in cells:
        found = swagger_from_cell(_text(cell.get("source", "")))
        if found is not None:
            document.update(found)
    if not document:
        raise AnnotationError(f"{title}: no Swagger document found (a cell with a JSON object that has a "
                              "\"swagger\" key, between ``` lines)")
    operations = _operations(document, title)
    codes: dict[str, str] = {}
    response_codes: dict[str, str] = {}
    places: dict[str, str] = {}
    seeds = []
    code_cells = [_text(cell.get("source", "")) for cell in cells if cell.get("cell_type") == "code"]
    for number, code in enumerate(code_cells, start=1):
        where = f"{title}: code cell {number}"
        response = response_cell.match(code)
        found = response or endpoint_cell.match(code)
        if found is None:
            seeds.append(code)
            continue
        operation_id = found.group(1).strip()
        if operation_id not in operations:
            raise AnnotationError(f"{where}: operationId {operation_id!r} is not declared in the Swagger document")
        verb = operations[operation_id][1]
        if verb not in VERBS:
            raise AnnotationError(f"{where}: operation {operation_id!r} is {verb}; only "
                                  f"{', '.join(VERBS)} are served")
        table = response_codes if response else codes
        table[operation_id] = table.get(operation_id, "") + code + "\n"
        places.setdefault(operation_id, where)
    for operation_id in response_codes:
        if operation_id not in codes:
            raise AnnotationError(f"{places[operation_id]}: ResponseInfo for operation {operation_id!r}, "
                                  "which no cell defines")
    endpoints: dict[str, dict[str, str]] = {}
    responses: dict[str, dict[str, str]] = {}
    for operation_id, code in codes.items():
        path, verb, names = operations[operation_id]
        full = "".join([path, *("/:" + name for name in names)])
        check_path(full, f"{places[operation_id]} (operation {operation_id!r})")
        if verb in endpoints.get(full, {}):
            raise AnnotationError(f"{places[operation_id]}: {verb} {full} is declared by two operations")
        endpoints.setdefault(full, {})[verb] = code
        if operation_id in response_codes:
            responses.setdefault(full, {})[verb] = response_codes[operation_id]
    if not endpoints:
        raise AnnotationError(f"{title}: no endpoints were discovered; start a code cell with "
                              f"'{comment_prefix(language)} operationId: ID' of a declared operation")
    spec = json.loads(json.dumps(document))
    if isinstance(spec.get("info"), dict):
        spec["info"].setdefault("title", title)  # the reference's default title
    ordered = sorted(endpoints, key=first_param_depth, reverse=True)
    return NotebookAPI(
        title=title, kernel_name=force_kernel_name or notebook_metadata(notebook, "kernelspec", "name"),
        language=language, seed_cells=tuple(seeds), source=source, spec_order=tuple(endpoints), swagger=spec,
        endpoints=tuple(Endpoint(path, check_path(path, title), endpoints[path], responses.get(path, {}))
                        for path in ordered))
