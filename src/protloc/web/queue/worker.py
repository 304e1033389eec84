"""The prediction worker: threads ("lanes") that share the networks and batch patches across submissions.

Requests only write a submission row and hand its id over, so the event loop never waits for a
network. The worker takes jobs from ``protloc.web.queue.jobs`` (an in-memory queue in the web server's own
process, or claims with leases in a database that workers on other machines share), lingers a few
milliseconds for more, cuts every waiting sample of the same model into the paper's covering patches
and runs them through the network together (``max_batch_patches`` per forward pass); each sample's
probability is the mean of its own patches' sigmoids, exactly as ``Predictor.predict_proba``.

One network pass per sample: with cells on and a GapNet-PL model, the sample's probabilities are
the ``image_probabilities`` of the whole-image pass that gives its cells (``protloc.web.pictures.cells``,
``CellsStage.compute_with_probabilities``), so no patch pass is made for it; other networks and
``cells=False`` keep the batched covering patches. ``Result.probabilities_from`` records which.

Lanes: ``lanes`` threads take jobs side by side (default 2), sharing the cores as
``protloc.web.queue.lanes`` says.

Probabilities first: the result and the ``done`` status are committed as soon as the probabilities
are known, together with the sample's cells (``protloc.web.pictures.cells``; off with ``cells=False``). The
pictures (composite, channels, localisation maps) come afterwards, drawn by
``protloc.web.pictures.renders`` at display size from the sample still in memory, in a thread of their own
(``protloc.web.pictures.idle``) once neither predictions nor HTTP requests are waiting, or on first view,
whichever comes first. ``eager_render=True`` is the platform as it was before: full-size pictures
drawn before ``done`` (kept as the benchmark's baseline). A row whose batch raises is marked
``failed`` with the reason at once, never left ``running``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from protloc.web.storage import db
from protloc.web.queue.batching import WorkerStats, batched_probabilities
from protloc.web.queue.jobs import DatabaseJobs, MemoryJobs, worker_name
from protloc.web.queue.lanes import DEFAULT_LANES, Lanes
from protloc.web.pictures.cells import PATCHES, WHOLE_IMAGE, CellsStage, answering_precision
from protloc.web.memory import release_memory
from protloc.web.pictures.idle import Activity, IdlePictures
from protloc.web.pictures.renders import Renderer
from protloc.web.storage.samples import load_stored_sample
from protloc.web.storage.store import BlobStore

log = logging.getLogger("protloc.web.worker")
# Decoded samples the web server hands to the worker of its own process, so it need not decode the
# stored files again; a few only (a 2048² field is 64 MB).
MAX_HANDED_OVER = 4
# Freed heap goes back to the system once the worker has had no submission for this long (a lane's
# empty wait for jobs, up to 1 s, notices it). Trimming whenever the queue ran empty cost 0.014
# core-s per 1024² upload with one client (the next sample faulted its memory back in: 8% of it).
TRIM_AFTER_IDLE_SECONDS = 0.5


def stored_pixel_size(store: BlobStore, files: list[dict], image: np.ndarray) -> float | None:
    """A submission's µm per pixel from its stored files' metadata or its original names' layout."""
    from protloc.data.formats.channel_files import pixel_size
    from protloc.web.storage.store import KIND_SUFFIX

    paths = [store.path_of(entry["sha256"], KIND_SUFFIX.get(entry["kind"], "")) for entry in files]
    return pixel_size(paths, *image.shape[-2:], names=[entry.get("filename") or "" for entry in files]).um


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class PredictionWorker:
    def __init__(
        self,
        predictors: dict,
        sessions: sessionmaker[Session],
        store: BlobStore,
        max_batch_patches: int = 64,
        max_samples: int = 16,
        linger_seconds: float = 0.02,
        jobs: MemoryJobs | DatabaseJobs | None = None,
        eager_render: bool = False,
        renderer: Renderer | None = None,
        cells: bool = True,
        activity: Activity | None = None,
        lanes: int = DEFAULT_LANES,
        on_finished=None,
        max_pixels: int | None = None,
    ) -> None:
        self.predictors = predictors
        self.sessions = sessions
        self.store = store
        self.max_pixels = max_pixels  # the stored samples' readers apply the server's pixel limit
        self.max_batch_patches = max_batch_patches
        self.max_samples = max_samples
        self.linger_seconds = linger_seconds
        self.name = worker_name()
        self.jobs = jobs if jobs is not None else MemoryJobs(sessions, self.name)
        self.jobs.name = self.name
        if isinstance(self.jobs, DatabaseJobs):
            self.jobs.model_keys = list(predictors)
        self.eager_render = eager_render
        self.renderer = renderer or Renderer(predictors, sessions, store, max_pixels)
        self.lanes = Lanes(lanes)
        self.cells = CellsStage(store, enabled=cells, segmenters=lanes)
        self.stats = WorkerStats()
        # Pictures in a thread of their own, drawn when neither predictions nor requests are waiting.
        self.pictures = IdlePictures(self.renderer, busy=self.busy, activity=activity, on_drawn=self._count_drawn)
        self._handed: collections.OrderedDict = collections.OrderedDict()
        self.on_finished = on_finished  # called with each id done or failed here (long polls wake on it)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._worked, self._trimmed = time.monotonic(), False  # the last submission's end; heap given back since

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> int:
        """Requeue what a previous process left unfinished, then start the lanes; returns the count."""
        rerun = self.recover_unfinished()
        self.lanes.start(self._run, "protloc-prediction-worker")
        if not self.eager_render:
            self.pictures.start()
        if isinstance(self.jobs, DatabaseJobs):
            self._heartbeat = threading.Thread(target=self._renew_leases, name="protloc-lease", daemon=True)
            self._heartbeat.start()
        return rerun

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        self.jobs.stop()
        self.lanes.stop(timeout)
        self.pictures.stop(timeout)
        self.cells.close()

    def run_forever(self) -> None:
        """``protloc worker``: work until stopped (Ctrl+C or SIGTERM finish the batch in hand first)."""
        self.start()
        try:
            while self.alive:
                self.lanes.join_any(0.5)
        finally:
            self.stop()

    @property
    def alive(self) -> bool:
        return self.lanes.alive

    def recover_unfinished(self) -> int:
        count = self.jobs.recover()
        if count:
            log.info("rerunning %d unfinished submission(s)", count)
        return count

    def submit(self, submission_id: str, image: np.ndarray | None = None) -> None:
        if image is not None and isinstance(self.jobs, MemoryJobs) and not self.eager_render:
            with self._lock:
                self._handed[submission_id] = image
                while len(self._handed) > MAX_HANDED_OVER:
                    self._handed.popitem(last=False)
        self.jobs.put(submission_id)

    def pending(self) -> int:
        return self.jobs.pending()

    def busy(self) -> bool:
        """Predictions in hand or queued here (pictures wait for them)."""
        return self.lanes.busy() or (isinstance(self.jobs, MemoryJobs) and self.jobs.pending() > 0)

    def _count_drawn(self) -> None:
        self.stats.add(rendered=1)

    def _renew_leases(self) -> None:
        interval = max(0.2, self.jobs.lease.total_seconds() / 3)
        while not self._stopping.wait(interval):
            held = self.lanes.held()
            try:
                self.jobs.renew(held)
            except Exception as exc:  # the database is away for a moment: the next beat tries again
                log.warning("cannot renew the lease of %d submission(s): %s", len(held), _one_line(exc))

    # -- the loop -----------------------------------------------------------------------------------
    def _waiting(self) -> int:
        """Submissions waiting (with a database: one count query, made once per batch a lane takes)."""
        return self.jobs.pending()

    def _take_at_most(self) -> int:
        one_pass = all(self.cells.one_pass(p) for p in self.predictors.values())
        return self.lanes.take_at_most(self.max_samples, one_pass, self._waiting())

    def _run(self, lane: int = 0) -> None:
        while not self._stopping.is_set():
            try:
                ids = self.jobs.take(self._take_at_most(), self.linger_seconds, 1.0)
            except Exception as exc:
                log.error("cannot take jobs: %s", _one_line(exc))
                self._stopping.wait(1.0)
                continue
            if ids is None:
                return
            if ids:
                started = time.monotonic()
                self._process(ids, lane)
                self.stats.add(busy_seconds=time.monotonic() - started)
                self._worked, self._trimmed = time.monotonic(), False
            elif (not self._trimmed and not self.busy()
                  and time.monotonic() - self._worked >= TRIM_AFTER_IDLE_SECONDS):
                self._trimmed = True
                release_memory()

    def _fail(self, submission_id: str, reason: str) -> None:
        self.stats.add(failures=1)
        with self.sessions.begin() as session:
            row = session.get(db.Submission, submission_id)
            if row is not None and row.status == db.RUNNING and row.worker == self.name:
                row.status, row.error, row.finished_at, row.lease_until = db.FAILED, reason, db.utcnow(), None
        self._announce([submission_id])

    def _announce(self, ids) -> None:
        if self.on_finished is not None:
            for submission_id in ids:
                self.on_finished(submission_id)

    def _fail_unfinished(self, ids: list[str], reason: str) -> int:
        """Rows this worker claimed and left ``running``: failed with the reason, not left for a restart."""
        with self.sessions.begin() as session:
            rows = session.scalars(
                select(db.Submission).where(db.Submission.id.in_(ids), db.Submission.status == db.RUNNING,
                                            db.Submission.worker == self.name)
            ).all()
            for row in rows:
                row.status, row.error, row.finished_at, row.lease_until = db.FAILED, reason, db.utcnow(), None
            failed = [row.id for row in rows]
        self.stats.add(failures=len(failed))
        self._announce(failed)
        return len(rows)

    def _process(self, ids: list[str], lane: int = 0) -> None:
        """Never lets one bad batch kill the worker, and never leaves a claimed row ``running``."""
        self.lanes.hold(lane, ids)
        # cells on: the sample's segmentation runs beside its forward pass, on a core of its own
        beside = 1 if all(self.cells.one_pass(p) for p in self.predictors.values()) else 0
        self.lanes.share_cores(lane, waiting=bool(self._waiting()), beside=beside)
        try:
            with self.sessions() as session:
                rows = session.scalars(select(db.Submission).where(db.Submission.id.in_(ids))).all()
            self._predict(list(rows))
        except Exception as exc:
            log.error("prediction batch failed: %s", _one_line(exc), exc_info=True)
            try:
                self._fail_unfinished(ids, f"prediction failed: {_one_line(exc)}")
            except Exception as again:  # the database itself is down: the restart requeues them
                log.error("cannot mark the batch's submissions failed: %s", _one_line(again))
        finally:
            self.lanes.release(lane)
            with self._lock:
                for submission_id in ids:
                    self._handed.pop(submission_id, None)

    def _predict(self, rows: list[db.Submission]) -> None:
        by_model: dict[str, list[tuple[db.Submission, np.ndarray]]] = {}
        for row in rows:
            predictor = self.predictors.get(row.model_key)
            if predictor is None:
                self._fail(row.id, f"model {row.model_key!r} is not loaded on this worker")
                continue
            with self._lock:
                image = self._handed.get(row.id)
            if image is None:
                try:
                    image = load_stored_sample(self.store, row.input_kind, row.files, self.max_pixels)
                except Exception as exc:
                    self._fail(row.id, f"cannot read the stored sample: {exc}")
                    continue
            by_model.setdefault(row.model_key, []).append((row, image))
        for model_key, items in by_model.items():
            predictor = self.predictors[model_key]
            if self.cells.one_pass(predictor):
                for row, image in items:
                    self._predict_one_pass(predictor, row, image)
            else:
                self._predict_patches(predictor, items)

    def _predict_one_pass(self, predictor, row: db.Submission, image: np.ndarray) -> None:
        """A GapNet-PL sample with cells: its probabilities and cells from one whole-image pass."""
        started = time.monotonic()
        try:
            pixel_size = stored_pixel_size(self.store, row.files, image)
            probs, cells = self.cells.compute_with_probabilities(predictor, row.id, image, pixel_size)
            self.stats.add(forward_passes=1, max_samples_per_pass=1)
            self._finish(predictor, row, image, probs, time.monotonic() - started, cells, WHOLE_IMAGE)
        except Exception as exc:  # this sample only; the others of the batch go on
            log.error("predicting %s failed: %s", row.id, _one_line(exc), exc_info=True)
            self._fail(row.id, f"prediction failed: {_one_line(exc)}")

    def _predict_patches(self, predictor, items: list[tuple[db.Submission, np.ndarray]]) -> None:
        """The samples' covering patches through the network together, then each one's cells (if any)."""
        started = time.monotonic()
        try:
            pixel_sizes = [stored_pixel_size(self.store, row.files, image) for row, image in items]
            all_probs = batched_probabilities(
                predictor, [image for _, image in items], self.max_batch_patches, self.stats, pixel_sizes,
            )
        except Exception as exc:
            log.exception("forward pass failed")
            for row, _ in items:
                self._fail(row.id, f"prediction failed: {_one_line(exc)}")
            return
        shared = (time.monotonic() - started) / len(items)
        for (row, image), probs, pixel_size in zip(items, all_probs, pixel_sizes):
            try:
                own = time.monotonic()
                cells = self.cells.compute(predictor, row.id, image, pixel_size)
                self._finish(predictor, row, image, probs, shared + time.monotonic() - own, cells, PATCHES)
            except Exception as exc:  # this sample only; the others of the batch go on
                log.error("finishing %s failed: %s", row.id, _one_line(exc), exc_info=True)
                self._fail(row.id, f"prediction failed: {_one_line(exc)}")

    def _finish(self, predictor, row: db.Submission, image: np.ndarray, probs: np.ndarray, seconds: float,
                cells: db.CellResult | None, probabilities_from: str) -> None:
        """Stores the result and its cells and marks the row done (if this worker still holds it)."""
        started = time.monotonic()
        predicted = predictor.predicted(probs)
        # With no class over its threshold the page shows the most probable class's map: it always
        # shows where the network looked.
        map_classes = list(predicted) or [predictor.classes[int(np.argmax(probs))]]
        if self.eager_render:  # the old path: full-size pictures before the row says done
            from protloc.web.pictures.renders import render_maps, render_views

            folder = self.renderer.folder(row.id, full=False)
            render_views(image, folder, 1)
            render_maps(predictor, image, map_classes, folder, 1)
        with self.sessions.begin() as session:
            # Still ours? A worker whose lease ran out (it stalled) must not finish a row another took.
            owned = session.execute(
                update(db.Submission)
                .where(db.Submission.id == row.id, db.Submission.status == db.RUNNING, db.Submission.worker == self.name)
                .values(status=db.DONE, error=None, finished_at=db.utcnow(), lease_until=None)
                .execution_options(synchronize_session=False)
            ).rowcount
            if owned != 1:
                self.stats.add(lost_leases=1)
                log.warning("%s: lease lost to another worker; this worker's result is dropped", row.id)
                return
            for table in (db.Result, db.CellResult):  # a rerun replaces what an earlier run stored
                existing = session.get(table, row.id)
                if existing is not None:
                    session.delete(existing)
            session.flush()
            if cells is not None:
                session.add(cells)
            session.add(
                db.Result(
                    submission_id=row.id,
                    classes=list(predictor.classes),
                    probabilities=[float(p) for p in probs],
                    thresholds=[float(t) for t in predictor.thresholds],
                    predicted=list(predicted),
                    predicted_text="|" + "|".join(predicted) + "|",
                    maps=map_classes,
                    seconds=seconds + time.monotonic() - started,
                    cells_count=cells.count if cells is not None else None,
                    cells_note=cells.note if cells is not None else None,
                    probabilities_from=probabilities_from,
                    precision=answering_precision(predictor, probabilities_from),
                )
            )
        self.stats.add(samples=1)
        self._announce([row.id])
        log.info("done %s", row.id)
        if not self.eager_render:
            self.renderer.remember(row.id, image)
            self.pictures.add(row.id)
