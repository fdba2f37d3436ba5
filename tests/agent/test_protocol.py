"""The protocol module is the one place both sides take paths, headers and fields from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dstack.agent import protocol as p
from dstack.agent.state import derive_state

from .helpers import SRC

SIDES = [
    Path(SRC) / "dstack" / "agent" / "server.py",
    Path(SRC) / "dstack" / "server" / "agent_client.py",
]


@pytest.mark.parametrize("path", SIDES, ids=[s.name for s in SIDES])
def test_no_side_spells_a_path_or_header_of_its_own(path: Path) -> None:
    text = path.read_text()
    assert not re.findall(r"[\"']/api/", text)
    assert "X-Dstack" not in text and '"Bearer' not in text and '"error"' not in text


def test_every_route_has_a_handler_and_paths_are_distinct() -> None:
    from dstack.agent.server import ENDPOINTS

    assert set(ENDPOINTS) == set(p.ROUTES)
    assert len({(r.method, r.template) for r in p.ROUTES}) == len(p.ROUTES)


def test_routes_build_and_match_paths() -> None:
    assert p.START_JOB.path("j-1.a") == "/api/jobs/j-1.a/start"
    match = p.START_JOB.match("/api/jobs/j-1.a/start")
    assert match is not None and match["id"] == "j-1.a"
    assert p.GET_JOB.match("/api/jobs/j/start") is None  # one segment per id
    assert p.GET_JOB.path("a/b") == "/api/jobs/a%2Fb"  # an odd id never reaches another route
    assert p.LIST_JOBS.path() == "/api/jobs"
    with pytest.raises(ValueError):
        p.GET_JOB.path()


def test_start_frame_round_trip() -> None:
    headers, body = p.encode_start({"id": "j", "commands": ["true"]}, b"CODE")
    n = p.spec_length(headers[p.SPEC_LENGTH], len(body))
    assert body[:n] == b'{"commands":["true"],"id":"j"}' and body[n:] == b"CODE"
    assert headers[p.CONTENT_TYPE] == p.START_TYPE
    for bad in (None, "x", "0", "-1", str(len(body) + 1)):
        with pytest.raises(ValueError, match=p.SPEC_LENGTH):
            p.spec_length(bad, len(body))


def test_state_fields_are_the_protocols() -> None:
    """A field the agent adds to a job's state must be declared in `JobState` too."""
    spec = {"id": "j", "name": "j", "runtime": "process", "submitted_at": "t"}
    for supervisor, alive, result in (
        (None, False, None),
        ({"pid": 1, "started_at": "t"}, True, None),
        ({"pid": 1}, False, {"status": "done", "exit_status": 0}),
    ):
        state = derive_state(spec, supervisor, alive, result, None, 0, None)
        assert tuple(state) == p.JOB_STATE_FIELDS


def test_error_and_list_shapes() -> None:
    assert p.error_message(p.error_body("x: bad")) == "x: bad"
    assert p.error_message({"detail": "x"}) is None and p.error_message(None) is None
    assert p.jobs_of(p.jobs_body([{"id": "a"}])) == [{"id": "a"}]  # type: ignore[list-item]
    for bad in ({}, {"jobs": None}, {"jobs": [{"no": "id"}]}, []):
        with pytest.raises(ValueError):
            p.jobs_of(bad)
