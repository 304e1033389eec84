"""Where a worker's jobs come from: a queue in memory (one process) or claims in the database (many).

``MemoryJobs``: the web server puts each new submission's id on an in-process queue; its worker
threads (lanes) take them (SQLite on one machine, the default). ``DatabaseJobs``: any number of ``protloc
worker`` processes, on any machines that reach the database, claim queued submissions themselves:
``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL (two workers never wait for, nor take, the same
rows), a conditional ``UPDATE`` on SQLite (whose writers take turns). A claim is a lease: the worker
renews it while it works (``renew``), and a row whose lease has run out (its worker died) is claimed
again by the next worker that looks. A worker writes a result only while it still holds the row
(``db.Submission.worker``), so each submission is finished exactly once.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
import uuid
from datetime import timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from protloc.web.storage import db

STOP = object()


def worker_name() -> str:
    """host:pid:random, unique per worker process and readable in the database."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class MemoryJobs:
    """Ids handed over in memory by the web server of the same process."""

    def __init__(self, sessions: sessionmaker[Session], name: str) -> None:
        self.sessions = sessions
        self.name = name
        self.queue: queue.Queue = queue.Queue()

    def put(self, submission_id) -> None:
        self.queue.put(submission_id)

    def pending(self) -> int:
        return self.queue.qsize()

    def recover(self) -> int:
        """What a previous process left unfinished goes back in the queue."""
        with self.sessions.begin() as session:
            ids = session.scalars(
                select(db.Submission.id).where(db.Submission.status.in_(db.UNFINISHED)).order_by(db.Submission.created_at)
            ).all()
            if ids:
                session.execute(update(db.Submission).where(db.Submission.id.in_(ids))
                                .values(status=db.QUEUED, worker=None, lease_until=None))
        for submission_id in ids:
            self.queue.put(submission_id)
        return len(ids)

    def take(self, most: int, linger: float, wait: float) -> list | None:
        """Up to ``most`` claimed ids ([] after ``wait`` seconds without any; None: stop)."""
        try:
            first = self.queue.get(timeout=wait)
        except queue.Empty:
            return []
        if first is STOP:
            self.queue.put(STOP)  # for the worker's other lanes
            return None
        ids, deadline = [first], time.monotonic() + linger
        while len(ids) < most:
            try:
                item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is STOP:
                self.queue.put(STOP)
                break
            ids.append(item)
        return self.claim(list(dict.fromkeys(ids)))

    def claim(self, ids: list[str]) -> list[str]:
        with self.sessions.begin() as session:
            rows = session.scalars(
                select(db.Submission).where(db.Submission.id.in_(ids), db.Submission.status == db.QUEUED)
            ).all()
            for row in rows:
                row.status, row.worker, row.lease_until = db.RUNNING, self.name, None
                row.attempts += 1
            return [row.id for row in rows]

    def renew(self, ids: list[str]) -> None:  # one process: no lease to renew
        pass

    def stop(self) -> None:
        self.queue.put(STOP)


class DatabaseJobs:
    """Claims with leases in a database all workers share."""

    def __init__(self, sessions: sessionmaker[Session], name: str, lease_seconds: float = 60.0,
                 poll_seconds: float = 0.5) -> None:
        self.sessions = sessions
        self.name = name
        self.lease = timedelta(seconds=lease_seconds)
        self.poll_seconds = poll_seconds
        self.postgres = sessions.kw["bind"].dialect.name == "postgresql"
        self.model_keys: list[str] | None = None  # claim only submissions for these models (the worker's)
        self._stopped = threading.Event()
        self._wake = threading.Event()

    def put(self, submission_id) -> None:  # the row is the job; a worker in this process need not wait a poll
        self._wake.set()

    def pending(self) -> int:
        with self.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(db.Submission).where(db.Submission.status == db.QUEUED)))

    def recover(self) -> int:  # nothing to do: an expired lease is claimed like a queued row
        return 0

    def claimable(self, now):
        waiting = or_(db.Submission.status == db.QUEUED,
                      and_(db.Submission.status == db.RUNNING, db.Submission.lease_until < now))
        # A worker without a submission's model leaves it to one that has it, rather than failing it.
        return waiting if self.model_keys is None else and_(waiting, db.Submission.model_key.in_(self.model_keys))

    def take(self, most: int, linger: float, wait: float) -> list | None:
        deadline = time.monotonic() + wait
        while not self._stopped.is_set():
            ids = self.claim(most)
            if ids:
                return ids
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self._wake.wait(min(self.poll_seconds, remaining))
            self._wake.clear()
        return None

    def claim(self, most: int) -> list[str]:
        now = db.utcnow()
        until = now + self.lease
        with self.sessions.begin() as session:
            query = (select(db.Submission.id).where(self.claimable(now))
                     .order_by(db.Submission.created_at).limit(most))
            if self.postgres:
                query = query.with_for_update(skip_locked=True)
            ids = session.scalars(query).all()
            if not ids:
                return []
            # The same condition again: on SQLite another process may have claimed them since the SELECT.
            session.execute(
                update(db.Submission).where(db.Submission.id.in_(ids), self.claimable(now))
                .values(status=db.RUNNING, worker=self.name, lease_until=until, attempts=db.Submission.attempts + 1)
                .execution_options(synchronize_session=False))
            taken = session.scalars(select(db.Submission.id).where(
                db.Submission.id.in_(ids), db.Submission.worker == self.name, db.Submission.lease_until == until)).all()
        return list(taken)

    def renew(self, ids: list[str]) -> None:
        if not ids:
            return
        with self.sessions.begin() as session:
            session.execute(
                update(db.Submission).where(db.Submission.id.in_(ids), db.Submission.worker == self.name,
                                            db.Submission.status == db.RUNNING)
                .values(lease_until=db.utcnow() + self.lease).execution_options(synchronize_session=False))

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
