"""The docs agree with the code: every option, every route, and a compilable embedding example.

Fast and self-contained: no gateway, no kernel, no network.
"""
import re
from pathlib import Path

import pytest

from jkg.options import OPTIONS
from jkg.web.api import GatewayAPI

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _option_rows() -> dict[str, list[str]]:
    """Table rows of docs/options.md keyed by the flag in their first cell."""
    rows = {}
    for line in (DOCS / "options.md").read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `--"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        flag = re.match(r"`(--[a-z0-9-]+)", cells[0]).group(1)
        rows[flag] = cells
    return rows


@pytest.mark.parametrize("option", OPTIONS, ids=[option.name for option in OPTIONS])
def test_every_option_is_documented(option):
    rows = _option_rows()
    flag = f"--{option.cli}"
    assert flag in rows, f"{flag} missing from docs/options.md"
    _, env_cell, default_cell, meaning = rows[flag]
    for env_name in option.env:
        assert f"`{env_name}`" in env_cell, f"{env_name} missing from the row of {flag}"
    if option.default:
        assert f"`{option.default}`" in default_cell, f"default of {flag} should be {option.default!r}"
    else:
        assert "empty" in default_cell, f"default of {flag} should be shown as (empty)"
    assert meaning, f"{flag} has no meaning"


def test_options_are_in_table_order():
    assert list(_option_rows()) == [f"--{option.cli}" for option in OPTIONS]


def _routes():
    """(method, path) for every declared route, with ``<conv:name>`` written as ``{name}``."""
    found = []
    for rule in GatewayAPI.app.url_map.iter_rules():
        if not rule.methods:  # the catch-all 404 routes declare no methods
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        methods = set(rule.methods)
        if "GET" in methods:
            methods.discard("HEAD")  # werkzeug adds HEAD to every GET route
        found.extend((method, path) for method in sorted(methods))
    return found


def test_routes_were_found():
    assert ("POST", "/api/kernels") in _routes()
    assert ("GET", "/api/kernels/{kernel_id}/channels") in _routes()


@pytest.mark.parametrize("method,path", _routes())
def test_every_route_is_documented(method, path):
    assert f"`{method} {path}`" in (DOCS / "api.md").read_text(encoding="utf-8")


def test_embedding_example_compiles():
    source = DOCS / "examples" / "embedded_app.tac"
    compile(source.read_text(encoding="utf-8"), str(source), "exec")


@pytest.mark.parametrize("page", ["index.md", "running.md", "options.md", "api.md", "embedding.md",
                                  "architecture.md"])
def test_relative_links_resolve(page):
    text = (DOCS / page).read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (DOCS / target).exists(), f"{page} links to missing {target}"


def _modules():
    package = DOCS.parent / "jkg"
    for path in sorted(package.rglob("*.py")):
        if path.name not in ("__init__.py", "__main__.py"):
            yield path.relative_to(package).with_suffix("").as_posix()


@pytest.mark.parametrize("module", list(_modules()))
def test_the_architecture_page_places_every_module(module):
    """The module map is the house plan: a module it does not name has no agreed room."""
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    package = module.split("/")[0] + "/"
    assert f"`{module}`" in text or (package == "client/" and "`client/`" in text), module


def test_the_architecture_page_says_who_signs_kernel_messages():
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    assert "`kernels/signer`" in text
    assert "jupyter_client.session.Session" not in text  # jkg signs with its own Signer, not Session
