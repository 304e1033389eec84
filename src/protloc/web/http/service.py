"""The platform's logic, without HTTP: settings, models, submissions, listing and the CSV export.

``Platform`` is what the routers call; it knows nothing of FastAPI. Bad input raises
``UploadError(status, reason)`` (``NotFound`` for an unknown id), which the application turns into
an HTTP answer with that status and reason.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import contains_eager

from protloc.data.channels import CHANNELS
from protloc.errors import ProtlocError
from protloc.web.storage import db
from protloc.web.uploads.decoding import (
    assemble_sample,
    channel_from_filename,
    decode_channel,
    decode_multichannel,
    normalise_channel_name,
)
from protloc.web.errors import UploadError
from protloc.web.uploads.receiving import ReceivedForm
from protloc.web.access import NotFound, Viewer, visible
from protloc.web.uploads.archives import shared_sample_id
from protloc.web.storage.store import BlobStore, ReceivedFile
from protloc.web.pictures.cells import answering_precision, probabilities_view
from protloc.web.pictures.cells import summary as cells_summary
from protloc.web.queue.completion import RECHECK_SECONDS, Completions
from protloc.web.queue.jobs import DatabaseJobs
from protloc.web.http.listing import Coalesced, FinishedItems, filtered, list_json, submission_json
from protloc.web.pictures.idle import Activity
from protloc.web.pictures.renders import Renderer, is_image_name
from protloc.web.settings import WebSettings, load_predictors
from protloc.web.queue.worker import PredictionWorker

DECODERS = ThreadPoolExecutor(len(CHANNELS), thread_name_prefix="protloc-decode")
# SQLite (and PostgreSQL's BIGINT) hold signed 64-bit integers: a larger OFFSET is an overflow, not a query.
MAX_OFFSET = 2**63 - 1


class Platform:
    """The state behind one application: settings, database, file store, models and worker."""

    def __init__(self, settings: WebSettings) -> None:
        from protloc.web.uploads.batches import Batches

        self.settings = settings
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        self.store = settings.store if settings.store is not None else BlobStore(settings.data_dir)
        self.store.clean_tmp()
        self.sessions = db.open_database(settings.resolved_database_url())
        self.predictors = settings.predictors if settings.predictors is not None else load_predictors(settings.models, settings.device, settings.precision)
        if not self.predictors:
            raise ProtlocError("no model loaded")
        self.default_model = next(iter(self.predictors))
        self._record_models()
        self.renderer = Renderer(self.predictors, self.sessions, self.store, settings.max_pixels)
        # PostgreSQL: this server's worker claims jobs from the database like `protloc worker`s on
        # other machines; SQLite (one machine): the ids are handed over in memory.
        postgres = self.sessions.kw["bind"].dialect.name == "postgresql"
        jobs = DatabaseJobs(self.sessions, "", lease_seconds=settings.lease_seconds) if postgres else None
        self.activity = Activity()  # HTTP requests in flight: the worker's pictures wait for quiet
        # Long polls: this process's worker announces what it finishes; other processes' cannot.
        self.completions = Completions(None if settings.run_worker and not postgres else RECHECK_SECONDS,
                                       activity=self.activity)
        self.worker = PredictionWorker(
            self.predictors, self.sessions, self.store,
            max_batch_patches=settings.max_batch_patches, linger_seconds=settings.linger_seconds,
            jobs=jobs, eager_render=settings.eager_render, renderer=self.renderer, activity=self.activity,
            cells=settings.cells, lanes=settings.lanes, on_finished=self.completions.announce,
            max_pixels=settings.max_pixels,
        )
        self.batches = Batches(self)
        self.finished_items = FinishedItems()
        self.coalesced_lists = Coalesced()  # simultaneous identical list requests share one query
        # Tokens are required when the command line asks for them or the database holds any
        # (users made with --create-user): a server with users never opens to everyone by omission.
        self.auth_required = settings.auth_enabled or db.holds_tokens(self.sessions)

    def _record_models(self) -> None:
        with self.sessions.begin() as session:
            for key, predictor in self.predictors.items():
                row = session.get(db.ModelRecord, key) or db.ModelRecord(key=key)
                row.name = getattr(predictor, "name", key) or key
                row.source = getattr(predictor, "web_source", None) or str(predictor.source.get("file", ""))
                row.classes = list(predictor.classes)
                row.patch_size = int(predictor.patch_size)
                row.last_loaded_at = db.utcnow()
                session.add(row)

    def model_info(self, key: str) -> dict:
        predictor = self.predictors[key]
        return {
            "key": key,
            "name": getattr(predictor, "name", key),
            "architecture": getattr(predictor, "model_name", ""),
            "classes": list(predictor.classes),
            "thresholds": [float(t) for t in predictor.thresholds],
            "patch_size": int(predictor.patch_size),
            "image_probabilities": probabilities_view(self.worker.cells.probabilities_from(predictor)),
            "precision": answering_precision(predictor, self.worker.cells.probabilities_from(predictor)),
            "default": key == self.default_model,
        }

    def model_key(self, form: ReceivedForm) -> str:
        given = form.value("model")
        model_key = self.default_model if given is None else given  # exactly a key (the schema's enum)
        if model_key not in self.predictors:
            raise UploadError(422, f"unknown model {model_key!r}; choose one of {', '.join(self.predictors)}")
        return model_key

    # -- submissions ------------------------------------------------------------------------------
    def create_submission(self, form: ReceivedForm, batch_id: str | None = None, sample_name: str | None = None,
                          owner_id: int | None = None) -> str:
        """Validate a received sample completely, then store it and its row in one step.

        Runs in a worker thread (decoding is CPU work). On any UploadError the temporary files are
        removed and nothing is written to the database.
        """
        try:
            model_key = self.model_key(form)
            files = form.files
            if not files:
                raise UploadError(422, "no image file in the request (send four channel files or one four-channel TIFF/NPZ)")
            entries: list[dict]
            if len(files) == 1:
                image = decode_multichannel(files[0], self.settings.max_pixels)
                input_kind = "multichannel"
                entries = [{"filename": files[0].filename, "sha256": files[0].sha256, "kind": files[0].kind, "channel": None}]
            elif len(files) == len(CHANNELS):
                channels = self._assign_channels(files, form.fields.get("channels", []))
                # The four files side by side: the decoders release the GIL (a 2048² JPEG takes ~50 ms).
                decoded = DECODERS.map(lambda pair: decode_channel(*pair, self.settings.max_pixels), zip(files, channels))
                planes = dict(zip(channels, decoded))
                image = assemble_sample(planes, {c: f.filename for f, c in zip(files, channels)})
                input_kind = "channels"
                entries = [
                    {"filename": f.filename, "sha256": f.sha256, "kind": f.kind, "channel": c}
                    for f, c in zip(files, channels)
                ]
            else:
                raise UploadError(
                    422,
                    f"wrong channel count: got {len(files)} files; send {len(CHANNELS)} channel files "
                    f"({', '.join(CHANNELS)}) or one four-channel TIFF/NPZ",
                )
            height, width = int(image.shape[1]), int(image.shape[2])
            for received in files:
                self.store.keep(received)
        except BaseException:
            form.discard()
            raise
        names = [e["filename"] for e in entries]
        # HPA's four files of one sample are named by it: 57639_1283_B2_10_blue.jpg ... -> 57639_1283_B2_10
        filenames = sample_name or (input_kind == "channels" and shared_sample_id(names)) or " ".join(names)
        with self.sessions.begin() as session:
            row = db.Submission(
                model_key=model_key, input_kind=input_kind, files=entries, filenames=filenames, owner_id=owner_id,
                height=height, width=width, batch_id=batch_id, status=db.QUEUED,
            )
            session.add(row)
            session.flush()
            submission_id = row.id
        if self.settings.run_worker:
            self.worker.submit(submission_id, image)
        return submission_id

    @staticmethod
    def _assign_channels(files: list[ReceivedFile], given: list[str]) -> list[str]:
        if given and len(given) != len(files):
            raise UploadError(422, f"{len(given)} channel names for {len(files)} files")
        channels = []
        for index, received in enumerate(files):
            explicit = given[index].strip() if given else ""
            if explicit:
                channel = normalise_channel_name(explicit)
                if channel is None:
                    raise UploadError(422, f"unknown channel {explicit!r} for {received.filename} (use {', '.join(CHANNELS)} or HPA colours)")
            else:
                channel = channel_from_filename(received.filename)
                if channel is None:
                    raise UploadError(
                        422,
                        f"cannot tell the channel of {received.filename}: name it *_blue/_red/_yellow/_green "
                        "or send a 'channels' field per file",
                    )
            channels.append(channel)
        if sorted(channels) != sorted(CHANNELS):
            doubled = sorted({c for c in channels if channels.count(c) > 1})
            raise UploadError(422, f"each channel once please: {', '.join(doubled)} given twice, "
                              f"{', '.join(c for c in CHANNELS if c not in channels)} missing")
        return channels

    def submission_dict(self, row: db.Submission) -> dict:
        base = f"/api/v1/predictions/{row.id}"
        data = {
            "id": row.id,
            "status": row.status,
            "model": row.model_key,
            "created_at": row.created_at.isoformat() + "Z",
            "finished_at": row.finished_at.isoformat() + "Z" if row.finished_at else None,
            "filenames": [entry["filename"] for entry in row.files],
            "name": row.filenames,
            "input_kind": row.input_kind,
            "height": row.height,
            "width": row.width,
            "batch_id": row.batch_id,
            "error": row.error,
            "links": {"self": base, "page": f"/submissions/{row.id}", "csv": f"{base}/result.csv", "json": f"{base}/result.json"},
        }
        result = row.result if row.status == db.DONE else None  # an unfinished row's result is not loaded
        if result is not None:
            order = sorted(range(len(result.classes)), key=lambda i: -result.probabilities[i])
            data.update(
                classes=list(result.classes),
                probabilities={result.classes[i]: result.probabilities[i] for i in order},
                thresholds={c: t for c, t in zip(result.classes, result.thresholds)},
                predicted=list(result.predicted),
                image_probabilities=probabilities_view(result.probabilities_from),
                precision=result.precision or "fp32",  # NULL: a row from before precisions, fp32
                seconds=round(result.seconds, 4),
                images={
                    "composite": f"{base}/images/composite.png",
                    "channels": {c: f"{base}/images/channel-{c}.png" for c in CHANNELS},
                },
                maps={c: f"{base}/images/map-{result.classes.index(c)}.png" for c in result.maps},
            )
        data["cells"] = cells_summary(result if row.status == db.DONE else None, row.status, base)
        return data

    def get_submission(self, submission_id: str, viewer: Viewer | None = None, cells: bool = False) -> dict:
        """One submission with a summary of its cells; ``cells=True`` lists them all (the downloads)."""
        from protloc.web.pictures.cells import cell_view

        with self.sessions() as session:
            row = session.get(db.Submission, submission_id)
            if row is None or not visible(row.owner_id, viewer):  # another's is as absent as none: 404
                raise NotFound(f"no submission {submission_id!r}")
            data = self.submission_dict(row)
            if cells:
                record = session.get(db.CellResult, row.id) if row.status == db.DONE else None
                classes = data.get("classes", [])
                data["cells"]["items"] = [cell_view(c, classes) for c in record.cells] if record is not None else []
            return data

    def submission_cells(self, submission_id: str, viewer: Viewer | None, limit: int, offset: int, sort: str) -> dict:
        """A page of a submission's cells, sorted (``protloc.web.pictures.cells.sort_cells``)."""
        from protloc.web.pictures.cells import cell_view, sort_cells

        with self.sessions() as session:
            row = session.get(db.Submission, submission_id)
            if row is None or not visible(row.owner_id, viewer):
                raise NotFound(f"no submission {submission_id!r}")
            record = session.get(db.CellResult, row.id) if row.status == db.DONE else None
            classes = list(row.result.classes) if row.result is not None else []
            cells = sort_cells(list(record.cells) if record is not None else [], sort, classes)
            answer = cells_summary(row.result if row.status == db.DONE else None, row.status, f"/api/v1/predictions/{row.id}")
            return {"id": row.id, "status": row.status, "total": answer["count"], "note": answer["note"],
                    "classes": classes, "links": answer["links"],
                    "items": [cell_view(c, classes) for c in cells[offset : offset + limit]]}

    def cell_mask(self, submission_id: str, viewer: Viewer | None) -> tuple[Path, str]:
        """The stored label image of a submission's cells and the name to download it under."""
        from protloc.web.pictures.cells import labels_path

        with self.sessions() as session:
            row = session.get(db.Submission, submission_id)
            if row is None or not visible(row.owner_id, viewer):
                raise NotFound(f"no submission {submission_id!r}")
            name = row.filenames
        path = labels_path(self.store, submission_id) if submission_id.isalnum() else None
        if path is None:
            raise NotFound("no cell mask for this submission (not done yet, or no cells were computed: see its cells' note)")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100] or submission_id
        return path, f"{safe}_cellmask{path.suffix}"

    def submission_json(self, submission_id: str, viewer: Viewer | None = None) -> bytes:
        """``get_submission`` as JSON bytes (finished submissions serialised once)."""
        item = submission_json(self.sessions, self.submission_dict, self.finished_items, submission_id, viewer)
        if item is None:  # another's is as absent as none: 404
            raise NotFound(f"no submission {submission_id!r}")
        return item

    async def submission_json_when_finished(self, submission_id: str, viewer: Viewer | None, wait: float) -> bytes:
        """``submission_json`` once the submission is done or failed, or after ``wait`` seconds."""
        def look() -> tuple[bytes, bool]:
            answer = self.submission_json(submission_id, viewer)
            return answer, self.finished_items.get(submission_id) is not None  # only finished ones are kept

        return await self.completions.wait(submission_id, wait, look)

    def submission_image(self, submission_id: str, name: str, viewer: Viewer | None = None, full: bool = False) -> Path:
        """A picture of a finished submission: cached, or drawn now (display size unless ``full``)."""
        if not is_image_name(name):
            raise NotFound(f"no image {name!r}")
        if not submission_id.isalnum():
            raise NotFound(f"no submission {submission_id!r}")
        if viewer is not None:
            with self.sessions() as session:
                owner = session.scalar(select(db.Submission.owner_id).where(db.Submission.id == submission_id))
            if not viewer.sees(owner):
                raise NotFound(f"no submission {submission_id!r}")
        path = self.renderer.image(submission_id, name, full=full)
        if path is None:
            raise NotFound("image not available (the submission is not done, or has no such picture)")
        return path

    def list_submissions(self, q: str | None, cls: str | None, status: str | None, limit: int, offset: int,
                         viewer: Viewer | None = None) -> tuple[int, list[dict]]:
        if not 0 <= offset <= MAX_OFFSET:
            raise UploadError(422, f"offset must lie between 0 and {MAX_OFFSET}")
        with self.sessions() as session:
            # The result comes in the same query, not one query per listed row.
            query = select(db.Submission).outerjoin(db.Result).options(contains_eager(db.Submission.result))
            query = filtered(query, q, cls, status, viewer)
            total = session.scalar(select(func.count()).select_from(query.subquery()))
            rows = session.scalars(query.order_by(db.Submission.created_at.desc()).limit(limit).offset(offset)).all()
            return int(total or 0), [self.submission_dict(row) for row in rows]

    def list_json(self, q: str | None, cls: str | None, status: str | None, limit: int, offset: int,
                  viewer: Viewer | None = None) -> bytes:
        """``list_submissions`` as the API answers it, JSON bytes (finished items serialised once)."""
        if not 0 <= offset <= MAX_OFFSET:
            raise UploadError(422, f"offset must lie between 0 and {MAX_OFFSET}")
        key = (viewer, q, cls, status, limit, offset)
        return self.coalesced_lists.run(key, lambda: list_json(self.sessions, self.submission_dict, self.finished_items,
                                                               q, cls, status, limit, offset, viewer))
