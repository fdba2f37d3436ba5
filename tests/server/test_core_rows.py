"""A submission's rows written with Core INSERTs (db/core_rows.py) are the rows the ORM's
flush writes from the same objects: same columns, same defaults, a fresh `change_tag`; and
the objects carry what was stored."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select

from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.db.core_rows import insert_rows, row_values
from dstack.server.db.migrate import migrate
from dstack.server.db.session import Database
from dstack.server.services import events
from dstack.server.services.run_apply import new_job_row

# Different between the two sets of rows by construction (one active run per name).
RANDOM = {"id", "run_id", "target_id", "within_run_id", "change_tag", "run_name", "target_name"}


def _rows(project_id: str, user_id: str, now: Any, name: str) -> list[Any]:
    run = t.Run(
        id=str(uuid.uuid4()), project_id=project_id, user_id=user_id, run_name=name,
        run_spec="{}", status="submitted", submitted_at=now, last_processed_at=now,
        priority=3, dirty=False, termination_reason=None,
    )  # fmt: skip
    row_values(run)  # the job copies the run's deployment_num, as after the ORM's flush
    job = new_job_row(run, "{}", 0, 0, "r-0-0", 0, now)
    return [run, job, events.run_event_row(run, "Run submitted", now, actor="u")]


def _stored(row: Any) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in row.__table__.columns if c.key not in RANDOM}


def test_core_rows_match_the_orm_flush(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", strict=True)
        await migrate(db.engine)
        now = utcnow()
        uid, pid = str(uuid.uuid4()), str(uuid.uuid4())
        async with db.session() as s:
            s.add(t.User(id=uid, name="u", token_hash="h", created_at=now))
            await s.flush()
            s.add(t.Project(id=pid, name="p", owner_id=uid, created_at=now))
            await s.commit()
        via_orm, via_core = _rows(pid, uid, now, "orm"), _rows(pid, uid, now, "core")
        async with db.session() as s:
            s.add(via_orm[0])
            await s.flush()
            s.add_all(via_orm[1:])
            await insert_rows(s, via_core)
            await s.commit()
        async with db.session() as s:
            for orm_obj, core_obj in zip(via_orm, via_core, strict=True):
                table = type(orm_obj)
                a = await s.get(table, orm_obj.id)
                b = await s.get(table, core_obj.id)
                assert _stored(a) == _stored(b)
                # What the caller's object says is what was stored.
                assert _stored(core_obj) == _stored(b)
                if hasattr(table, "change_tag"):
                    assert b.change_tag not in (0, None) and b.change_tag == core_obj.change_tag
                    assert b.change_tag != a.change_tag
            jobs = (await s.execute(select(t.Job).where(t.Job.run_id == via_core[0].id))).all()
            assert len(jobs) == 1 and jobs[0][0].deployment_num == 0
        await db.close()

    asyncio.run(scenario())
