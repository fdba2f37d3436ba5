"""Alembic environment: migrations run on the connection the server hands over, or (for
`alembic revision --autogenerate` during development) on DSTACK_DATABASE_URL."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from dstack.server.db.tables import Base

target_metadata = Base.metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = os.environ.get("DSTACK_DATABASE_URL_SYNC", "sqlite:///dev.db")
    with create_engine(url).connect() as conn:
        _run(conn)
        conn.commit()
