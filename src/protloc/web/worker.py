"""The prediction worker: one thread that owns the networks and batches patches across submissions.

Requests only write a submission row and put its id on a queue, so the event loop never waits for a
network. The worker takes the first waiting id, lingers a few milliseconds for more, cuts every
waiting sample of the same model into the paper's covering patches and runs them through the
network together (``max_batch_patches`` per forward pass); each sample's probability is the mean of
its own patches' sigmoids, exactly as ``Predictor.predict_proba``. The result, its rendered images
and the ``done`` status are committed together; on start, submissions left ``queued`` or ``running``
by a previous process are put back in the queue (``recover_unfinished``); a row whose batch raises is
marked ``failed`` with the reason at once, never left ``running``.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from protloc.data.channels import CHANNELS
from protloc.web import db
from protloc.web.storage import BlobStore, load_stored_sample

log = logging.getLogger("protloc.web.worker")
_STOP = object()


@dataclass
class WorkerStats:
    """What the worker has done; ``max_samples_per_pass`` > 1 shows batching across requests."""

    forward_passes: int = 0
    patches: int = 0
    samples: int = 0
    failures: int = 0
    max_samples_per_pass: int = 0
    busy_seconds: float = 0.0
    started_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def batched_probabilities(predictor, images: list[np.ndarray], max_batch_patches: int, stats: WorkerStats | None = None,
                          pixel_sizes: list[float | None] | None = None) -> list[np.ndarray]:
    """Probabilities of several samples, their covering patches sharing forward passes (the one
    ``Inferer``; fp32: GapNet-PL's fast path, equal to the plain forward's logits within 1e-6)."""

    def count(patches: int, samples: int) -> None:
        if stats is not None:
            stats.forward_passes += 1
            stats.patches += patches
            stats.max_samples_per_pass = max(stats.max_samples_per_pass, samples)

    inferer = predictor.inferer(batch_size=max(1, max_batch_patches), precision="fp32", on_pass=count)
    return inferer.predict_many(images, pixel_sizes)  # each image rescaled to the model's pixel size


def stored_pixel_size(store: BlobStore, files: list[dict], image: np.ndarray) -> float | None:
    """A submission's µm per pixel from its stored files' metadata or its original names' layout."""
    from protloc.data.pixel_size import pixel_size_of
    from protloc.web.storage import KIND_SUFFIX

    paths = [store.path_of(entry["sha256"], KIND_SUFFIX.get(entry["kind"], "")) for entry in files]
    return pixel_size_of(paths, *image.shape[-2:], names=[entry.get("filename") or "" for entry in files]).um


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def render_submission(predictor, image: np.ndarray, predicted: list[str], probs: np.ndarray, folder: Path) -> list[str]:
    """Composite, channels and the localisation map of each predicted class as PNGs in ``folder``.

    With no class over its threshold, the map of the most probable class is drawn instead, so the
    page always shows where the network looked. Returns the classes with a map.
    """
    from protloc import visualization as render

    folder.mkdir(parents=True, exist_ok=True)
    composite = render.composite(image)
    render.save_png(composite, folder / "composite.png")
    for channel in CHANNELS:
        render.save_png(render.channel_image(image, channel), folder / f"channel-{channel}.png")
    map_classes = list(predicted) or [predictor.classes[int(np.argmax(probs))]]
    maps = predictor.localization_maps(image, map_classes)
    for cls in map_classes:
        index = predictor.classes.index(cls)
        render.save_png(render.overlay_map(image, maps[cls], base=composite), folder / f"map-{index}.png")
    return map_classes


class PredictionWorker:
    def __init__(
        self,
        predictors: dict,
        sessions: sessionmaker[Session],
        store: BlobStore,
        max_batch_patches: int = 64,
        max_samples: int = 16,
        linger_seconds: float = 0.02,
    ) -> None:
        self.predictors = predictors
        self.sessions = sessions
        self.store = store
        self.max_batch_patches = max_batch_patches
        self.max_samples = max_samples
        self.linger_seconds = linger_seconds
        self.queue: queue.Queue = queue.Queue()
        self.stats = WorkerStats()
        self._thread: threading.Thread | None = None

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> int:
        """Requeue what a previous process left unfinished, then start the thread; returns the count."""
        rerun = self.recover_unfinished()
        self._thread = threading.Thread(target=self._run, name="protloc-prediction-worker", daemon=True)
        self._thread.start()
        return rerun

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is not None and self._thread.is_alive():
            self.queue.put(_STOP)
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def recover_unfinished(self) -> int:
        with self.sessions.begin() as session:
            ids = session.scalars(
                select(db.Submission.id).where(db.Submission.status.in_(db.UNFINISHED)).order_by(db.Submission.created_at)
            ).all()
            if ids:
                session.execute(update(db.Submission).where(db.Submission.id.in_(ids)).values(status=db.QUEUED))
        for submission_id in ids:
            self.queue.put(submission_id)
        if ids:
            log.info("rerunning %d unfinished submission(s)", len(ids))
        return len(ids)

    def submit(self, submission_id: str) -> None:
        self.queue.put(submission_id)

    def pending(self) -> int:
        return self.queue.qsize()

    # -- the loop -----------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is _STOP:
                return
            ids = [first]
            stop_after = False
            deadline = time.monotonic() + self.linger_seconds
            while len(ids) < self.max_samples:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP:
                    stop_after = True
                    break
                ids.append(item)
            started = time.monotonic()
            self._process(ids)
            self.stats.busy_seconds += time.monotonic() - started
            if stop_after:
                return

    def _claim(self, ids: list[str]) -> list[db.Submission]:
        with self.sessions.begin() as session:
            rows = session.scalars(
                select(db.Submission).where(db.Submission.id.in_(ids), db.Submission.status == db.QUEUED)
            ).all()
            for row in rows:
                row.status = db.RUNNING
                row.attempts += 1
            return list(rows)

    def _fail(self, submission_id: str, reason: str) -> None:
        self.stats.failures += 1
        with self.sessions.begin() as session:
            row = session.get(db.Submission, submission_id)
            if row is not None:
                row.status, row.error, row.finished_at = db.FAILED, reason, db.utcnow()

    def _fail_unfinished(self, ids: list[str], reason: str) -> int:
        """Rows this worker claimed and left ``running``: failed with the reason, not left for a restart."""
        with self.sessions.begin() as session:
            rows = session.scalars(
                select(db.Submission).where(db.Submission.id.in_(ids), db.Submission.status == db.RUNNING)
            ).all()
            for row in rows:
                row.status, row.error, row.finished_at = db.FAILED, reason, db.utcnow()
        self.stats.failures += len(rows)
        return len(rows)

    def _process(self, ids: list[str]) -> None:
        """Never lets one bad batch kill the worker, and never leaves a claimed row ``running``."""
        claimed: list[str] = []
        try:
            rows = self._claim(list(dict.fromkeys(ids)))
            claimed = [row.id for row in rows]
            self._predict(rows)
        except Exception as exc:
            log.error("prediction batch failed: %s", _one_line(exc), exc_info=True)
            if claimed:
                try:
                    self._fail_unfinished(claimed, f"prediction failed: {_one_line(exc)}")
                except Exception as again:  # the database itself is down: the restart requeues them
                    log.error("cannot mark the batch's submissions failed: %s", _one_line(again))

    def _predict(self, rows: list[db.Submission]) -> None:
        by_model: dict[str, list[tuple[db.Submission, np.ndarray]]] = {}
        for row in rows:
            predictor = self.predictors.get(row.model_key)
            if predictor is None:
                self._fail(row.id, f"model {row.model_key!r} is not loaded on this server")
                continue
            try:
                image = load_stored_sample(self.store, row.input_kind, row.files)
            except Exception as exc:
                self._fail(row.id, f"cannot read the stored sample: {exc}")
                continue
            by_model.setdefault(row.model_key, []).append((row, image))
        for model_key, items in by_model.items():
            predictor = self.predictors[model_key]
            started = time.monotonic()
            try:
                all_probs = batched_probabilities(
                    predictor, [image for _, image in items], self.max_batch_patches, self.stats,
                    [stored_pixel_size(self.store, row.files, image) for row, image in items],
                )
            except Exception as exc:
                log.exception("forward pass failed")
                for row, _ in items:
                    self._fail(row.id, f"prediction failed: {_one_line(exc)}")
                continue
            shared = (time.monotonic() - started) / len(items)
            for (row, image), probs in zip(items, all_probs):
                try:
                    self._finish(predictor, row, image, probs, shared)
                except Exception as exc:  # this sample only; the others of the batch go on
                    log.error("finishing %s failed: %s", row.id, _one_line(exc), exc_info=True)
                    self._fail(row.id, f"prediction failed: {_one_line(exc)}")

    def _finish(self, predictor, row: db.Submission, image: np.ndarray, probs: np.ndarray, shared_seconds: float) -> None:
        started = time.monotonic()
        predicted = predictor.predicted(probs)
        final = self.store.render_dir(row.id)
        staging = self.store.tmp / f"render-{row.id}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            map_classes = render_submission(predictor, image, predicted, probs, staging)
        except Exception as exc:
            shutil.rmtree(staging, ignore_errors=True)
            log.exception("rendering failed")
            self._fail(row.id, f"rendering failed: {exc}")
            return
        # Images first, then the row that points at them: a crash in between only leaves a rerun.
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        with self.sessions.begin() as session:
            current = session.get(db.Submission, row.id)
            if current is None:
                return
            existing = session.get(db.Result, row.id)
            if existing is not None:
                session.delete(existing)
                session.flush()
            session.add(
                db.Result(
                    submission_id=row.id,
                    classes=list(predictor.classes),
                    probabilities=[float(p) for p in probs],
                    thresholds=[float(t) for t in predictor.thresholds],
                    predicted=list(predicted),
                    predicted_text="|" + "|".join(predicted) + "|",
                    maps=map_classes,
                    seconds=shared_seconds + time.monotonic() - started,
                )
            )
            current.status, current.error, current.finished_at = db.DONE, None, db.utcnow()
        self.stats.samples += 1
