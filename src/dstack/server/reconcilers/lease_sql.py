"""Statements and orderings of the reconciler loop (`base.py`) that are plain SQLAlchemy
expressions: kept apart so the loop's file reads as the loop."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import UnaryExpression


def order_terms(order: tuple[Any, ...]) -> list[tuple[Any, bool]]:
    """(expression, descending) for each ORDER BY term, to sort the claimed rows the same way
    in Python: RETURNING gives rows in no particular order."""
    terms = []
    for term in order:
        if isinstance(term, UnaryExpression) and term.modifier in (
            operators.desc_op,
            operators.asc_op,
        ):
            terms.append((term.element, term.modifier is operators.desc_op))
        else:
            terms.append((term, False))
    return terms


def null_last(value: Any) -> tuple[bool, Any]:
    return (value is None, value)


# Guarded UPDATEs by (table, the columns a decision sets): built once each, since building
# the expression cost about as much as running it, on every pass. A few dozen at most.
_GUARDED: dict[tuple[Any, tuple[str, ...], bool], Any] = {}


def guarded_statement(
    tbl: Any,
    keys: tuple[str, ...],
    literal: dict[str, Any] | None = None,
    keep_lease: bool = False,
) -> Any:
    """`guarded_update`'s statement: `keys` bound as `v_<key>` (or, with `literal`, these
    values as they are: SQL expressions, not cached); the row, token and processed time as
    `g_id`, `g_token`, `g_processed`; the lease dropped unless `keep_lease`. The row's object
    in the session keeps the values it was read with (`synchronize_session=False`;
    `guarded_update` says why)."""
    cache_key = (tbl, keys, keep_lease)
    if literal is None and cache_key in _GUARDED:
        return _GUARDED[cache_key]
    sets = literal if literal is not None else {k: bindparam(f"v_{k}") for k in keys}
    lease: dict[str, Any] = {}
    if not keep_lease:
        lease = {"lock_token": None, "lock_owner": None, "lock_expires_at": None}
    stmt = (
        update(tbl)
        .where(tbl.id == bindparam("g_id"), tbl.lock_token == bindparam("g_token"))
        .values(
            **sets, **lease, version=tbl.version + 1, last_processed_at=bindparam("g_processed")
        )
        .returning(tbl.dirty)
        .execution_options(synchronize_session=False)
    )
    if literal is None:
        _GUARDED[cache_key] = stmt
    return stmt
