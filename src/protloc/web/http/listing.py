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

from protloc.web.storage import db

FINAL = (db.DONE, db.FAILED)
# About 2 KB each: a few tens of MB at most, whatever the history's length.
CACHED_ITEMS = 20_000


def to_json(data) -> bytes:
    """As Starlette's JSONResponse renders (compact, UTF-8, no NaN)."""
    return json.dumps(data, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")


class FinishedItems:
    """(owner id, JSON) of finished submissions by id, least recently used dropped past ``limit``."""

    def __init__(self, limit: int = CACHED_ITEMS) -> None:
        self.limit = limit
        self._items: collections.OrderedDict[str, tuple[int | None, bytes]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, submission_id: str) -> tuple[int | None, bytes] | None:
        with self._lock:
            item = self._items.get(submission_id)
            if item is not None:
                self._items.move_to_end(submission_id)
            return item

    def put(self, submission_id: str, owner_id: int | None, item: bytes) -> None:
        with self._lock:
            self._items[submission_id] = (owner_id, item)
            self._items.move_to_end(submission_id)
            while len(self._items) > self.limit:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def describe(self, row: db.Submission, describe) -> bytes:
        """``describe(row)`` as JSON, kept when the row is finished."""
        item = to_json(describe(row))
        if row.status in FINAL:
            self.put(row.id, row.owner_id, item)
        return item


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
            items[submission_id] = cached[1]
    missing = [row.id for row in page if row.id not in items]
    if missing:
        with sessions() as session:
            for submission_id, row in rows_with_results(session, missing).items():
                items[submission_id] = cache.describe(row, describe)
    # A row deleted between the two queries is left out rather than failing the request.
    body = b",".join(items[row.id] for row in page if row.id in items)
    return b'{"total":%d,"items":[%s]}' % (int(total), body)


def submission_json(sessions, describe, cache: FinishedItems, submission_id: str, viewer) -> bytes | None:
    """One submission's JSON (what a client polls); None when it does not exist or the viewer may not
    see it. A finished one comes from the cache without a query."""
    cached = cache.get(submission_id)
    if cached is not None:
        owner_id, item = cached
    else:
        with sessions() as session:
            row = session.get(db.Submission, submission_id)
            if row is None:
                return None
            owner_id, item = row.owner_id, cache.describe(row, describe)
    return item if viewer is None or viewer.sees(owner_id) else None


class _Generation:
    __slots__ = ("result", "error", "done")

    def __init__(self) -> None:
        self.result, self.error, self.done = None, None, False

    def outcome(self):
        if self.error is not None:
            raise self.error
        return self.result


class Coalesced:
    """Identical requests that arrive together share one computation, which starts after they arrived.

    A request never gets an answer computed before it came: it joins the generation that starts
    next (not the one running), and one of that generation's requests computes for all of them once
    the running one ends. 200 simultaneous identical list requests cost two or three queries.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._slots: dict = {}  # key -> [running generation, waiting generation]

    def run(self, key, compute):
        with self._changed:
            slot = self._slots.setdefault(key, [None, None])
            if slot[1] is None:
                slot[1] = _Generation()
            generation = slot[1]
            while not generation.done:
                if slot[0] is None and slot[1] is generation:  # nothing running: this request computes
                    slot[0], slot[1] = generation, None
                    break
                self._changed.wait()
            else:
                return generation.outcome()
        try:
            generation.result = compute()
        except BaseException as exc:  # every request of the generation gets the same error
            generation.error = exc
        with self._changed:
            generation.done = True
            slot[0] = None
            if slot[1] is None and self._slots.get(key) is slot:
                del self._slots[key]
            self._changed.notify_all()
        return generation.outcome()
