"""Hostile names (SQL fragments, NUL, ANSI escapes, newlines, 10 kB) for every kind of resource
a user names: refused with 400/422 and a short, escaped message; never stored, so never printed
into anyone's `dstack fleet` or `dstack ps`; on SQLite and on Postgres (where NUL and long
names used to answer 500)."""

from __future__ import annotations

import pytest

from .conftest import task_spec

HOSTILE = {
    "sql": "x'; DROP TABLE fleets; --",
    "nul": "bad\x00name",
    "ansi": "\x1b[31mred\x1b[0m",
    "newline": "fleet-a\n",
    "long": "a" * 10_000,
    "upper": "Fleet-A",
}


def _bodies(name: str) -> dict[str, tuple[str, dict]]:
    return {
        "run": ("/api/project/main/runs/apply", {"plan": {"run_spec": task_spec(name)}}),
        "fleet": (
            "/api/project/main/fleets/apply",
            {"plan": {"spec": {"configuration": {"type": "fleet", "name": name, "nodes": "0..1"}}}},
        ),
        "volume": (
            "/api/project/main/volumes/create",
            {"configuration": {"type": "volume", "name": name, "fleet": "nope"}},
        ),
        "fleet-get": ("/api/project/main/fleets/get", {"name": name}),
        "run-get": ("/api/project/main/runs/get", {"run_name": name}),
    }


def _stored_names(srv) -> list[str]:  # noqa: ANN001
    fleets = srv.api("/api/project/main/fleets/list", {}).json()
    volumes = srv.api("/api/project/main/volumes/list", {}).json()
    runs = srv.api("/api/runs/list", {}).json()
    return (
        [f["name"] for f in fleets]
        + [v["name"] for v in volumes]
        + [r["run_spec"]["run_name"] for r in runs]
    )


@pytest.mark.parametrize("label", sorted(HOSTILE))
def test_hostile_names_are_refused_short_and_never_stored(db_server, label: str) -> None:  # noqa: ANN001
    srv = db_server
    name = HOSTILE[label]
    for kind, (path, body) in _bodies(name).items():
        r = srv.api(path, body)
        assert r.status_code in (400, 422), (kind, r.status_code, r.text[:300])
        assert len(r.content) < 2000, (kind, len(r.content))
        msg = " ".join(d["msg"] for d in r.json()["detail"])
        for raw in ("\x00", "\x1b", "\n", "DROP TABLE fleets; --'"):
            if raw in name and raw != "DROP TABLE fleets; --'":
                assert raw not in msg, (kind, msg)
        if kind in ("run", "fleet", "volume") and label != "nul":
            assert "Invalid" in msg and "name" in msg, (kind, msg)
        if label == "nul":
            assert "NUL" in msg, (kind, msg)
    assert all(n == n.strip() and "\x1b" not in n for n in _stored_names(srv))
    assert name not in _stored_names(srv)
    assert "Traceback" not in srv.log_tail()


def test_nul_is_refused_in_any_string_field(db_server) -> None:  # noqa: ANN001
    r = db_server.api(
        "/api/project/main/runs/apply",
        {"plan": {"run_spec": task_spec("nul-in-commands", "echo a\x00b")}},
    )
    assert r.status_code == 422 and "NUL" in r.text, r.text[:300]
    assert "nul-in-commands" not in _stored_names(db_server)


def test_a_valid_name_still_works(db_server) -> None:  # noqa: ANN001
    body = {
        "plan": {"spec": {"configuration": {"type": "fleet", "name": "fine-1", "nodes": "0..1"}}}
    }
    r = db_server.api("/api/project/main/fleets/apply", body)
    assert r.status_code == 200, r.text[:300]
    assert "fine-1" in _stored_names(db_server)
    db_server.api("/api/project/main/fleets/delete", {"names": ["fine-1"]})
