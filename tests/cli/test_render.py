"""Text formats and table layouts of cli.md §1 and §4."""

from __future__ import annotations

from datetime import timedelta

import pytest
from rich.console import Console

from dstack.cli.render.format import (
    backend_cell,
    format_duration,
    format_price,
    pretty_date,
    resources_cell,
)
from dstack.cli.render.offers import offers_footer, offers_table
from dstack.cli.render.runs import run_rows, runs_table
from dstack.models.instances import Resources
from dstack.models.offers import InstanceOfferWithAvailability

from .factories import NOW, job, run


def render(table) -> str:
    console = Console(width=250, color_system=None, record=True)
    with console.capture() as cap:
        console.print(table)
    return cap.get()


@pytest.mark.parametrize("price, text", [(0.2, "$0.2"), (2.19, "$2.19"), (32.77, "$32.77"),
                                         (1.0, "$1"), (0.12345, "$0.1235"), (0, "$0")])
def test_price(price, text):
    assert format_price(price) == text


@pytest.mark.parametrize(
    "delta, text",
    [(timedelta(seconds=5), "now"), (timedelta(seconds=30), "30 sec ago"),
     (timedelta(seconds=90), "1 min ago"), (timedelta(minutes=3), "3 mins ago"),
     (timedelta(minutes=61), "1 hour ago"), (timedelta(hours=5), "5 hours ago"),
     (timedelta(days=1, hours=2), "yesterday"), (timedelta(days=3), "3 days ago"),
     (timedelta(days=8), "1 week ago"), (timedelta(days=20), "2 weeks ago"),
     (timedelta(days=65), "2 months ago"), (timedelta(days=800), "2 years ago")],
)
def test_pretty_date(delta, text):
    assert pretty_date(NOW - delta, NOW) == text


def test_durations_and_backend():
    assert [format_duration(s) for s in (300, 3600, 86400, 90, None, "off")] == [
        "5m", "1h", "1d", "90s", "off", "off"]
    assert backend_cell("aws", "us-east-1") == "aws (us-east-1)"
    assert backend_cell("remote", None) == "ssh"


def test_resources_cell():
    res = Resources.model_validate({
        "cpus": 96, "memory_mib": 1152 * 1024, "cpu_arch": "x86", "disk": {"size_mib": 102400},
        "gpus": [{"name": "A100", "memory_mib": 40960}] * 8,
    })
    assert resources_cell(res) == "cpu=x86:96 mem=1152GB disk=100GB gpu=A100:40GB:8"
    res = Resources.model_validate({"cpus": 2, "memory_mib": 8192, "disk": {"size_mib": 0}})
    assert resources_cell(res, spot=True) == "cpu=2 mem=8GB (spot)"


def test_single_job_run_is_one_merged_row():
    rows = run_rows(run(), now=NOW)
    assert len(rows) == 1
    row = rows[0]
    assert row["NAME"] == "demo-task" and row["BACKEND"] == "aws (us-east-1)"
    assert row["GPU"] == "gpu=A100:40GB:2" and row["PRICE"] == "$8.19"
    assert row["STATUS"] == "running" and row["SUBMITTED"] == "3 mins ago"


def test_ps_table_columns_and_values():
    text = render(runs_table([run()], now=NOW))
    header = text.splitlines()[0].split()
    assert header == ["NAME", "BACKEND", "GPU", "PRICE", "STATUS", "SUBMITTED"]
    assert "gpu=A100:40GB:2" in text and "3 mins ago" in text and "$8.19" in text
    verbose = render(runs_table([run()], verbose=True, now=NOW)).splitlines()[0]
    for col in ("RESOURCES", "INSTANCE TYPE", "PROBES", "ERROR"):
        assert col in verbose


def test_multi_job_run_has_run_row_and_indented_job_rows():
    jobs = [job(replica=0), job(replica=1, provisioned=False, status="submitted")]
    rows = run_rows(run(jobs=jobs), now=NOW)
    assert [r["NAME"] for r in rows] == ["demo-task", "   replica=0", "   replica=1"]
    assert rows[0]["GPU"] == "-" and rows[0]["PRICE"] == "-" and "BACKEND" not in rows[0]
    assert rows[2]["GPU"] == "-" and rows[2]["STATUS"] == "submitted"
    assert rows[1]["_style"] == "secondary"


def test_multinode_rows_show_job_numbers():
    jobs = [job(job_num=0, jobs_per_replica=2), job(job_num=1, jobs_per_replica=2)]
    rows = run_rows(run(jobs=jobs), now=NOW)
    assert [r["NAME"] for r in rows[1:]] == ["   job=0", "   job=1"]


def test_service_verbose_shows_deployment():
    rows = run_rows(run(kind="service", deployment=1, jobs=[job(deployment=1)]), verbose=True,
                    now=NOW)
    assert rows[0]["NAME"] == "demo-task deployment=1"
    assert rows[1]["NAME"] == "   deployment=1"


def test_run_error_wins_in_merged_row():
    rows = run_rows(run(status="failed", error="retry limit exceeded"), now=NOW)
    assert rows[0]["ERROR"] == "retry limit exceeded"


def test_a_busy_port_error_names_the_port_and_host():
    j = job(status="failed")
    j["job_submissions"][0].update(
        error="ports binding failed",
        termination_reason="ports_binding_failed",
        termination_reason_message="port 8000 is already in use on host local",
    )
    rows = run_rows(run(status="failed", jobs=[j]), now=NOW)
    assert rows[0]["ERROR"] == "ports binding failed: port 8000 is already in use on host local"


def offer(price: float, availability: str = "available") -> InstanceOfferWithAvailability:
    return InstanceOfferWithAvailability.model_validate({
        "backend": "aws", "region": "us-east-1", "price": price, "availability": availability,
        "instance": {"name": "p4d.24xlarge", "resources": {
            "cpus": 96, "memory_mib": 1152 * 1024, "cpu_arch": "x86",
            "gpus": [{"name": "A100", "memory_mib": 40960}] * 8}},
    })


def test_offers_table_and_footer():
    text = render(offers_table([offer(32.77), offer(40.96, "not_available")], 12, dim_rest=True))
    lines = text.splitlines()
    assert lines[0].split() == ["#", "BACKEND", "RESOURCES", "INSTANCE", "TYPE", "PRICE"]
    assert "cpu=x86:96 mem=1152GB disk=100GB gpu=A100:40GB:8" in lines[1]
    assert "not available" in lines[2]
    assert lines[3].strip() == "..."
    assert offers_footer(3, 12, 40.96) == " Shown 3 of 12 offers, $40.96max"
    assert offers_footer(3, 3, 40.96) is None


def test_ps_verbose_lists_the_offers_a_job_tried():
    j = job(status="provisioning")
    j["job_submissions"][0]["tried_offers"] = [
        {"backend": "aws", "region": "us-east-1", "instance_type": "p4d.24xlarge",
         "spot": True, "price": 12.3, "message": "InsufficientInstanceCapacity"},
    ]  # fmt: skip
    r = run(jobs=[j])
    assert len(run_rows(r, now=NOW)) == 1  # not without -v
    main, tried = run_rows(r, verbose=True, now=NOW)
    assert tried["NAME"].strip() == "offer tried" and tried["STATUS"] == "failed"
    assert tried["BACKEND"] == "aws (us-east-1)" and tried["INSTANCE TYPE"] == "p4d.24xlarge"
    assert tried["PRICE"] == "$12.3 (spot)" and tried["ERROR"] == "InsufficientInstanceCapacity"
