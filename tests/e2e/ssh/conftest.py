"""Fixtures of the SSH fleet tests: a key, a set of netns hosts, a server without the local
backend (so runs can only go to the SSH fleets)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..harness import Server
from . import hosts as sshhosts


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return sshhosts.keygen(tmp_path / "keys" / "id_fleet")


@pytest.fixture
def hosts(tmp_path: Path, key: Path) -> Iterator[sshhosts.Hosts]:
    hs = sshhosts.Hosts(tmp_path / "hosts", key)
    try:
        yield hs
    finally:
        hs.destroy()


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    s = Server(
        home=tmp_path / "home",
        extra_env={
            "DSTACK_SERVER_LOCAL_BACKEND": "0",
            "DSTACK_SERVER_INSTANCE_CHECK_SECONDS": "1",
            "DSTACK_SERVER_UNREACHABLE_GRACE": "3",
        },
    )
    s.home.mkdir()
    s.start()
    try:
        yield s
    finally:
        s.cleanup()
