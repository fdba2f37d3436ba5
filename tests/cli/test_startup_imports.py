"""What `dstack ps` and the server's start import: a guard against start-up regressions that
names modules instead of timing them (the figures live in bench/bench_api.py).

`dstack ps` runs against the stub server in a real subprocess; the server's app module is
imported in another. Each prints which of the named modules ended up in `sys.modules`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .stub_server import StubState, serve

# Nothing `ps` renders needs these: the models of other resources (each one is pydantic
# schema building at import), the server, and the libraries other commands use. Nor pydantic
# and httpx themselves: ps reads plain views of the JSON (api/run_views.py) that it got over
# a plain socket (api/transport.py); together they were ~0.25 s of CPU of the 0.15 s budget.
NOT_FOR_PS = (
    "dstack.models.events", "dstack.models.fleets", "dstack.models.server_config",
    "dstack.models.backends", "dstack.models.secrets", "dstack.models.volumes",
    "dstack.models.gpus", "dstack.models.metrics", "dstack.models.users",
    "dstack.models.configurations", "dstack.server", "dstack.cli.apply_runs",
    "httpx._main", "click", "pygments", "rich.markdown", "rich.syntax", "sqlalchemy",
    "fastapi", "asyncssh",
    "httpx", "httpcore", "h11", "certifi", "ssl", "http.client", "email", "urllib.request",
    "pydantic", "pydantic_core", "dstack.models.runs", "dstack.models.instances",
    "dstack.models.offers", "dstack.models.wire", "rich.pretty", "rich.traceback",
)  # fmt: skip

# Loaded only when used: Alembic (with mako and pygments) when the database is not at the
# head revision, asyncssh when a host is reached over SSH, prometheus_client when a pass or a
# proxied request is counted, or when scraped; the reconcilers once the server has answered
# (app.py's background gate); SSH key serialization when a project's key is generated.
NOT_FOR_SERVER_START = (
    "alembic", "mako", "pygments", "asyncssh", "boto3", "botocore", "prometheus_client",
    "dstack.server.reconcilers.run_worker", "dstack.server.reconcilers.job_worker",
    "dstack.server.reconcilers.instance_worker", "dstack.server.reconcilers.fleets",
    "dstack.server.reconcilers.volumes", "dstack.server.reconcilers.sweeper",
    "cryptography.hazmat.primitives.serialization.ssh", "pydantic.v1",
)  # fmt: skip

# Models build their validators when first used (`defer_build`): answering `get_my_user` after
# a start must not build these (each was tens of milliseconds of the cold start).
NOT_BUILT_FOR_FIRST_ANSWER = (
    "dstack.models.runs.Run", "dstack.models.runs.RunSpec", "dstack.models.runs.JobSpec",
    "dstack.models.runs.JobSubmission", "dstack.models.runs.JobProvisioningData",
    "dstack.models.configurations.TaskConfiguration", "dstack.models.profiles.ProfileParams",
    "dstack.models.fleets.Fleet", "dstack.models.requests.ApplyRunPlanRequest",
)  # fmt: skip

REPORT = (
    "import json, sys\n"
    "print(json.dumps(sorted(m for m in {names!r} if sys.modules.get(m) is not None)))\n"
)


def _loaded(code: str, names: tuple[str, ...], env: dict[str, str]) -> tuple[list[str], str]:
    script = code + REPORT.format(names=names)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    return json.loads(lines[-1]), "\n".join(lines[:-1])


def test_ps_imports_only_what_it_renders(tmp_path) -> None:
    state = StubState()
    spec = {"run_name": "guarded-run", "configuration": {"type": "task", "commands": ["true"]}}
    state.runs["guarded-run"] = state.make_run(spec, status="running")
    server, url = serve(state)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DSTACK_")}
        env.update(HOME=str(tmp_path), DSTACK_SERVER_URL=url, DSTACK_TOKEN="t",
                   DSTACK_PROJECT="main", COLUMNS="200")  # fmt: skip
        code = "from dstack.cli.main import main\nassert main(['ps']) == 0\n"
        loaded, output = _loaded(code, NOT_FOR_PS, env)
    finally:
        server.shutdown()
    assert "guarded-run" in output  # the table was really rendered
    assert loaded == []


def test_server_app_imports_no_migration_or_ssh_machinery(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSTACK_")}
    env["HOME"] = str(tmp_path)
    # As `dstack server` runs, up to serving: through the CLI's entry point, which keeps httpx's
    # own command-line client (click, pygments, rich) and pydantic.v1 from loading.
    code = (
        "import uvicorn\n"
        "uvicorn.run = lambda app, **kwargs: None\n"
        "from dstack.cli.main import main\n"
        "main(['server', '--port', '1'])\n"
    )
    loaded, _ = _loaded(code, NOT_FOR_SERVER_START, env)
    assert loaded == []


def test_ps_reads_a_written_config_without_yaml(tmp_path) -> None:
    """`~/.dstack/config.yml` as the server or `dstack project add` writes it is read without
    PyYAML (client_config.quick_load); logging is loaded only to report a broken file."""
    state = StubState()
    server, url = serve(state)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DSTACK_")}
        env.update(HOME=str(tmp_path), COLUMNS="200")
        code = (
            "from dstack import client_config as cc\n"
            f"cc.add_project('main', {url!r}, 'tok-' + 'x' * 40)\n"
            "import sys\n"
            "for m in [m for m in sys.modules if m == 'yaml' or m.startswith('yaml.')]:\n"
            "    del sys.modules[m]\n"
            "from dstack.cli.main import main\nassert main(['ps']) == 0\n"
        )
        loaded, output = _loaded(code, ("yaml", "logging"), env)
    finally:
        server.shutdown()
    assert "NAME" in output
    assert loaded == []


FIRST_ANSWER = """
import importlib, json, sys
from pathlib import Path
import dstack.cli.main
from dstack.server import app as server_app
from dstack.server.settings import Settings
from starlette.testclient import TestClient

async def no_loops(*args):  # the background loops are not what is measured here
    return None

server_app._start_loops = no_loops
tmp = Path(sys.argv[1])
st = Settings(server_dir=tmp, database_url=f"sqlite+aiosqlite:///{tmp / 'db.sqlite'}",
              admin_token="t0ken", local_backend_enabled=False)
with TestClient(server_app.create_app(st)) as c:
    r = c.post("/api/users/get_my_user", headers={"Authorization": "Bearer t0ken"})
    assert r.status_code == 200, r.text
    built = []
    for name in %r:
        module, cls = name.rsplit(".", 1)
        if getattr(importlib.import_module(module), cls).__pydantic_complete__:
            built.append(name)
print(json.dumps(built))
"""


def test_the_first_answer_builds_no_run_or_configuration_model(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSTACK_")}
    env["HOME"] = str(tmp_path)
    script = FIRST_ANSWER % (NOT_BUILT_FOR_FIRST_ANSWER,)
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


SERVE = """
import gc, json, sys
import uvicorn
seen = {}

def fake_run(app, **kwargs):  # what `dstack server` would serve with, not serving
    seen.update(enabled=gc.isenabled(), frozen=gc.get_freeze_count())

uvicorn.run = fake_run
from dstack.cli.main import main
main(["server", "--port", "1"])
print(json.dumps(seen))
"""


def test_dstack_server_serves_with_the_collector_on_and_its_modules_frozen(tmp_path) -> None:
    """The CLI turns the cyclic collector off while the server's modules load (its passes over
    them were ~15% of the cold start); the server must never run with it off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSTACK_")}
    env["HOME"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", SERVE], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["enabled"] is True
    assert seen["frozen"] > 10_000  # the server's modules, classes and functions
