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
# proxied request is counted, or when scraped.
NOT_FOR_SERVER_START = (
    "alembic", "mako", "pygments", "asyncssh", "boto3", "botocore", "prometheus_client",
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
    # As `dstack server` runs: through the CLI's entry point, which keeps httpx's own
    # command-line client (click, pygments, rich) from loading.
    code = "import dstack.cli.main, dstack.server.main, dstack.server.app\n"
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
