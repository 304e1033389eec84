"""Batch uploads: a zip of many samples, unpacked in the background into one submission each."""

from __future__ import annotations

import logging
import shutil
import threading

from sqlalchemy import func, select

from protloc.data.channels import CHANNELS
from protloc.web.storage import db
from protloc.web.uploads.archives import check_zip, extract_zip, group_samples
from protloc.web.errors import UploadError
from protloc.web.uploads.receiving import ReceivedForm

log = logging.getLogger("protloc.web")


class Batches:
    """The batch side of a ``Platform``: checks a zip at upload, extracts it in a thread, reports progress."""

    def __init__(self, platform) -> None:
        self.platform = platform
        self.sessions = platform.sessions
        self.settings = platform.settings

    def create(self, form: ReceivedForm, owner_id: int | None = None) -> str:
        """Check the zip from its central directory (escaping paths, zip bombs) before anything is unpacked."""
        try:
            if len(form.files) != 1:
                raise UploadError(422, "send exactly one zip file")
            archive = form.files[0]
            model_key = self.platform.model_key(form)
            check_zip(archive.path, self.settings.max_batch_bytes, self.settings.max_zip_ratio)
            archive.kind = "zip"
            self.platform.store.keep(archive)
        except BaseException:
            form.discard()
            raise
        with self.sessions.begin() as session:
            row = db.BatchJob(filename=archive.filename, archive_sha256=archive.sha256, model_key=model_key,
                              status="extracting", owner_id=owner_id)
            session.add(row)
            session.flush()
            batch_id = row.id
        self._start_extraction(batch_id)
        return batch_id

    def _start_extraction(self, batch_id: str) -> None:
        threading.Thread(target=self._extract, args=(batch_id,), name=f"batch-{batch_id}", daemon=True).start()

    def _extract(self, batch_id: str) -> None:
        """Unpack a batch and submit each sample; bad samples are listed as skipped, with the reason."""
        store = self.platform.store
        with self.sessions() as session:
            batch = session.get(db.BatchJob, batch_id)
            archive = store.path_of(batch.archive_sha256, ".zip")
            model_key = batch.model_key
            owner_id = batch.owner_id
            done_names = set(session.scalars(select(db.Submission.filenames).where(db.Submission.batch_id == batch_id)).all())
        folder = store.tmp / f"batch-{batch_id}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        skipped: list[dict] = []
        try:
            files = extract_zip(archive, folder, self.settings.max_batch_bytes, self.settings.max_zip_ratio)
            samples, skipped = group_samples(files, folder.resolve())
            self._update(batch_id, total=len(samples), skipped=skipped)
            for sample in samples:
                if sample["name"] in done_names:  # submitted before a restart interrupted the extraction
                    continue
                form = ReceivedForm(fields={"model": [model_key]})
                sources = sample["files"]
                ordered = [sources["image"]] if sample["kind"] == "multichannel" else [sources[c] for c in CHANNELS]
                for source in ordered:
                    received = store.receive_file(source)
                    received.filename = source.name
                    form.files.append(received)
                if sample["kind"] == "channels":
                    form.fields["channels"] = list(CHANNELS)
                try:
                    self.platform.create_submission(form, batch_id=batch_id, sample_name=sample["name"], owner_id=owner_id)
                except UploadError as exc:
                    skipped.append({"name": sample["name"], "reason": exc.reason})
                    self._update(batch_id, skipped=skipped)
            self._update(batch_id, status="queued", total=len(samples), skipped=skipped)
        except UploadError as exc:
            self._update(batch_id, status="failed", error=exc.reason, skipped=skipped)
        except Exception as exc:  # a damaged archive member, a full disk: the batch says why
            log.exception("batch %s failed", batch_id)
            self._update(batch_id, status="failed", error=f"{type(exc).__name__}: {exc}", skipped=skipped)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _update(self, batch_id: str, **values) -> None:
        with self.sessions.begin() as session:
            batch = session.get(db.BatchJob, batch_id)
            for key, value in values.items():
                setattr(batch, key, list(value) if isinstance(value, list) else value)

    def resume(self) -> None:
        """Batches a restart interrupted mid-extraction go on where they stopped."""
        with self.sessions() as session:
            ids = session.scalars(select(db.BatchJob.id).where(db.BatchJob.status == "extracting")).all()
        for batch_id in ids:
            self._start_extraction(batch_id)

    def get(self, batch_id: str, viewer=None, limit: int = 100, offset: int = 0) -> dict:
        """The batch's counts and a page (``offset``, ``limit``) of its submissions and of its skipped
        entries: a zip with thousands of members is not listed in one answer."""
        from protloc.web.access import NotFound, visible

        with self.sessions() as session:
            batch = session.get(db.BatchJob, batch_id)
            if batch is None or not visible(batch.owner_id, viewer):
                raise NotFound(f"no batch {batch_id!r}")
            counts = dict(
                session.execute(
                    select(db.Submission.status, func.count()).where(db.Submission.batch_id == batch_id).group_by(db.Submission.status)
                ).all()
            )
            rows = session.scalars(select(db.Submission).where(db.Submission.batch_id == batch_id)
                                   .order_by(db.Submission.filenames, db.Submission.id).offset(offset).limit(limit)).all()
            skipped = list(batch.skipped or [])
            submitted = sum(counts.values())
            finished = counts.get(db.DONE, 0) + counts.get(db.FAILED, 0)
            state = batch.status
            if state == "queued" and finished == submitted:
                state = "finished"
            return {
                "id": batch.id,
                "filename": batch.filename,
                "model": batch.model_key,
                "created_at": batch.created_at.isoformat() + "Z",
                "status": state,
                "total": batch.total,
                "submitted": submitted,
                "done": counts.get(db.DONE, 0),
                "failed": counts.get(db.FAILED, 0),
                "pending": counts.get(db.QUEUED, 0) + counts.get(db.RUNNING, 0),
                "skipped": skipped[offset : offset + limit],
                "skipped_total": len(skipped),
                "submissions_total": submitted,
                "offset": offset,
                "limit": limit,
                "next": (f"/api/v1/batches/{batch.id}?offset={offset + limit}&limit={limit}"
                         if offset + limit < max(submitted, len(skipped)) else None),
                "error": batch.error,
                "submissions": [
                    {"id": r.id, "name": r.filenames, "status": r.status,
                     "predicted": list(r.result.predicted) if r.result is not None and r.status == db.DONE else None,
                     # None: not done, or no cells computed for it (--no-cells, an older row)
                     "cells": r.result.cells_count if r.result is not None and r.status == db.DONE else None}
                    for r in rows
                ],
            }
