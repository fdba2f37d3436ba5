"""The web UI in a real browser against a real server, agent and runs: sign in, a run's
status and logs as they change, stop, metrics, escaping, and screenshots of each page."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..harness import Server, wait_until, write_config
from ..services_util import apply_detached, service, service_dir, service_server, wait_serving

pytestmark = pytest.mark.e2e
TIMEOUT_MS = 60_000


def task(name: str, *commands: str) -> str:
    cmds = "\n".join(f"  - {json.dumps(c)}" for c in commands)
    return (
        f"type: task\nname: {name}\ncommands:\n{cmds}\n"
        "resources:\n  cpu: 1..\n  memory: 0.5GB..\n  disk: 1GB..\n"
    )


def submit(server: Server, project_dir: Path, name: str, *commands: str) -> None:
    write_config(project_dir, f"{name}.dstack.yml", task(name, *commands))
    r = server.cli("apply", "-f", f"{name}.dstack.yml", "-y", "-d", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr


def sign_in(page, server: Server, path: str = "/") -> None:  # noqa: ANN001
    page.goto(f"{server.url}{path}#token={server.token}")
    page.wait_for_selector("#whoami", timeout=TIMEOUT_MS)


def run_status(page) -> str | None:  # noqa: ANN001
    badge = page.query_selector("main h1 .status")
    return badge.get_attribute("data-status") if badge else None


def test_the_server_prints_the_ui_sign_in_link(server: Server):
    log = (server.home / "server.log").read_text()
    assert f"The web UI: {server.url}/#token={server.token}" in log


def test_page_has_csp_and_deep_links_load_the_page(server: Server):
    r = httpx.get(f"{server.url}/projects/main/runs/anything")
    assert r.status_code == 200 and "/ui/app.js" in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    # The API's unknown paths stay JSON errors (the UI's fallback never answers them): refused
    # before routing without a token, 404 with one.
    assert httpx.get(f"{server.url}/api/nope").status_code == 403
    auth = {"Authorization": f"Bearer {server.token}"}
    assert httpx.get(f"{server.url}/api/nope", headers=auth).status_code == 404
    assert httpx.get(f"{server.url}/healthcheck").json() == {"status": "running"}


def test_sign_in_form_refuses_a_bad_token_and_keeps_a_good_one(server: Server, page, shots):  # noqa: ANN001
    page.goto(f"{server.url}/runs")
    page.wait_for_selector("form#login")
    assert page.url.endswith("/login")
    page.screenshot(path=str(shots / "login.png"))
    page.fill("#token", "not-a-token")
    page.click("form#login button")
    page.wait_for_selector("form#login .error:has-text('not valid')")
    page.fill("#token", server.token)
    page.click("form#login button")
    page.wait_for_selector("#whoami:has-text('admin')")
    assert page.evaluate("localStorage.getItem('dstack.token')") == server.token
    page.click("#signout")
    page.wait_for_selector("form#login")
    assert page.evaluate("localStorage.getItem('dstack.token')") is None


def test_token_link_signs_in_and_leaves_the_address(server: Server, page):  # noqa: ANN001
    sign_in(page, server)
    assert "token" not in page.url
    assert page.evaluate("localStorage.getItem('dstack.token')") == server.token
    assert page.evaluate("history.length") >= 1


def test_run_goes_to_done_with_logs_streaming(server: Server, project_dir: Path, page, shots):  # noqa: ANN001
    sign_in(page, server, "/runs")
    submit(server, project_dir, "ui-stream", "for i in 1 2 3 4 5 6; do echo tick-$i; sleep 1; done",
           "echo '<img src=x id=pwned>' '<b>bold</b>'")
    link = page.wait_for_selector("a.run-link:has-text('ui-stream')", timeout=TIMEOUT_MS)
    first_in_list = page.get_attribute(
        "tr:has(a.run-link:has-text('ui-stream')) .status", "data-status")
    assert first_in_list in ("pending", "submitted", "provisioning", "running")
    page.screenshot(path=str(shots / "runs.png"), full_page=True)
    link.click()
    page.wait_for_url(re.compile(r"/projects/main/runs/ui-stream$"))
    seen: list[str] = []
    partial = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status = run_status(page)
        if status and (not seen or seen[-1] != status):
            seen.append(status)
        text = page.text_content("#logs") or ""
        if "tick-1" in text and "tick-6" not in text and partial is None:
            partial = text  # the start of the output, shown while the job still prints
        if status == "done" and "bold" in text:
            break
        time.sleep(0.2)
    assert seen and seen[-1] == "done", seen
    assert any(s in ("submitted", "provisioning", "running") for s in seen), seen
    assert partial is not None, "the logs never showed a partial output"
    logs = page.text_content("#logs")
    assert logs.index("tick-1") < logs.index("tick-6")
    # The job printed markup: it shows as text and builds no element.
    assert "<img src=x id=pwned> <b>bold</b>" in logs
    assert page.query_selector("#pwned") is None and page.query_selector("#logs b") is None
    page.wait_for_selector("#events td:has-text('done')", timeout=TIMEOUT_MS)
    assert "ui-stream" in page.text_content("#configuration") or "tick-" in page.text_content(
        "#configuration")
    page.screenshot(path=str(shots / "run-done.png"), full_page=True)
    assert not page.errors, page.errors


def test_stop_a_running_task_from_its_page(server: Server, project_dir: Path, page, shots):  # noqa: ANN001
    submit(server, project_dir, "ui-stop", "echo started-and-waiting", "sleep 600")
    server.wait_status("ui-stop", "running", timeout=60)
    sign_in(page, server, "/projects/main/runs/ui-stop")
    page.wait_for_selector("main h1 .status[data-status='running']", timeout=TIMEOUT_MS)
    page.wait_for_selector("#logs:has-text('started-and-waiting')", timeout=TIMEOUT_MS)
    page.screenshot(path=str(shots / "run-running.png"), full_page=True)
    page.click("#stop")
    page.wait_for_selector("main h1 .status[data-status='terminated']", timeout=TIMEOUT_MS)
    run = server.run("ui-stop")
    assert run["status"] == "terminated"
    assert run["termination_reason"] == "stopped_by_user"
    # A finished run can be deleted from its page, which then goes back to the list.
    page.click("#delete")
    page.wait_for_url(re.compile(r"/runs$"), timeout=TIMEOUT_MS)
    r = server.api("/api/project/main/runs/get", {"run_name": "ui-stop"})
    assert r.status_code == 400 or r.json().get("deleted")
    assert not page.errors, page.errors


FAKE_SMI = Path(__file__).resolve().parents[2] / "agent" / "samples" / "fake-nvidia-smi"


@pytest.fixture(scope="module")
def gpu_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose agent samples every 0.5 s and sees one GPU (a fake `nvidia-smi` on PATH
    reporting 37% use), so a chart has points within seconds."""
    home = tmp_path_factory.mktemp("ui-gpu-home")
    bin_dir = home / "bin"
    bin_dir.mkdir()
    shutil.copy(FAKE_SMI, bin_dir / "nvidia-smi")
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    srv = service_server(
        home, PATH=path, FAKE_GPU_UTIL="37", DSTACK_AGENT_METRICS_INTERVAL="0.5"
    )
    try:
        yield srv
    finally:
        srv.cleanup()


def test_a_services_metrics_charts(gpu_server: Server, tmp_path: Path, page, shots):  # noqa: ANN001
    """A running service's page draws its CPU and GPU series from the real metrics route."""
    directory = service_dir(tmp_path)
    apply_detached(gpu_server, directory, "ui-svc", service("ui-svc"))
    wait_serving(gpu_server, "ui-svc")
    sign_in(page, gpu_server, "/projects/main/runs/ui-svc")
    page.wait_for_selector("main h1 .status[data-status='running']", timeout=TIMEOUT_MS)
    for metric in ("cpu_usage_percent", "gpu_util_percent_gpu0"):
        # "attached", not "visible": a flat series (the fake GPU's steady 37%) is a polyline
        # with no height, which the browser calls invisible.
        line = page.wait_for_selector(
            f"figure.chart[data-metric='{metric}'] polyline", timeout=TIMEOUT_MS, state="attached"
        )
        assert line.get_attribute("points").count(",") >= 2, metric
    page.screenshot(path=str(shots / "service-metrics.png"), full_page=True)
    gpu_server.api("/api/project/main/runs/stop", {"runs_names": ["ui-svc"], "abort": True})
    assert not page.errors, page.errors


@pytest.mark.parametrize(
    ("path", "ready"),
    [
        ("/fleets", "#fleets .fleet, #fleets .empty"),
        ("/offers", "#offers table, #offers .empty"),
        ("/volumes", "#volumes table, #volumes .empty"),
        ("/events", "#events tr[data-event]"),
        ("/projects", "#projects a:has-text('main')"),
        ("/projects/main", "#members td:has-text('admin')"),
        ("/secrets", "#secrets table, #secrets .empty, #secrets .muted, #secrets .error"),
    ],
)
def test_pages_render(server: Server, page, shots, path: str, ready: str):  # noqa: ANN001
    sign_in(page, server, path)
    page.wait_for_selector(ready, timeout=TIMEOUT_MS)
    page.screenshot(path=str(shots / f"{path.strip('/').replace('/', '-')}.png"), full_page=True)
    assert not page.errors, page.errors


def test_unknown_client_route_shows_not_found(server: Server, page):  # noqa: ANN001
    sign_in(page, server, "/no/such/page")
    page.wait_for_selector("main h1:has-text('Not found')")
    wait_until(lambda: not page.errors, timeout=1, what="no page errors")


def test_metrics_chart_draws_what_the_route_answers(server: Server, project_dir: Path, page, shots):  # noqa: ANN001, E501
    """The chart against known values: the browser's network layer answers that one GET with
    series chosen here, so what is drawn can be checked exactly (`test_a_services_metrics_
    charts` reads the real route); the page, run and everything else are real."""
    submit(server, project_dir, "ui-chart", "sleep 600")
    server.wait_status("ui-chart", "running", timeout=60)
    answer = {"metrics": [
        {"name": "cpu_usage_percent", "timestamps": ["2026-01-01T00:00:00Z",
         "2026-01-01T00:00:10Z", "2026-01-01T00:00:20Z"], "values": [10, 55.5, 30]},
        {"name": "memory_usage_bytes", "timestamps": ["2026-01-01T00:00:00Z"],
         "values": [3 * 1024**3]},
        {"name": "gpu_util_percent_gpu0", "timestamps": [], "values": []},
    ]}
    asked: list[str] = []

    def fulfil(route) -> None:  # noqa: ANN001
        asked.append(route.request.url)
        route.fulfill(status=200, content_type="application/json", body=json.dumps(answer))

    page.route("**/api/project/main/metrics/job/ui-chart?*", fulfil)
    sign_in(page, server, "/projects/main/runs/ui-chart")
    cpu = page.wait_for_selector("figure.chart[data-metric='cpu_usage_percent']",
                                 timeout=TIMEOUT_MS)
    assert len(cpu.query_selector("polyline").get_attribute("points").split()) == 3
    assert cpu.query_selector("figcaption").text_content().endswith("30%")
    mem = page.query_selector("figure.chart[data-metric='memory_usage_bytes']")
    assert mem.query_selector("circle") is not None and "3.0GB" in mem.text_content()
    assert page.query_selector("figure.chart[data-metric='gpu_util_percent_gpu0']") is None
    page.locator("#metrics").screenshot(path=str(shots / "run-chart.png"))
    assert "replica_num=0&job_num=0&limit=" in asked[0]
    assert asked[0].startswith(f"{server.url}/api/project/main/metrics/job/ui-chart?")
    server.api("/api/project/main/runs/stop", {"runs_names": ["ui-chart"], "abort": True})
    assert not page.errors, page.errors


def test_runs_list_filters(server: Server, project_dir: Path, page):  # noqa: ANN001
    submit(server, project_dir, "ui-filter-done", "echo finished-quickly")
    submit(server, project_dir, "ui-filter-live", "sleep 600")
    server.wait_status("ui-filter-done", "done", timeout=60)
    server.wait_status("ui-filter-live", "running", timeout=60)
    sign_in(page, server, "/runs")
    row = "a.run-link:has-text('{}')"
    page.wait_for_selector(row.format("ui-filter-live"), timeout=TIMEOUT_MS)
    page.select_option("select[name=status]", "done")
    page.wait_for_selector(row.format("ui-filter-done"))
    assert page.query_selector(row.format("ui-filter-live")) is None
    assert "status=done" in page.url
    page.fill("input[name=q]", "filter-done")
    page.fill("input[name=user]", "adm")
    page.select_option("select[name=project]", "main")
    page.wait_for_selector(row.format("ui-filter-done"), timeout=TIMEOUT_MS)
    page.reload()  # the filters are in the address, so a reload keeps them
    page.wait_for_selector(row.format("ui-filter-done"), timeout=TIMEOUT_MS)
    assert page.input_value("input[name=q]") == "filter-done"
    assert page.query_selector(row.format("ui-filter-live")) is None
    page.fill("input[name=user]", "someone-else")
    page.wait_for_selector("#runs .empty:has-text('No run matches')")
    server.api("/api/project/main/runs/stop", {"runs_names": ["ui-filter-live"], "abort": True})
    assert not page.errors, page.errors
