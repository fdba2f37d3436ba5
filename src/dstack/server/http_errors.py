"""Faults of the machine, not of the request, each answered with a status a client can act on
instead of a bare 500:

- the database is busy (SQLite's write lock held elsewhere past the busy timeout): 503 with
  `Retry-After`, nothing written;
- the disk under the server's data (or the database) is full: 507 with a message;
- a write lost a race on a unique index (two applies of one name): 409;
- a value the database refuses (Postgres: longer than its column): 400;
- a request that fails validation: 422 with short messages that never echo the input (a 100 MB
  name is not sent back), and with control characters escaped.
"""

from __future__ import annotations

import errno
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from dstack.server.db.session import db_fault
from dstack.server.guard import BodyTooLarge

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 2
MAX_MESSAGE = 300
FULL_MESSAGE = (
    "The server is out of disk space (its data directory or database is full); nothing was "
    "written. Free space on the server and retry."
)
BUSY_MESSAGE = "The database is busy; nothing was written. Retry in a moment."


def short(text: object, limit: int = MAX_MESSAGE) -> str:
    """One printable line at most `limit` characters long: control characters escaped (no
    ANSI escape or newline reaches a terminal), the rest cut with a count."""
    s = str(text)
    cut = s[:limit]
    safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    if len(s) > limit:
        safe += f"... ({len(s)} characters)"
    return safe


def _detail(msg: str, code: str, field: str | None = None) -> dict:
    return {"detail": [{"msg": msg, "code": code, "field": field}]}


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def busy_response() -> JSONResponse:
    return JSONResponse(
        _detail(BUSY_MESSAGE, "database_busy"),
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def full_response() -> JSONResponse:
    return JSONResponse(_detail(FULL_MESSAGE, "insufficient_storage"), status_code=507)


def install_fault_handlers(app: FastAPI) -> None:
    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, e: BodyTooLarge) -> JSONResponse:
        return JSONResponse(_detail(str(e.detail), "body_too_large"), status_code=413)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        # FastAPI's shape (loc, msg, type) without `input` and `ctx`, which echo the value.
        errors = [
            {
                "loc": [p if isinstance(p, int) else short(p, 60) for p in err.get("loc", ())],
                "msg": short(err.get("msg", "invalid"), 200),
                "type": short(err.get("type", "invalid"), 60),
            }
            for err in e.errors()[:20]
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(IntegrityError)
    async def _conflict(_: Request, e: IntegrityError) -> JSONResponse:
        log.info("write refused by a unique index: %s", short(e.orig, 200))
        msg = "The request conflicts with a concurrent change of the same resource; retry"
        return JSONResponse(_detail(msg, "conflict"), status_code=409)

    @app.exception_handler(DataError)
    async def _data(_: Request, e: DataError) -> JSONResponse:
        # Postgres refuses what SQLite stores: a value longer than its column, say.
        log.info("value refused by the database: %s", short(e.orig, 200))
        msg = "A value in the request is too long or malformed for the database"
        return JSONResponse(_detail(msg, "invalid_value"), status_code=400)

    @app.exception_handler(DBAPIError)
    async def _db(_: Request, e: DBAPIError) -> JSONResponse:
        kind = db_fault(e)
        if kind == "busy":
            return busy_response()
        if kind == "full":
            return full_response()
        raise e

    @app.exception_handler(OSError)
    async def _os(_: Request, e: OSError) -> JSONResponse:
        if is_disk_full(e):
            return full_response()
        raise e
