"""The web UI's routes: the page for `/` and client-side routes, assets with the right types,
a CSP on every UI answer, and no fallback for the server's own paths."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dstack.server.main import ui_link
from dstack.server.routers import ui

UI_DIR = Path(ui.__file__).resolve().parent.parent / "ui"


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    ui.install(app)

    @app.get("/metrics")
    async def metrics() -> dict:  # a GET route added after the UI keeps its own answer
        return {"metrics": True}

    @app.post("/api/thing")
    async def thing() -> dict:
        return {}

    return TestClient(app)


@pytest.mark.parametrize("path", ["/", "/runs", "/projects/main/runs/my-run", "/no/such/page"])
def test_page_and_client_routes_answer_index_with_csp(client: TestClient, path: str):
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/ui/app.js">' in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"


def test_assets_are_served_with_their_types(client: TestClient):
    js = client.get("/ui/pages/run.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "content-security-policy" in js.headers
    assert client.get("/ui/style.css").headers["content-type"].startswith("text/css")


@pytest.mark.parametrize("path", ["/ui/nope.js", "/ui/pages", "/ui/%2e%2e/routers/ui.py"])
def test_unknown_or_escaping_assets_are_404(client: TestClient, path: str):
    assert client.get(path).status_code == 404


@pytest.mark.parametrize("path", ["/ui/../routers/ui.py", "/ui/..%2frouters%2fui.py"])
def test_no_file_outside_the_ui_folder_is_served(client: TestClient, path: str):
    assert "APIRouter" not in client.get(path).text


@pytest.mark.parametrize("path", ["/api/nope", "/api/project/main/runs/list", "/proxy/x"])
def test_server_paths_never_fall_back_to_the_page(client: TestClient, path: str):
    r = client.get(path)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"


def test_a_get_route_after_the_ui_keeps_its_answer(client: TestClient):
    assert client.get("/metrics").json() == {"metrics": True}


def test_unknown_posts_stay_404_and_known_paths_keep_405(client: TestClient):
    assert client.post("/api/project/main/secrets/list").status_code == 404
    assert client.post("/runs").status_code == 404
    assert client.get("/api/thing").status_code == 405


def test_every_module_the_page_imports_ships(client: TestClient):
    """Each `import ... from "./x.js"` resolves to a served file (a missing module would leave
    a blank page with no server-side error)."""
    for js in sorted(UI_DIR.rglob("*.js")):
        for target in re.findall(r'from "(\.{1,2}/[^"]+)"', js.read_text()):
            resolved = (js.parent / target).resolve().relative_to(UI_DIR)
            assert client.get(f"/ui/{resolved.as_posix()}").status_code == 200, (js, target)


def test_no_markup_from_strings_in_the_ui():
    """Everything is rendered with DOM calls and text nodes: no innerHTML-like sinks and no
    inline handlers, which the CSP would refuse anyway."""
    for f in [*UI_DIR.rglob("*.js"), *UI_DIR.rglob("*.html")]:
        text = f.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, (f, sink)
        assert not re.search(r"\son[a-z]+=\"", text), f


def test_ui_link_carries_the_token_in_the_fragment():
    assert ui_link("http://127.0.0.1:3000", "a b/c") == "http://127.0.0.1:3000/#token=a%20b%2Fc"
    assert ui_link("http://127.0.0.1:3000", None) == "http://127.0.0.1:3000/"
