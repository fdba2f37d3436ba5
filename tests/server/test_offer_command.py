"""`dstack offer` end to end: the CLI's own `main()` talks HTTP to a served API whose backends
are test doubles answering from gpuhunt catalogs (OfferCatalog over test CSV files)."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from catalog_fixture import CatalogCompute, write_test_catalog
from dstack.cli.main import main
from dstack.models.wire import utcnow
from dstack.server.app import GATE, install_error_handlers
from dstack.server.backends.base import (
    OfferCache,
)
from dstack.server.backends.catalog import OfferCatalog
from dstack.server.backends.registry import BackendRegistry
from dstack.server.db import tables as t
from dstack.server.db.migrate import migrate
from dstack.server.db.session import Database
from dstack.server.routers import offers, users
from dstack.server.services.context import ServerContext
from dstack.server.services.crypto import hash_token

TOKEN = "offer-test-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _seed(db: Database) -> None:
    await migrate(db.engine)
    now = utcnow()
    user, project = str(uuid.uuid4()), str(uuid.uuid4())
    spec = {"configuration": {"type": "fleet", "name": "gcp-only", "backends": ["gcp"]}}
    async with db.session() as s:
        for row in (
            t.User(id=user, name="alice", token_hash=hash_token(TOKEN), created_at=now),
            t.Project(id=project, name="main", owner_id=user, created_at=now),
            t.Member(project_id=project, user_id=user),
            t.Fleet(id=str(uuid.uuid4()), project_id=project, name="gcp-only", status="active",
                    spec=json.dumps(spec), created_at=now, last_processed_at=now),
        ):
            s.add(row)
            await s.flush()
        await s.commit()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("offer")
    write_test_catalog(base / "catalog")
    write_test_catalog(base / "catalog", 40, provider="gcp")
    catalog = OfferCatalog(base / "catalog")
    db = Database(f"sqlite+aiosqlite:///{base / 'db.sqlite'}")
    ctx = ServerContext(settings=None, db=db, box=None)  # type: ignore[arg-type]
    ctx.offer_cache = OfferCache()
    ctx.backends = BackendRegistry(
        shared=[
            CatalogCompute("aws", catalog),
            CatalogCompute("gcp", catalog),
            CatalogCompute("azure", catalog),  # no azure.csv: its offers fail
        ]
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await _seed(db)
        yield
        await db.close()

    app = FastAPI(lifespan=lifespan, dependencies=GATE)  # the server's access gate
    app.state.ctx = ctx
    install_error_handlers(app)
    app.include_router(offers.router)
    app.include_router(users.router)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "test server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture
def dstack(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Any:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DSTACK_SERVER_URL", server)
    monkeypatch.setenv("DSTACK_TOKEN", TOKEN)
    monkeypatch.setenv("DSTACK_PROJECT", "main")
    monkeypatch.setenv("COLUMNS", "250")

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = main(["offer", *args])
        except SystemExit as e:  # argparse refusals
            code = int(e.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def offers_json(dstack: Any, *args: str) -> dict[str, Any]:
    code, out, err = dstack("--json", "--max-offers", "1000", *args)
    assert code == 0, out + err
    return json.loads(out)


def test_all_backend_offers_cheapest_first_without_any_fleet_limit(dstack: Any) -> None:
    data = offers_json(dstack)
    got = data["offers"]
    # aws's 20 rows and gcp's 40, although the project's one fleet allows only gcp.
    assert data["total_offers"] == 60 and len(got) == 60
    assert {o["backend"] for o in got} == {"aws", "gcp"}
    assert [o["price"] for o in got] == sorted(o["price"] for o in got)
    assert data["requirements"]["spot"] is None  # both kinds unless asked
    assert {o["instance"]["resources"]["spot"] for o in got} == {True, False}
    assert data["project"] == "main" and data["user"] == "alice"


def test_backend_gpu_region_spot_and_price_flags(dstack: Any) -> None:
    aws = offers_json(dstack, "--backend", "aws")["offers"]
    assert len(aws) == 20 and {o["backend"] for o in aws} == {"aws"}
    both = offers_json(dstack, "-b", "aws", "--backend", "gcp")
    assert both["total_offers"] == 60
    a100 = offers_json(dstack, "--backend", "aws", "--gpu", "A100")["offers"]
    assert {o["instance"]["name"] for o in a100} == {"p4d.24xlarge"}
    big = offers_json(dstack, "-b", "aws", "--gpu", "80GB:8")["offers"]
    assert {o["instance"]["name"] for o in big} == {"p5.48xlarge"}
    west = offers_json(dstack, "-b", "aws", "--region", "us-west-2")["offers"]
    assert len(west) == 10 and {o["region"] for o in west} == {"us-west-2"}
    spot = offers_json(dstack, "-b", "aws", "--spot")
    assert spot["requirements"]["spot"] is True
    assert len(spot["offers"]) == 10
    assert all(o["instance"]["resources"]["spot"] for o in spot["offers"])
    on_demand = offers_json(dstack, "-b", "aws", "--on-demand")["offers"]
    assert len(on_demand) == 10
    assert not any(o["instance"]["resources"]["spot"] for o in on_demand)
    cheap = offers_json(dstack, "-b", "aws", "--max-price", "0.05")["offers"]
    assert {o["instance"]["name"] for o in cheap} == {"t3.medium", "m5.large"}
    assert max(o["price"] for o in cheap) <= 0.05


def test_spot_and_on_demand_together_are_refused(dstack: Any) -> None:
    code, _, err = dstack("--spot", "--on-demand")
    assert code == 2 and "--spot and --on-demand are mutually exclusive" in err


def test_plain_table_and_the_fleet_hint(dstack: Any) -> None:
    code, out, _ = dstack("-b", "aws", "--gpu", "H100", "--spot", "--max-offers", "1")
    assert code == 0
    assert "aws (us-east-1)" in out or "aws (us-west-2)" in out
    assert "gpu=H100:80GB:8 (spot)" in out and "p5.48xlarge" in out
    assert " Shown 1 of 2 offers, $29.496max" in out
    assert "without any fleet's limits; pass --fleet NAME" in out
    assert "gpu=nvidia:0" not in out


def test_a_backend_not_configured_says_so(dstack: Any) -> None:
    code, out, _ = dstack("-b", "runpod")
    assert code == 0
    assert "No matching instance offers available" in out
    assert "backend runpod is not configured for this project (configured: " in out


def test_a_fleet_shows_what_a_run_in_it_would_get(dstack: Any) -> None:
    got = offers_json(dstack, "--fleet", "gcp-only")["offers"]
    assert got and {o["backend"] for o in got} == {"gcp"}
    assert offers_json(dstack, "--fleet", "no-such-fleet")["offers"] == []


def test_a_backend_without_a_catalog_says_why(dstack: Any) -> None:
    code, out, _ = dstack("-b", "azure")
    assert code == 0
    assert "No matching instance offers available" in out
    assert "backend azure has no offers" in out and "azure.csv does not exist" in out


def test_flags_that_do_not_change_offers_are_refused(dstack: Any) -> None:
    code, out, err = dstack("--idle-duration", "1h")
    assert code == 1 and "--idle-duration" in out + err and "does not take it" in out + err


def test_group_by_gpu_backend_region_count(dstack: Any) -> None:
    data = offers_json(dstack, "-b", "aws", "--group-by", "gpu")
    assert data["group_by"] == ["gpu"] and "offers" not in data
    groups = data["gpus"]
    assert [g["name"] for g in groups] == ["A10G", "A100", "H100"]  # cheapest per GPU first
    a100 = groups[1]
    assert a100["backends"] == ["aws"] and a100["regions"] == ["us-east-1", "us-west-2"]
    assert a100["spot"] == ["spot", "on-demand"] and a100["count"] == {"min": 8, "max": 8}
    assert a100["price"]["max"] == pytest.approx(32.7726 / 8)
    by_region = offers_json(dstack, "-b", "aws", "--group-by", "gpu,backend",
                            "--group-by", "region", "--on-demand")["gpus"]
    assert len(by_region) == 6
    assert all(g["backend"] == "aws" and g["region"] and g["spot"] == ["on-demand"]
               for g in by_region)
    by_count = offers_json(dstack, "-b", "gcp", "--group-by", "gpu,count")["gpus"]
    assert all(g["count"]["min"] == g["count"]["max"] for g in by_count)
    assert [g["price"]["min"] for g in by_count] == sorted(g["price"]["min"] for g in by_count)


def test_group_by_plain_table(dstack: Any) -> None:
    code, out, _ = dstack("-b", "aws", "--gpu", "A100", "--group-by", "gpu,backend")
    assert code == 0
    assert "Group by" in out and "gpu, backend" in out
    assert "A100:40GB:8" in out and "spot, on-demand" in out
    assert "$1.229..$4.0966" in out and "us-east-1, us-west-2" in out


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("backend", "Cannot group by 'backend' without also grouping by 'gpu'"),
        ("gpu,region", "Cannot group by 'region' without also grouping by 'backend'"),
        ("gpu,zone", "Cannot group by 'zone'"),
    ],
)
def test_group_by_rules(dstack: Any, value: str, message: str) -> None:
    code, out, err = dstack("--group-by", value)
    assert code == 1 and message in out + err


def test_the_server_refuses_a_bad_group_by_too(server: str) -> None:
    import httpx

    spec = {"configuration": {"type": "task", "commands": [":"]}}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    url = f"{server}/api/project/main/gpus/list"
    r = httpx.post(url, json={"run_spec": spec, "group_by": ["region"]}, headers=headers)
    assert r.status_code == 400 and "without also grouping by 'backend'" in r.text
    r = httpx.post(url, json={"run_spec": spec, "group_by": ["gpu"]}, headers=headers)
    assert r.status_code == 422

