"""notebook-http against the reference: the same notebook served by jupyter-kernel-gateway
3.0.1 and by jkg answers the same requests with the same status, headers that matter and body.

One reference gateway and one jkg gateway for the module, both on loopback with ephemeral
ports, real ipykernel kernels behind both.  The requests below cover GET/POST/PUT/DELETE,
path parameters (and the literal-before-parameter route order), query arguments, JSON,
form and text bodies, repeated headers, stdout vs execute_result vs empty results, stderr,
multi-cell endpoints, errors, ResponseInfo status and headers, 404 and 405.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from support import GatewayProcess, children_of, pid_alive, stop_process

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "notebooks" / "api.ipynb"
PUBLIC = HERE / "notebooks" / "public"
KG_BIN = HERE.parent / "benchmarks" / ".venv-kg" / "bin" / "jupyter-kernelgateway"

pytestmark = pytest.mark.timeout(300)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the gateway exited")
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


@contextmanager
def reference_gateway(notebook: Path, env: dict):
    """jupyter-kernel-gateway 3.0.1 in notebook-http mode (installed into the benchmark venv if missing)."""
    from test_client_reference import ensure_reference_gateway

    ensure_reference_gateway()
    port = free_port()
    process = subprocess.Popen(
        [str(KG_BIN), "--KernelGatewayApp.api=kernel_gateway.notebook_http",
         f"--KernelGatewayApp.seed_uri={notebook}", "--KernelGatewayApp.ip=127.0.0.1",
         f"--KernelGatewayApp.port={port}", "--KernelGatewayApp.port_retries=0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(HERE), env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/hello", process)
        yield url
    finally:
        stop_process(process)


@contextmanager
def jkg_gateway(notebook: Path, env: dict):
    """jkg with a notebook, configured the reference's way (KG_* environment)."""
    gateway = GatewayProcess("--state-db", "none", env={
        "KG_API": "kernel_gateway.notebook_http", "KG_SEED_URI": str(notebook), **env}).start()
    try:
        wait_http(gateway.url + "/hello", gateway.process)
        yield gateway
    finally:
        kernels = children_of(gateway.process.pid)
        gateway.stop()
        assert not [pid for pid in kernels if pid_alive(pid)], "kernels outlived the gateway"


@pytest.fixture(scope="module")
def reference():
    with reference_gateway(NOTEBOOK, {"KG_STATIC_PATH": str(PUBLIC)}) as url:
        yield url


@pytest.fixture(scope="module")
def jkg():
    with jkg_gateway(NOTEBOOK, {"KG_ALLOW_NOTEBOOK_DOWNLOAD": "True", "KG_STATIC_PATH": str(PUBLIC)}) as gateway:
        yield gateway


CASES = [
    ("GET", "/hello", {}),
    ("GET", "/hello/alice", {}),
    ("GET", "/hello/J%C3%BCrgen%20X", {}),
    ("GET", "/hello/person", {}),  # the literal path wins over /hello/:name
    ("GET", "/echo?a=1&a=2&b=&c=x+y", {}),
    ("POST", "/echo", {"json": {"n": 1, "list": [1, 2], "s": "é"}}),
    ("POST", "/echo", {"data": "not json", "headers": {"Content-Type": "application/json"}}),
    ("POST", "/echo", {"data": {"f": ["1", "2"], "g": "3"}}),
    ("POST", "/echo", {"data": "plain text body", "headers": {"Content-Type": "text/plain"}}),
    ("POST", "/echo", {"data": "", "headers": {"Content-Type": "text/plain"}}),
    ("PUT", "/echo/42", {"json": [1, "two"]}),
    ("DELETE", "/echo/42", {}),
    ("GET", "/headers", {"headers": {"X-Custom-Header": "custom value"}}),
    ("GET", "/result", {}),
    ("GET", "/empty", {}),
    ("GET", "/error", {}),
    ("GET", "/stderr", {}),
    ("GET", "/multi", {}),
    ("POST", "/created", {"json": {"name": "x"}}),
    ("GET", "/env", {}),
    ("GET", "/nowhere", {}),
    ("GET", "/hello/a/b", {}),
    ("POST", "/hello", {}),  # the path exists, the verb does not
    ("OPTIONS", "/hello", {}),  # preflights: 200 and an empty body where a route exists, 404 elsewhere
    ("OPTIONS", "/hello/alice", {"headers": {"Origin": "http://page.example", "Access-Control-Request-Method": "PUT"}}),
    ("OPTIONS", "/_api/spec/swagger.json", {}),
    ("OPTIONS", "/nowhere", {}),
]

HEADERS_THAT_MATTER = ("content-type", "x-thing")


def answer(base: str, method: str, path: str, options: dict):
    response = requests.request(method, base + path, timeout=60, **options)
    headers = {name: response.headers.get(name) for name in HEADERS_THAT_MATTER}
    body = response.content
    if response.status_code in (404, 405):
        body = None  # both are errors; jkg explains them in JSON, the reference varies
        headers = {}
    if method == "OPTIONS":
        headers = {}  # an empty answer: the reference's Content-Type is its framework's default
    return response.status_code, headers, body


@pytest.mark.parametrize("method,path,options", CASES, ids=[f"{m} {p}" for m, p, _ in CASES])
def test_same_answer_as_the_reference(reference, jkg, method, path, options):
    assert answer(jkg.url, method, path, options) == answer(reference, method, path, options)


def test_swagger_matches_the_reference(reference, jkg):
    ours = requests.get(jkg.url + "/_api/spec/swagger.json", timeout=30)
    theirs = requests.get(reference + "/_api/spec/swagger.json", timeout=30)
    assert ours.status_code == theirs.status_code == 200
    assert ours.headers["Content-Type"] == theirs.headers["Content-Type"]
    assert ours.json() == theirs.json()


def test_errors_are_json_and_never_tracebacks(jkg):
    missing = requests.get(jkg.url + "/nowhere", timeout=30)
    assert missing.status_code == 404 and set(missing.json()) == {"reason", "message"}
    wrong_verb = requests.post(jkg.url + "/hello", timeout=30)
    assert wrong_verb.status_code == 405 and wrong_verb.json()["reason"] == "Method Not Allowed"
    raised = requests.get(jkg.url + "/error", timeout=30)
    assert raised.text == "Error ValueError: bad thing \n" and "Traceback" not in raised.text


def test_openapi_3_spec(jkg):
    spec = requests.get(jkg.url + "/_api/spec/openapi.json", timeout=30).json()
    assert spec["openapi"].startswith("3.")
    operation = spec["paths"]["/hello/{name}"]["get"]
    assert operation["parameters"] == [{"name": "name", "in": "path", "required": True,
                                        "schema": {"type": "string"}}]
    assert set(spec["paths"]["/echo/{id}"]) == {"put", "delete"}


def test_notebook_download(jkg):
    response = requests.get(jkg.url + "/_api/source", timeout=30)
    assert response.status_code == 200
    assert response.content == NOTEBOOK.read_bytes()


@pytest.mark.parametrize("path", ["/public/index.html", "/public/missing.html", "/public/../api.ipynb"])
def test_static_files_as_the_reference(reference, jkg, path):
    ours = requests.get(jkg.url + path, timeout=30)
    theirs = requests.get(reference + path, timeout=30)
    assert ours.status_code == theirs.status_code
    if theirs.status_code == 200:
        assert ours.content == theirs.content == (PUBLIC / "index.html").read_bytes()
        assert ours.headers["Content-Type"].split(";")[0] == theirs.headers["Content-Type"].split(";")[0]


SWAGGER_NOTEBOOK = HERE / "notebooks" / "swagger_api.ipynb"
SWAGGER_CASES = [
    ("GET", "/hello", {}),
    ("GET", "/greet/bob", {}),  # the operation's parameter appended to its path
    ("GET", "/greet", {}),
    ("GET", "/unused", {}),  # declared, implemented by no cell: not served
    ("DELETE", "/hello", {}),
    ("OPTIONS", "/greet/bob", {}),
]


def test_swagger_style_notebook_as_the_reference_serves_it():
    """KG_CELL_PARSER=...swagger.parser: a Swagger document in a markdown cell, # operationId: cells."""
    env = {"KG_CELL_PARSER": "kernel_gateway.notebook_http.swagger.parser"}
    with reference_gateway(SWAGGER_NOTEBOOK, env) as theirs, jkg_gateway(SWAGGER_NOTEBOOK, env) as ours:
        for method, path, options in SWAGGER_CASES:
            assert answer(ours.url, method, path, options) == answer(theirs, method, path, options), (method, path)
        posted = [answer(url, "POST", "/hello", {"json": {"n": 1}}) for url in (ours.url, theirs)]
        spec = requests.get(ours.url + "/_api/spec/swagger.json", timeout=30).json()
    # its ResponseInfo cell applies (the reference drops such cells in this style: 200, no header)
    assert posted[0] == (201, {"content-type": "text/plain", "x-thing": "made"}, b'{"n": 1}\n')
    assert posted[1][2] == posted[0][2]
    markdown = "".join(json.loads(SWAGGER_NOTEBOOK.read_text())["cells"][0]["source"])
    declared = json.loads(markdown.split("```")[1])
    assert spec["paths"] == declared["paths"]  # the notebook's own document
    assert spec["info"] == {"version": "1.0.0", "title": "swagger_api"}
