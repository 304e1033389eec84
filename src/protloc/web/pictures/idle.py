"""Pictures drawn while the server is quiet, in a thread of their own: predictions never wait for them.

The prediction worker hands each finished submission to ``IdlePictures`` (and the decoded sample to
the renderer, so it is not decoded again). The drawing thread takes the oldest one once nothing else
wants the CPU: no prediction in hand or queued, and no HTTP request in flight or arrived in the last
``IDLE_SECONDS`` (``Activity``, counted by ``ActivityMiddleware``). A burst of uploads, polls or list
requests is served first (also between the pictures of one submission); a picture someone asks for
before that is drawn on view, by the request.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from typing import Callable

from protloc.web.memory import release_memory

log = logging.getLogger("protloc.web.pictures")
# Pictures wait until the server has been quiet this long.
IDLE_SECONDS = 0.25
# Added to the drawing thread's nice value (Linux threads have their own): a request that arrives while a
# picture is being drawn gets the CPU first.
PICTURE_NICENESS = 10


class Activity:
    """HTTP requests in flight, and when the last one ended."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.last = time.monotonic()
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self.last = time.monotonic()

    def quiet_for(self) -> float:
        """Seconds since the last request ended; 0 while one is in flight."""
        return 0.0 if self.in_flight else time.monotonic() - self.last


class ActivityMiddleware:
    """Counts HTTP requests for ``Activity`` (pure ASGI: streamed bodies pass through untouched)."""

    def __init__(self, app, activity: Activity) -> None:
        self.app = app
        self.activity = activity

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.activity.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.activity.leave()


class IdlePictures:
    """A queue of finished submissions whose display pictures are drawn when the server is quiet.

    ``busy()``: True while predictions are in hand or waiting. ``on_drawn()``: called after each
    submission (statistics). The queue is bounded: beyond ``limit`` the oldest are left to first view.
    """

    def __init__(self, renderer, busy: Callable[[], bool], activity: Activity | None = None,
                 on_drawn: Callable[[], None] | None = None, limit: int = 10_000) -> None:
        self.renderer = renderer
        self.busy = busy
        self.activity = activity
        self.on_drawn = on_drawn
        self._queue: collections.deque = collections.deque(maxlen=limit)
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: str | None = None

    def add(self, submission_id: str) -> None:
        with self._wake:
            if len(self._queue) == self._queue.maxlen:
                self.renderer.forget(self._queue[0])  # dropped from the queue: drawn on view, from the store
            self._queue.append(submission_id)
            self._wake.notify()

    def __len__(self) -> int:
        """Submissions whose pictures wait or are being drawn."""
        return len(self._queue) + (self._current is not None)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="protloc-pictures", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)

    def quiet(self) -> bool:
        if self.busy():
            return False
        return self.activity is None or self.activity.quiet_for() >= IDLE_SECONDS

    def _run(self) -> None:
        try:
            thread = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + PICTURE_NICENESS))
        except (AttributeError, OSError):  # not Linux: the quiet check alone
            pass
        while not self._stopping.is_set():
            with self._wake:
                while not self._queue and not self._stopping.is_set():
                    self._wake.wait(1.0)
            if self._stopping.is_set():
                return
            if not self.quiet():
                self._stopping.wait(IDLE_SECONDS / 5)
                continue
            with self._wake:
                submission_id = self._current = self._queue.popleft() if self._queue else None
            if submission_id is None:
                continue
            try:
                self.draw(submission_id)
            finally:
                self._current = None

    def draw(self, submission_id: str) -> None:
        finished = True
        try:
            # A request or a prediction that arrives meanwhile goes first: the rest waits for quiet again.
            finished = self.renderer.render_all(submission_id, keep_going=self.quiet)
            if not finished:
                with self._wake:
                    if len(self._queue) == self._queue.maxlen:  # as add(): the one dropped is drawn on view
                        self.renderer.forget(self._queue.pop())
                    self._queue.appendleft(submission_id)
            elif self.on_drawn is not None:
                self.on_drawn()
        except Exception as exc:  # a picture that cannot be drawn is drawn (or refused) on view
            log.warning("drawing the pictures of %s failed: %s", submission_id, exc)
        finally:
            if finished:
                self.renderer.forget(submission_id)
                release_memory()
