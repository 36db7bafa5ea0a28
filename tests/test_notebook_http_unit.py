"""Fast units of notebook-http: the annotation parser, REQUEST and response builders, the pool policy."""
from __future__ import annotations

import base64
import json

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from jkg.errors import BadRequest
from jkg.notebook_http.annotations import (
    AnnotationError,
    first_param_depth,
    parse_notebook,
    path_regex,
    swagger_spec,
)
from jkg.notebook_http.bundle import assignment, headers_dict, parse_body, query_args, request_bundle
from jkg.notebook_http.pool import KernelPool, PoolUnavailable
from jkg.notebook_http.response import CellOutput, ResponseInfoError, apply_response_info, build_response
from jkg.notebook_http.swagger_cells import parse_swagger_notebook, swagger_from_cell


def notebook(*sources, language="python", kernel="python3"):
    return {"cells": [{"cell_type": "code", "source": s} for s in sources],
            "metadata": {"kernelspec": {"name": kernel}, "language_info": {"name": language}}}


# -- annotations ----------------------------------------------------------------------------------
def test_endpoints_seed_cells_and_concatenation():
    api = parse_notebook(notebook("x = 1", "# GET /a\nprint(1)", "# GET /a\nprint(2)", "# POST /a\nprint(3)",
                                  "# ResponseInfo POST /a\nprint('{}')"), "nb")
    assert api.seed_cells == ("x = 1",)
    (endpoint,) = api.endpoints
    assert endpoint.sources == {"GET": "# GET /a\nprint(1)\n# GET /a\nprint(2)\n", "POST": "# POST /a\nprint(3)\n"}
    assert endpoint.responses == {"POST": "# ResponseInfo POST /a\nprint('{}')\n"}
    assert api.kernel_name == "python3" and api.language == "python"


def test_route_order_is_the_references():
    api = parse_notebook(notebook("# GET /a/:x", "# GET /a/b/:y", "# GET /a/b", "# GET /:z"), "nb")
    assert [e.path for e in api.endpoints] == ["/a/b", "/a/b/:y", "/a/:x", "/:z"]
    endpoint, params = api.route("/a/b")
    assert endpoint.path == "/a/b" and params == {}
    endpoint, params = api.route("/a/J%C3%BC")
    assert endpoint.path == "/a/:x" and params == {"x": "J%C3%BC"}
    assert api.route("/a/b/c/d") is None
    assert first_param_depth("/foo/quo/:bar") == 2 and path_regex("/h/:n") == r"/h/(?P<n>[^\/]+)"


def test_scala_comment_prefix():
    api = parse_notebook(notebook("// GET /s\nprintln(1)", language="scala"), "nb")
    assert api.endpoints[0].path == "/s"


@pytest.mark.parametrize("source,fragment", [
    ("# GET hello", "bad annotation '# GET hello'"),
    ("# PATCH /x", "bad annotation '# PATCH /x'"),
    ("# GET /x/:1bad", "is not a name"),
    ("# GET /x/:a/:a", "appears twice"),
    ("# GET /x/(unclosed", "not a valid route pattern"),
    ("# ResponseInfo GET /other", "which no cell defines"),
])
def test_bad_annotations_name_the_cell(source, fragment):
    with pytest.raises(AnnotationError) as raised:
        parse_notebook(notebook("import json", "# GET /ok\nprint(1)", source), "api")
    message = str(raised.value)
    assert message.startswith("api: code cell 3:") and fragment in message and "\n" not in message


def test_no_endpoints_is_an_error():
    with pytest.raises(AnnotationError, match="no endpoints"):
        parse_notebook(notebook("x = 1"), "api")


# -- swagger-style notebooks ---------------------------------------------------------------------
SWAGGER = {"swagger": "2.0", "info": {"version": "1"}, "paths": {
    "/hello": {"get": {"operationId": "hello"}, "POST": {"operationId": "post_hello"}},
    "/greet": {"parameters": [], "get": {"operationId": "greet", "parameters": [{"name": "person", "in": "path"}]}},
    "/unused": {"get": {"operationId": "unused"}}}}


def swagger_notebook(*codes, document=SWAGGER):
    nb = notebook(*codes)
    nb["cells"].insert(0, {"cell_type": "markdown", "source": ["# API\n", "```\n", json.dumps(document, indent=1),
                                                               "\n```\n", "trailing prose"]})
    return nb


def test_swagger_notebook_endpoints_params_responses_and_seeds():
    api = parse_swagger_notebook(swagger_notebook(
        "import json", "# operationId: hello\nprint(1)", "#operationId:post_hello\nprint(2)",
        "# operationId: greet\nprint(3)", "# operationId: hello\nprint(4)",
        "# ResponseInfo operationId: hello\nprint('{}')"), "nb")
    assert api.seed_cells == ("import json",)
    assert [e.path for e in api.endpoints] == ["/hello", "/greet/:person"]
    hello, greet = api.endpoints
    assert hello.sources == {"GET": "# operationId: hello\nprint(1)\n# operationId: hello\nprint(4)\n",
                             "POST": "#operationId:post_hello\nprint(2)\n"}
    assert hello.responses == {"GET": "# ResponseInfo operationId: hello\nprint('{}')\n"}
    assert api.route("/greet/bob")[1] == {"person": "bob"} and api.route("/unused") is None
    spec = swagger_spec(api)
    assert spec["paths"] == SWAGGER["paths"] and spec["info"] == {"version": "1", "title": "nb"}


def test_swagger_document_is_found_as_the_reference_finds_it():
    assert swagger_from_cell("```\n{\"swagger\": \"2.0\",\n\"paths\": {}}\n```") == {"swagger": "2.0", "paths": {}}
    assert swagger_from_cell('{"swagger": "2.0"}') == {"swagger": "2.0"}  # short cells: no fence needed
    assert swagger_from_cell("```\n{\"openapi\": \"3\"}\n```") is None
    assert swagger_from_cell("```\nnot json\n```") is None


@pytest.mark.parametrize("codes,document,fragment", [
    (("# operationId: nope\nprint(1)",), SWAGGER, "code cell 1: operationId 'nope' is not declared"),
    (("# operationId: hello\nprint(1)", "# ResponseInfo operationId: greet\nprint(2)"), SWAGGER,
     "code cell 2: ResponseInfo for operation 'greet', which no cell defines"),
    (("# operationId: p\nprint(1)",), {"swagger": "2.0", "paths": {"/p": {"patch": {"operationId": "p"}}}},
     "code cell 1: operation 'p' is PATCH"),
    (("x = 1",), SWAGGER, "no endpoints were discovered"),
    (("# operationId: hello\nprint(1)",), None, "no Swagger document found"),
    (("# operationId: hello\nprint(1)",), {"swagger": "2.0"}, "declares no paths"),
])
def test_bad_swagger_notebooks_are_refused_in_one_line(codes, document, fragment):
    nb = swagger_notebook(*codes, document=document) if document else notebook(*codes)
    with pytest.raises(AnnotationError) as raised:
        parse_swagger_notebook(nb, "api")
    assert fragment in str(raised.value) and "\n" not in str(raised.value)


# -- REQUEST -------------------------------------------------------------------------------------
def test_request_bundle_is_double_encoded_like_the_reference():
    bundle = request_bundle({"a": 1}, {"q": ["1"]}, {"id": "7"}, {"Host": "h"})
    assert bundle == '{"body": {"a": 1}, "args": {"q": ["1"]}, "path": {"id": "7"}, "headers": {"Host": "h"}}'
    statement = assignment(bundle, "python")
    assert statement == "REQUEST = " + json.dumps(bundle)
    scope: dict = {}
    exec(statement, scope)  # noqa: S102 - a literal we just built
    assert json.loads(scope["REQUEST"])["path"] == {"id": "7"}
    assert assignment(bundle, "perl").startswith("my $REQUEST = \"")
    assert assignment(bundle, "bash").startswith("REQUEST=\"")


def test_bodies():
    assert parse_body(b'{"a": [1]}', "application/json") == {"a": [1]}
    assert parse_body(b"{not", "application/json") == "{not"
    assert parse_body(b'{"a": 1}', "application/json; charset=utf-8") == '{"a": 1}'  # as the reference
    assert parse_body(b"a=1&a=2&b=", "application/x-www-form-urlencoded") == {"a": ["1", "2"], "b": [""]}
    assert parse_body(b"", None) == ""
    form = (b'--B\r\nContent-Disposition: form-data; name="f"\r\n\r\nv\r\n'
            b'--B\r\nContent-Disposition: form-data; name="up"; filename="x"\r\n\r\nfile\r\n--B--\r\n')
    assert parse_body(form, "multipart/form-data; boundary=B") == {"f": ["v"]}
    with pytest.raises(BadRequest):
        parse_body(b"\xff\xfe", "text/plain")


def test_query_and_headers():
    assert query_args(b"p=a&p=b&x=1+2&e=") == {"p": ["a", "b"], "x": ["1 2"], "e": [""]}
    assert headers_dict([("x-custom-header", "1"), ("host", "h"), ("X-Custom-Header", "2")]) == {
        "X-Custom-Header": ["1", "2"], "Host": "h"}


# -- responses ----------------------------------------------------------------------------------
def output(*messages):
    out = CellOutput()
    for msg_type, content in messages:
        out.add(msg_type, content)
    return out


def test_response_precedence():
    assert build_response(output(("stream", {"name": "stdout", "text": "a"}),
                                 ("execute_result", {"data": {"text/plain": "2"}}))).body == b"a"
    assert build_response(output(("execute_result", {"data": {"text/plain": "2"}}))).body == b'{"text/plain": "2"}'
    assert build_response(output(("stream", {"name": "stderr", "text": "x"}))).body == b""
    failed = build_response(output(("stream", {"name": "stdout", "text": "a"}),
                                   ("error", {"ename": "KeyError", "evalue": "'k'", "traceback": ["..."]})))
    assert (failed.status, failed.body) == (500, b"Error KeyError: 'k' \n")


def test_display_data_becomes_a_binary_body():
    png = b"\x89PNG\r\n\x1a\nfake"
    response = build_response(output(("display_data", {"data": {
        "image/png": base64.b64encode(png).decode(), "text/plain": "<Figure>"}})))
    assert (response.status, response.headers["Content-Type"], response.body) == (200, "image/png", png)
    html = build_response(output(("display_data", {"data": {"text/html": "<b>x</b>", "text/plain": "x"}})))
    assert html.headers["Content-Type"] == "text/html; charset=utf-8" and html.body == b"<b>x</b>"


def test_response_info():
    base = build_response(output(("stream", {"name": "stdout", "text": "{}"})))
    applied = apply_response_info(base, '{"status": 201, "headers": {"content-type": "application/json", "X-N": 3}}')
    assert applied.status == 201 and applied.headers == {"content-type": "application/json", "X-N": "3"}
    framing = apply_response_info(base, '{"headers": {"Content-Length": "1", "Transfer-Encoding": "chunked"}}')
    assert framing.headers == {"Content-Type": "text/plain"}, "the gateway frames the response itself"
    for bad in ("nothing", '{"status": "201"}', '{"status": 99}', '{"headers": {"X": "a\\r\\nb"}}',
                '{"headers": {"bad name": "v"}}', "[1]"):
        with pytest.raises(ResponseInfoError):
            apply_response_info(base, bad)


# -- the pool --------------------------------------------------------------------------------------
class FakeRunner:
    def __init__(self, number):
        self.number = number
        self.lost = False
        self.tenant = None


class Spawner:
    def __init__(self):
        self.pending: list[Deferred] = []
        self.made = 0
        self.retired: list = []

    def spawn(self):
        d = Deferred()
        self.pending.append(d)
        return d

    def finish_all(self):
        pending, self.pending = self.pending, []
        for d in pending:
            self.made += 1
            d.callback(FakeRunner(self.made))

    def retire(self, runner):
        self.retired.append(runner)
        return succeed(None)


def make_pool(**options):
    clock, spawner = Clock(), Spawner()
    pool = KernelPool(spawner.spawn, spawner.retire, clock, **options)
    return pool, clock, spawner


def results(d):
    box = []
    d.addBoth(box.append)
    return box


def test_pool_grows_to_its_bound_under_load():
    pool, clock, spawner = make_pool(min_size=1, max_size=3)
    pool.start()
    spawner.finish_all()
    got = [results(pool.acquire()) for _ in range(5)]
    assert len(got[0]) == 1 and pool.size == 3  # one served at once, two more kernels starting
    spawner.finish_all()
    assert [len(box) for box in got] == [1, 1, 1, 0, 0]
    pool.release(got[0][0])
    assert len(got[3]) == 1 and got[3][0] is got[0][0]
    assert pool.size == 3


def test_queue_limit_and_wait_limit_give_503_with_retry_after():
    pool, clock, spawner = make_pool(min_size=1, max_size=1, queue_limit=2, queue_timeout=10)
    pool.start()
    spawner.finish_all()
    held = results(pool.acquire())
    waiting = [results(pool.acquire()) for _ in range(2)]
    with pytest.raises(PoolUnavailable) as refused:
        pool.acquire()
    assert refused.value.status == 503 and "Retry-After" in refused.value.headers
    clock.advance(10)
    assert all(box and isinstance(box[0].value, PoolUnavailable) for box in waiting)
    assert not pool.waiters and held


def test_tenant_quota_lets_others_go_first():
    pool, clock, spawner = make_pool(min_size=2, max_size=2)
    pool.start()
    spawner.finish_all()
    first = results(pool.acquire("alice", 1))
    second = results(pool.acquire("alice", 1))
    third = results(pool.acquire("bob", 1))
    assert first and not second and third
    pool.release(first[0])
    assert second


def test_lost_kernels_are_replaced_and_drain_retires_everything():
    pool, clock, spawner = make_pool(min_size=2, max_size=2)
    pool.start()
    spawner.finish_all()
    busy = results(pool.acquire())[0]
    idle = pool.idle[0]
    idle.lost = True
    pool.lost(idle)
    assert spawner.retired == [idle] and pool.starting == 1
    spawner.finish_all()
    drained = results(pool.drain())
    assert not drained  # a request still runs
    with pytest.raises(PoolUnavailable):
        pool.acquire()
    pool.release(busy)
    assert drained and len(spawner.retired) == 3


def test_idle_kernels_above_the_minimum_are_trimmed():
    pool, clock, spawner = make_pool(min_size=1, max_size=3, idle_ttl=60)
    pool.start()
    spawner.finish_all()
    held = [results(pool.acquire()) for _ in range(3)]
    spawner.finish_all()
    for box in held:
        pool.release(box[0])
    clock.advance(61)
    pool.trim()
    assert len(pool.idle) == 1 and len(spawner.retired) == 2


def test_a_launch_failure_with_no_kernel_fails_the_waiters():
    pool, clock, spawner = make_pool(min_size=1, max_size=1)
    pool.start()
    waiting = results(pool.acquire())
    spawner.pending.pop().errback(RuntimeError("no such kernel"))
    assert waiting and "no kernel could be started" in str(waiting[0].value)


def test_a_hung_kernel_is_replaced_even_above_the_minimum():
    pool, clock, spawner = make_pool(min_size=1, max_size=3)
    pool.start()
    spawner.finish_all()
    held = [results(pool.acquire()) for _ in range(2)]
    spawner.finish_all()
    pool.discard(held[0][0], replace=True)
    assert spawner.retired == [held[0][0]] and pool.starting == 1


def test_when_ready_fires_with_the_first_kernel_or_fails_with_the_launch():
    pool, clock, spawner = make_pool(min_size=1, max_size=2)
    pool.start()
    ready = results(pool.when_ready())
    assert not ready
    spawner.finish_all()
    assert ready == [None]
    broken, _, broken_spawner = make_pool(min_size=1, max_size=1)
    broken.start()
    failed = results(broken.when_ready())
    broken_spawner.pending.pop().errback(RuntimeError("seed cell 1 failed"))
    assert "seed cell 1 failed" in str(failed[0].value)


# -- a request's journey on fakes (no kernel, no sockets): app + pool + runner ----------------------
from jkg.kernels.messages import KernelMessage, make_message_parts  # noqa: E402
from jkg.notebook_http.app import GatewayTimeout, HttpRequest, NotebookApp, PoolSettings  # noqa: E402
from jkg.testing import FakeRegistry  # noqa: E402


class _Attached:
    """The IAttachedKernel a runner holds: records execute requests."""

    def __init__(self, registry, kernel):
        self.registry, self.kernel = registry, kernel

    def send(self, client, message):
        code = json.loads(message.parts[3])["code"]
        self.registry.requests.append((self.kernel.id, client, message.header["msg_id"], code))

    def detach(self, client):
        self.kernel.detach(client)


class ScriptedRegistry(FakeRegistry):
    """FakeRegistry whose kernels receive execute requests and can be made to answer."""

    def __init__(self):
        super().__init__()
        self.requests: list = []  # (kernel_id, client, msg_id, code)

    def attach(self, kernel_id, client):
        return _Attached(self, super().attach(kernel_id, client))

    def answer(self, index=-1, stdout="ok\n"):
        _, client, msg_id, _ = self.requests[index]
        for msg_type, content in (("stream", {"name": "stdout", "text": stdout}),
                                  ("status", {"execution_state": "idle"})):
            parts = make_message_parts(msg_type, content, "kernel", {"msg_id": msg_id})
            message = KernelMessage("iopub", b"", parts, "m", msg_type, msg_id)
            if msg_type == "status":
                message.execution_state = "idle"
            client.deliver(message)


def journey(**settings):
    registry, clock = ScriptedRegistry(), Clock()
    api = parse_notebook(notebook("import json", "# GET /x/:id\nprint(json.loads(REQUEST)['path']['id'])"), "nb")
    app = NotebookApp(api, registry, clock, PoolSettings(**settings))
    app.start()
    endpoint, params = api.route("/x/7")
    request = HttpRequest("GET", b"", [("host", "h")], b"", None)
    return registry, clock, app, lambda: results(app.handle(endpoint, params, request))


def test_request_runs_seed_then_one_combined_execute():
    registry, clock, app, call = journey()
    assert registry.requests[0][3] == "import json"  # the seed cell, before the kernel serves
    registry.answer(0, "")
    response = call()
    code = registry.requests[-1][3]
    assert code.startswith("REQUEST = ") and code.endswith("# GET /x/:id\nprint(json.loads(REQUEST)['path']['id'])\n")
    registry.answer(-1, "7\n")
    assert response[0].status == 200 and response[0].body == b"7\n"
    assert len(app.pool.idle) == 1


def test_overrun_is_504_then_interrupt_then_replacement():
    registry, clock, app, call = journey(request_timeout=5, interrupt_grace=2)
    registry.answer(0, "")
    first_kernel = registry.requests[0][0]
    response = call()
    clock.advance(5)
    assert isinstance(response[0].value, GatewayTimeout) and response[0].value.status == 504
    assert registry.interrupted == [first_kernel]
    clock.advance(2)  # no idle after the interrupt: shut down and replaced
    assert first_kernel not in registry.kernels and len(registry.kernels) == 1
    registry.answer(-1, "")  # the replacement's seed
    assert len(app.pool.idle) == 1 and not app.pool.busy


def test_overrun_that_answers_its_interrupt_keeps_the_kernel():
    registry, clock, app, call = journey(request_timeout=5, interrupt_grace=2)
    registry.answer(0, "")
    kernel_id = registry.requests[0][0]
    call()
    clock.advance(5)
    registry.answer(-1, "")  # KeyboardInterrupt, then idle
    clock.advance(2)
    assert list(registry.kernels) == [kernel_id] and len(app.pool.idle) == 1
