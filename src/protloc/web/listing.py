"""The submission list: one filtered query, and finished submissions' JSON kept once it is written.

A finished submission never changes (``done`` and ``failed`` are final: nothing requeues them, a
result is written once, with the status), so its JSON item is serialised once and kept in a bounded
cache (``FinishedItems``). A list request then costs one query for the page's ids and states (and
one for the total), the ORM only for rows not yet cached or still unfinished, and a join of bytes:
no per-row ORM objects, dict building or re-encoding for the finished majority. Ownership is decided
by the query (a user's filter), never by the cache, which only holds bytes by submission id.
"""

from __future__ import annotations

import collections
import json
import threading

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import contains_eager

from protloc.web import db

FINAL = (db.DONE, db.FAILED)
# About 2 KB each: a few tens of MB at most, whatever the history's length.
CACHED_ITEMS = 20_000


def to_json(data) -> bytes:
    """As Starlette's JSONResponse renders (compact, UTF-8, no NaN)."""
    return json.dumps(data, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")


class FinishedItems:
    """JSON of finished submissions by id, least recently used dropped past ``limit``."""

    def __init__(self, limit: int = CACHED_ITEMS) -> None:
        self.limit = limit
        self._items: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, submission_id: str) -> bytes | None:
        with self._lock:
            item = self._items.get(submission_id)
            if item is not None:
                self._items.move_to_end(submission_id)
            return item

    def put(self, submission_id: str, item: bytes) -> None:
        with self._lock:
            self._items[submission_id] = item
            self._items.move_to_end(submission_id)
            while len(self._items) > self.limit:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def filtered(query: Select, q: str | None, cls: str | None, status: str | None, viewer) -> Select:
    """The list's filters on a query of submissions (joined with their results where ``cls`` is given)."""
    if viewer is not None and not viewer.admin:
        query = query.where(db.Submission.owner_id == viewer.user_id)
    if q:
        # autoescape: '%' and '_' in a search are characters to find, not LIKE wildcards
        needle = q.strip()
        query = query.where(or_(db.Submission.id.startswith(needle.lower(), autoescape=True),
                                db.Submission.filenames.contains(needle, autoescape=True)))
    if cls:
        query = query.where(db.Result.predicted_text.contains(f"|{cls}|", autoescape=True))
    if status:
        query = query.where(db.Submission.status == status)
    return query


def rows_with_results(session, ids: list[str]) -> dict[str, db.Submission]:
    """Submissions with their results loaded in the same query, by id."""
    if not ids:
        return {}
    rows = session.scalars(select(db.Submission).outerjoin(db.Result).options(contains_eager(db.Submission.result))
                           .where(db.Submission.id.in_(ids))).unique().all()
    return {row.id: row for row in rows}


def list_json(sessions, describe, cache: FinishedItems, q: str | None, cls: str | None, status: str | None,
              limit: int, offset: int, viewer) -> bytes:
    """``{"total": N, "items": [...]}`` as bytes; ``describe(row)`` is the one item format
    (``Platform.submission_dict``)."""
    # The page's ids and states with the total in one query of the engine (no ORM objects).
    base = select(db.Submission.id, db.Submission.status, func.count().over().label("total"))
    if cls:
        base = base.join(db.Result, db.Result.submission_id == db.Submission.id)
    base = filtered(base, q, cls, status, viewer)
    with sessions.kw["bind"].connect() as connection:
        page = connection.execute(base.order_by(db.Submission.created_at.desc()).limit(limit).offset(offset)).all()
        if page:
            total = page[0].total
        else:  # past the end (or nothing at all): the total alone
            counted = select(func.count()).select_from(db.Submission)
            if cls:
                counted = counted.join(db.Result, db.Result.submission_id == db.Submission.id)
            total = connection.scalar(filtered(counted, q, cls, status, viewer)) or 0
    items: dict[str, bytes] = {}
    for submission_id, state, _ in page:
        cached = cache.get(submission_id) if state in FINAL else None
        if cached is not None:
            items[submission_id] = cached
    missing = [row.id for row in page if row.id not in items]
    if missing:
        with sessions() as session:
            for submission_id, row in rows_with_results(session, missing).items():
                item = to_json(describe(row))
                if row.status in FINAL:
                    cache.put(submission_id, item)
                items[submission_id] = item
    # A row deleted between the two queries is left out rather than failing the request.
    body = b",".join(items[row.id] for row in page if row.id in items)
    return b'{"total":%d,"items":[%s]}' % (int(total), body)
