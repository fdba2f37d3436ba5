"""The model router's resolving (`proxy/openai.py`): what a `/proxy/models/<project>/...`
request means and which service it goes to, without a server. The forwarding itself is
covered end to end in tests/e2e/test_services_scaling.py."""

from __future__ import annotations

import asyncio

import pytest

from dstack.server.proxy import openai
from dstack.server.proxy.errors import HTTPError
from dstack.server.proxy.registry import Service

MODELS = [("llama", "llm"), ("tgi-model", "tgi")]


def service(run: str, model: dict | None, active: bool = True) -> Service:
    return Service("id-" + run, "p1", "main", run, True, True, model, [], active=active)


class FakeRegistry:
    def __init__(self, services: dict[str, Service]) -> None:
        self.services = services

    async def service(self, project: str, run: str) -> Service | None:
        return self.services.get(run)


def error_of(fn, *args) -> HTTPError:  # noqa: ANN001
    with pytest.raises(HTTPError) as info:
        fn(*args)
    return info.value


def test_split_path():
    assert openai.split_path("main/chat/completions") == ("main", "chat/completions")
    assert openai.split_path("main/models/") == ("main", "models")
    assert openai.split_path("main") == ("main", "")


def test_endpoints_and_methods():
    assert openai.endpoint_for("models", "GET") == openai.LIST
    assert openai.endpoint_for("models", "HEAD") == openai.LIST
    assert openai.endpoint_for("completions", "POST") == "completions"
    unknown = error_of(openai.endpoint_for, "models", "POST")
    assert (unknown.status, unknown.code) == (404, "resource_not_exists")
    assert "use /models, /chat/completions or /completions" in unknown.message
    wrong = error_of(openai.endpoint_for, "chat/completions", "GET")
    assert (wrong.status, wrong.message) == (405, "/chat/completions accepts POST only")


def test_listing_is_openai_shaped():
    listing = openai.model_list("main", MODELS)
    assert listing["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in listing["data"]] == [
        ("llama", "model", "main"),
        ("tgi-model", "model", "main"),
    ]


@pytest.mark.parametrize("body", [b"", b"not json", b"[1]", b'{"model": ""}', b'{"model": 3}'])
def test_body_without_a_model_is_400(body: bytes):
    err = error_of(openai.model_name, body)
    assert (err.status, err.code) == (400, "invalid_request")


def test_resolve_goes_to_the_model_prefix():
    registry = FakeRegistry(
        {
            "llm": service("llm", {"name": "llama", "prefix": "/openai/v1/"}),
            "tgi": service("tgi", {"name": "tgi-model"}),
        }
    )
    body = b'{"model": "llama", "messages": []}'
    svc, path = asyncio.run(openai.resolve(registry, "main", MODELS, body, "chat/completions"))
    assert (svc.run_name, path) == ("llm", "/openai/v1/chat/completions")
    body = b'{"model": "tgi-model"}'
    svc, path = asyncio.run(openai.resolve(registry, "main", MODELS, body, "completions"))
    assert (svc.run_name, path) == ("tgi", "/v1/completions")


@pytest.mark.parametrize(
    "services",
    [
        {},  # listed, but the service is gone
        {"llm": service("llm", {"name": "llama"}, active=False)},
        {"llm": service("llm", None)},  # no longer a model service
    ],
)
def test_unknown_or_gone_model_is_404_naming_it(services: dict[str, Service]):
    registry = FakeRegistry(services)
    for name in ("llama", "gpt-nope"):
        body = b'{"model": "%s"}' % name.encode()
        with pytest.raises(HTTPError) as info:
            asyncio.run(openai.resolve(registry, "main", MODELS, body, "completions"))
        assert info.value.status == 404
        assert info.value.message == f"Model {name} not found in project main"
