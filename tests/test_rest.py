"""Every REST route and its error cases, against a real gateway with real kernels."""
import datetime
import re

import pytest

from conftest import TOKEN

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def parse_activity(value: str) -> datetime.datetime:
    # exactly what jupyter_server's gateway client does with it
    return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")


def test_api_version(gateway):
    response = gateway.request("GET", "/api")
    assert response.status_code == 200
    assert response.json()["version"]


def test_status_is_what_thebe_reads(gateway):
    body = gateway.request("GET", "/api/status").json()
    assert set(body) >= {"started", "last_activity", "connections", "kernels"}
    parse_activity(body["started"])
    assert isinstance(body["connections"], int) and isinstance(body["kernels"], int)


def test_kernelspecs_listing(gateway):
    body = gateway.request("GET", "/api/kernelspecs?1795671723725").json()
    assert body["default"] == "python3"
    spec = body["kernelspecs"]["python3"]
    assert spec["name"] == "python3"
    assert spec["spec"]["language"] == "python"
    assert spec["resources"]["logo-64x64"] == "/kernelspecs/python3/logo-64x64.png"


def test_single_kernelspec_and_jupyter_server_user_form(gateway):
    assert gateway.request("GET", "/api/kernelspecs/python3").json()["name"] == "python3"
    # jupyter_server appends ?user=U and then /NAME after the query
    response = gateway.request("GET", "/api/kernelspecs?user=alice/python3")
    assert response.status_code == 200 and response.json()["name"] == "python3"


def test_unknown_kernelspec_is_404_json(gateway):
    response = gateway.request("GET", "/api/kernelspecs/no-such-kernel")
    assert response.status_code == 404
    assert response.json()["reason"] == "Not Found"


def test_kernelspec_logo_get_and_head(gateway):
    response = gateway.request("GET", "/kernelspecs/python3/logo-64x64.png")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"
    assert response.content.startswith(b"\x89PNG")
    head = gateway.request("HEAD", "/kernelspecs/python3/logo-64x64.png")
    assert head.status_code == 200 and head.content == b""


@pytest.mark.parametrize("path", [
    "/kernelspecs/python3/../../../../etc/passwd",
    "/kernelspecs/python3/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/kernelspecs/python3/..%2fkernel.json",
    "/kernelspecs/python3/no-such-file.png",
    "/kernelspecs/..%2f..%2fetc/passwd",
])
def test_kernelspec_resources_cannot_escape(gateway, path):
    response = gateway.request("GET", path)
    assert response.status_code == 404
    assert b"root:" not in response.content


def test_kernel_lifecycle_over_rest(gateway):
    response = gateway.request("POST", "/api/kernels?1795671723734", json={"name": "python3"})
    assert response.status_code == 201
    model = response.json()
    assert UUID.match(model["id"])
    assert response.headers["Location"] == f"/api/kernels/{model['id']}"
    assert set(model) == {"id", "name", "last_activity", "execution_state", "connections"}
    assert model["connections"] == 0
    parse_activity(model["last_activity"])

    assert model["id"] in [k["id"] for k in gateway.request("GET", "/api/kernels").json()]
    assert gateway.request("GET", f"/api/kernels/{model['id']}").json()["name"] == "python3"
    assert gateway.request("POST", f"/api/kernels/{model['id']}/interrupt", json={}).status_code == 204
    restarted = gateway.request("POST", f"/api/kernels/{model['id']}/restart", json={})
    assert restarted.status_code == 200 and restarted.json()["id"] == model["id"]
    assert gateway.request("DELETE", f"/api/kernels/{model['id']}").status_code == 204
    assert gateway.request("GET", f"/api/kernels/{model['id']}").status_code == 404
    assert model["id"] not in [k["id"] for k in gateway.request("GET", "/api/kernels").json()]


def test_empty_body_starts_the_default_kernel(gateway):
    response = gateway.request("POST", "/api/kernels", data=b"")
    assert response.status_code == 201
    assert response.json()["name"] == "python3"
    gateway.request("DELETE", f"/api/kernels/{response.json()['id']}")


@pytest.mark.parametrize("method,path", [
    ("GET", "/api/kernels/00000000-0000-0000-0000-000000000000"),
    ("DELETE", "/api/kernels/00000000-0000-0000-0000-000000000000"),
    ("POST", "/api/kernels/00000000-0000-0000-0000-000000000000/interrupt"),
    ("POST", "/api/kernels/00000000-0000-0000-0000-000000000000/restart"),
    ("GET", "/api/kernels/not-even-a-uuid"),
    ("GET", "/api/sessions/00000000-0000-0000-0000-000000000000"),
    ("PATCH", "/api/sessions/00000000-0000-0000-0000-000000000000"),
    ("DELETE", "/api/sessions/00000000-0000-0000-0000-000000000000"),
    ("GET", "/api/contents"),
    ("GET", "/"),
])
def test_unknown_things_are_404_json(gateway, method, path):
    response = gateway.request(method, path, json={})
    assert response.status_code == 404
    body = response.json()
    assert set(body) == {"reason", "message"}
    assert "Traceback" not in response.text


def test_unknown_kernel_name_is_404(gateway):
    response = gateway.request("POST", "/api/kernels", json={"name": "no-such-kernel"})
    assert response.status_code == 404
    assert "no-such-kernel" in response.json()["message"]


@pytest.mark.parametrize("body", [
    b"{not json",
    b"[1, 2]",
    b'"a string"',
    b'{"name": 5}',
    b'{"env": "PATH=/tmp"}',
    b'{"env": {"KERNEL_X": 5}}',
    b'{"env": {"KERNEL_X": "' + b"x" * 10000 + b'"}}',
    b'{"env": {"KERNEL_LAUNCH_TIMEOUT": "soon"}}',
])
def test_bad_start_requests_are_400(gateway, body):
    response = gateway.request("POST", "/api/kernels", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"reason", "message"}


def test_kernel_env_is_filtered(gateway):
    env = {"KERNEL_USERNAME": "alice", "KERNEL_LAUNCH_TIMEOUT": "40", "HOME_SECRET": "leak",
           "JPY_SESSION_NAME": "x.ipynb", "KERNEL_GATEWAY": "0", "PATH": "/nowhere"}
    kernel = gateway.start_kernel(env=env)
    with gateway.connect(kernel["id"]) as client:
        messages = client.run("import os, json; print(json.dumps(dict(os.environ)))")
    import json

    from support import stdout_of

    seen = json.loads(stdout_of(messages))
    assert seen["KERNEL_USERNAME"] == "alice"
    assert seen["KERNEL_GATEWAY"] == "1"
    assert "HOME_SECRET" not in seen and "JPY_SESSION_NAME" not in seen
    assert TOKEN not in json.dumps(seen)
    assert seen["PATH"] != "/nowhere"
    gateway.request("DELETE", f"/api/kernels/{kernel['id']}")


def test_auth_is_required(gateway):
    no_token = gateway.request("GET", "/api/kernels", headers={"Authorization": ""})
    assert no_token.status_code == 401
    assert no_token.json()["reason"] == "Unauthorized"
    wrong = gateway.request("GET", "/api/kernels", headers={"Authorization": "token nope"})
    assert wrong.status_code == 401
    empty = gateway.request("GET", "/api/kernels", headers={"Authorization": "token "})
    assert empty.status_code == 401


@pytest.mark.parametrize("headers,query", [
    ({"Authorization": f"token {TOKEN}"}, ""),
    ({"Authorization": f"Bearer {TOKEN}"}, ""),
    ({"Authorization": ""}, f"?token={TOKEN}"),
    ({"Authorization": ""}, f"?1795671889957=&token={TOKEN}"),
])
def test_token_forms(gateway, headers, query):
    assert gateway.request("GET", "/api/kernels" + query, headers=headers).status_code == 200


def test_sessions_api(gateway):
    created = gateway.request("POST", "/api/sessions", json={
        "path": "notebooks/a.ipynb", "type": "notebook", "name": "a.ipynb", "kernel": {"name": "python3"}})
    assert created.status_code == 201, created.text
    session = created.json()
    assert session["path"] == "notebooks/a.ipynb" and session["kernel"]["name"] == "python3"
    assert created.headers["Location"] == f"/api/sessions/{session['id']}"
    kernel_id = session["kernel"]["id"]

    assert gateway.request("GET", f"/api/sessions/{session['id']}").json()["id"] == session["id"]
    assert session["id"] in [s["id"] for s in gateway.request("GET", "/api/sessions").json()]
    # the same path again returns the existing session instead of failing
    again = gateway.request("POST", "/api/sessions", json={"path": "notebooks/a.ipynb", "type": "notebook"})
    assert again.status_code == 201 and again.json()["id"] == session["id"]

    renamed = gateway.request("PATCH", f"/api/sessions/{session['id']}", json={"path": "b.ipynb"})
    assert renamed.status_code == 200 and renamed.json()["path"] == "b.ipynb"
    assert renamed.json()["kernel"]["id"] == kernel_id

    assert gateway.request("DELETE", f"/api/sessions/{session['id']}").status_code == 204
    assert gateway.request("GET", f"/api/sessions/{session['id']}").status_code == 404
    assert gateway.request("GET", f"/api/kernels/{kernel_id}").status_code == 404


def test_session_survives_listing_after_kernel_deleted(gateway):
    session = gateway.request("POST", "/api/sessions", json={"path": "c.ipynb", "type": "notebook"}).json()
    gateway.request("DELETE", f"/api/kernels/{session['kernel']['id']}")
    assert session["id"] not in [s["id"] for s in gateway.request("GET", "/api/sessions").json()]
    assert gateway.request("GET", f"/api/sessions/{session['id']}").status_code == 404


@pytest.mark.parametrize("body", [{}, {"path": 5}, {"path": "x", "kernel": "python3"}])
def test_bad_session_requests_are_400(gateway, body):
    response = gateway.request("POST", "/api/sessions", json=body)
    assert response.status_code == 400
    assert set(response.json()) == {"reason", "message"}
