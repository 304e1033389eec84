"""Waiting for a submission to finish: ``GET /api/v1/predictions/{id}?wait=S``, a long poll.

A client that wants the answer as soon as it exists asks once and is answered the moment the
submission is done or failed (or after S seconds, with its state then), instead of asking every few
tens of milliseconds: each of those polls costs the server a request and a query, and the answer
still comes up to one poll interval late. The worker of this process announces every submission it
finishes (``announce``, from its own threads); where other processes finish them too (``protloc
worker``s sharing a PostgreSQL database) a waiting request also looks again every
``recheck_seconds``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Callable

MAX_WAIT_SECONDS = 60.0
# Workers in other processes cannot announce: a waiting request looks at the database this often.
RECHECK_SECONDS = 0.5


class Completions:
    """The requests waiting for submissions, woken by ``announce`` (thread-safe)."""

    def __init__(self, recheck_seconds: float | None = None, activity=None) -> None:
        self.recheck_seconds = recheck_seconds  # None: every finish is announced here
        # ``protloc.web.pictures.idle.Activity``: a request that only waits is no load, and must not keep
        # the picture thread from drawing.
        self.activity = activity
        self._waiting: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._lock = threading.Lock()

    def announce(self, submission_id: str) -> None:
        """Submission ``submission_id`` is done or failed: wake whoever waits for it."""
        with self._lock:
            waiting = list(self._waiting.get(submission_id, ()))
        for loop, event in waiting:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that request's event loop has closed
                pass

    def waiting(self) -> int:
        with self._lock:
            return sum(len(entries) for entries in self._waiting.values())

    async def wait(self, submission_id: str, seconds: float, look: Callable[[], tuple[bytes, bool]]) -> bytes:
        """``look()`` (run in a thread: it queries) gives (answer, finished); it is asked again after
        each announcement until the submission is finished or ``seconds`` have passed."""
        loop = asyncio.get_running_loop()
        entry = (loop, asyncio.Event())
        # Listening before the first look: a finish between that look and the wait still wakes us.
        with self._lock:
            self._waiting.setdefault(submission_id, []).append(entry)
        try:
            deadline = loop.time() + max(0.0, min(seconds, MAX_WAIT_SECONDS))
            while True:
                entry[1].clear()
                answer, finished = await asyncio.to_thread(look)
                remaining = deadline - loop.time()
                if finished or remaining <= 0:
                    return answer
                pause = remaining if self.recheck_seconds is None else min(remaining, self.recheck_seconds)
                if self.activity is not None:
                    self.activity.leave()
                try:
                    await asyncio.wait_for(entry[1].wait(), pause)
                except asyncio.TimeoutError:
                    pass
                finally:
                    if self.activity is not None:
                        self.activity.enter()
        finally:
            with self._lock:
                entries = self._waiting.get(submission_id, [])
                if entry in entries:
                    entries.remove(entry)
                if not entries:
                    self._waiting.pop(submission_id, None)
