"""The protloc platform: upload HTI images, get them annotated (FastAPI).

``create_app(settings)`` builds the application: the HTTP API under ``/api/v1`` (OpenAPI at
``/docs``), the pages (upload, result, history, batch progress) and the prediction worker, started
and stopped with the application. ``protloc serve`` runs it under uvicorn.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, or_, select
from starlette.concurrency import run_in_threadpool

from protloc import __version__
from protloc.data.channels import CHANNELS, COLOUR_OF_CHANNEL
from protloc.errors import ProtlocError
from protloc.web import db
from protloc.web.storage import (
    BlobStore,
    ReceivedFile,
    ReceivedForm,
    UploadError,
    assemble_sample,
    channel_from_filename,
    check_zip,
    decode_channel,
    decode_multichannel,
    extract_zip,
    group_samples,
    normalise_channel_name,
    stream_multipart,
)
from protloc.web.worker import PredictionWorker

log = logging.getLogger("protloc.web")
HERE = Path(__file__).parent
MB = 1 << 20


@dataclass
class WebSettings:
    """Everything ``create_app`` needs; ``protloc serve`` fills it from the command line."""

    models: list[str] = field(default_factory=lambda: ["pretrained"])  # specs for protloc.load_model
    predictors: dict | None = None  # already loaded predictors by key (skips ``models``)
    data_dir: Path = Path("protloc-data")
    database_url: str | None = None  # default: sqlite file in data_dir
    auth_tokens: list[str] = field(default_factory=list)  # accepted bearer tokens besides the tokens table
    require_auth: bool = False  # tokens table only (no --auth-token given)
    max_upload_bytes: int = 512 * MB  # per sample (one request)
    max_batch_bytes: int = 8192 * MB  # a zip upload, and its total uncompressed size
    max_pixels: int = 50_000_000  # per channel plane: decompression bombs stop here
    run_worker: bool = True  # False: accept and queue only (a later server with a worker runs them)
    max_batch_patches: int = 64
    linger_seconds: float = 0.02
    device: str = "cpu"
    expert_study: Path | None = None  # an expert-study folder: its annotation pages are mounted at /expert
    expert_db_url: str | None = None  # its answer database (default: the study's own)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_tokens) or self.require_auth

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(Path(self.data_dir) / 'protloc.db').resolve()}"


def model_key_for(spec: str, taken: set[str]) -> str:
    base = "pretrained" if spec == "pretrained" else (Path(spec).stem if Path(spec).suffix else Path(spec).name)
    base = "".join(c if c.isalnum() or c in "-_." else "-" for c in base) or "model"
    key, n = base, 2
    while key in taken:
        key, n = f"{base}-{n}", n + 1
    return key


def load_predictors(specs: list[str], device: str = "cpu") -> dict:
    from protloc import load_model

    if not specs:
        raise ProtlocError("give at least one --model")
    predictors: dict = {}
    for spec in specs:
        key = model_key_for(str(spec), set(predictors))
        predictor = load_model(spec, device=device)
        predictor.web_source = str(spec)
        predictors[key] = predictor
    return predictors


# ----------------------------------------------------------------------------------------------------
# auth: a pure ASGI middleware, so streamed upload bodies pass through untouched


class TokenAuth:
    """With auth on, every path but /health needs a valid token.

    Accepted: ``Authorization: Bearer TOKEN``, the ``protloc_token`` cookie, or ``?token=TOKEN`` on
    a page (which sets the cookie, so a browser signs in once by opening a link).
    """

    def __init__(self, app, settings: WebSettings, sessions) -> None:
        self.app = app
        self.settings = settings
        self.sessions = sessions
        self.static_tokens = set(settings.auth_tokens)

    def valid(self, token: str | None) -> bool:
        if not token:
            return False
        if token in self.static_tokens:
            return True
        return db.token_is_known(self.sessions, token)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.settings.auth_enabled or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        header = request.headers.get("authorization", "")
        bearer = header[7:].strip() if header.lower().startswith("bearer ") else None
        query_token = request.query_params.get("token")
        candidates = [bearer, request.cookies.get("protloc_token"), query_token]
        token = None
        for candidate in candidates:
            if candidate and await run_in_threadpool(self.valid, candidate):
                token = candidate
                break
        if token is None:
            response = JSONResponse(
                {"detail": "a valid API token is required: send 'Authorization: Bearer TOKEN' (or open a page with ?token=TOKEN)"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        if token == query_token and scope["method"] in ("GET", "HEAD"):
            # Signed in by a link: keep the token in a cookie and take it out of the address bar
            # (and out of browser history and later access-log lines).
            remaining = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.replace(query=urlencode(remaining))
            response = RedirectResponse(str(target.path) + (f"?{target.query}" if target.query else ""), status_code=303)
            response.set_cookie("protloc_token", token, httponly=True, samesite="strict", path="/")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


# ----------------------------------------------------------------------------------------------------
# the application


class Platform:
    """The state behind one application: settings, database, file store, models and worker."""

    def __init__(self, settings: WebSettings) -> None:
        self.settings = settings
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        self.store = BlobStore(settings.data_dir)
        self.store.clean_tmp()
        self.sessions = db.open_database(settings.resolved_database_url())
        self.predictors = settings.predictors if settings.predictors is not None else load_predictors(settings.models, settings.device)
        if not self.predictors:
            raise ProtlocError("no model loaded")
        self.default_model = next(iter(self.predictors))
        self._record_models()
        self.worker = PredictionWorker(
            self.predictors, self.sessions, self.store,
            max_batch_patches=settings.max_batch_patches, linger_seconds=settings.linger_seconds,
        )

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
            "default": key == self.default_model,
        }

    # -- submissions ------------------------------------------------------------------------------
    def create_submission(self, form: ReceivedForm, batch_id: str | None = None, sample_name: str | None = None) -> str:
        """Validate a received sample completely, then store it and its row in one step.

        Runs in a worker thread (decoding is CPU work). On any UploadError the temporary files are
        removed and nothing is written to the database.
        """
        try:
            model_key = (form.value("model") or self.default_model).strip()
            if model_key not in self.predictors:
                raise UploadError(422, f"unknown model {model_key!r}; choose one of {', '.join(self.predictors)}")
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
                planes = {}
                for received, channel in zip(files, channels):
                    planes[channel] = decode_channel(received, channel, self.settings.max_pixels)
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
        filenames = sample_name or " ".join(e["filename"] for e in entries)
        with self.sessions.begin() as session:
            row = db.Submission(
                model_key=model_key, input_kind=input_kind, files=entries, filenames=filenames,
                height=height, width=width, batch_id=batch_id, status=db.QUEUED,
            )
            session.add(row)
            session.flush()
            submission_id = row.id
        if self.settings.run_worker:
            self.worker.submit(submission_id)
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
        result = row.result
        if row.status == db.DONE and result is not None:
            order = sorted(range(len(result.classes)), key=lambda i: -result.probabilities[i])
            data.update(
                classes=list(result.classes),
                probabilities={result.classes[i]: result.probabilities[i] for i in order},
                thresholds={c: t for c, t in zip(result.classes, result.thresholds)},
                predicted=list(result.predicted),
                seconds=round(result.seconds, 4),
                images={
                    "composite": f"{base}/images/composite.png",
                    "channels": {c: f"{base}/images/channel-{c}.png" for c in CHANNELS},
                },
                maps={c: f"{base}/images/map-{result.classes.index(c)}.png" for c in result.maps},
            )
        return data

    def get_submission(self, submission_id: str) -> dict:
        with self.sessions() as session:
            row = session.get(db.Submission, submission_id)
            if row is None:
                raise HTTPException(404, f"no submission {submission_id!r}")
            return self.submission_dict(row)

    def list_submissions(self, q: str | None, cls: str | None, status: str | None, limit: int, offset: int) -> tuple[int, list[dict]]:
        with self.sessions() as session:
            query = select(db.Submission).outerjoin(db.Result)
            if q:
                needle = q.strip()
                query = query.where(or_(db.Submission.id.startswith(needle.lower()), db.Submission.filenames.contains(needle)))
            if cls:
                query = query.where(db.Result.predicted_text.contains(f"|{cls}|"))
            if status:
                query = query.where(db.Submission.status == status)
            total = session.scalar(select(func.count()).select_from(query.subquery()))
            rows = session.scalars(query.order_by(db.Submission.created_at.desc()).limit(limit).offset(offset)).all()
            return int(total or 0), [self.submission_dict(row) for row in rows]

    # -- batches ----------------------------------------------------------------------------------
    def create_batch(self, form: ReceivedForm) -> str:
        try:
            archives = [f for f in form.files]
            if len(archives) != 1:
                raise UploadError(422, "send exactly one zip file")
            archive = archives[0]
            model_key = (form.value("model") or self.default_model).strip()
            if model_key not in self.predictors:
                raise UploadError(422, f"unknown model {model_key!r}; choose one of {', '.join(self.predictors)}")
            check_zip(archive.path, self.settings.max_batch_bytes)
            archive.kind = "zip"
            self.store.keep(archive)
        except BaseException:
            form.discard()
            raise
        with self.sessions.begin() as session:
            row = db.BatchJob(filename=archive.filename, archive_sha256=archive.sha256, model_key=model_key, status="extracting")
            session.add(row)
            session.flush()
            batch_id = row.id
        self._start_extraction(batch_id)
        return batch_id

    def _start_extraction(self, batch_id: str) -> None:
        threading.Thread(target=self._extract_batch, args=(batch_id,), name=f"batch-{batch_id}", daemon=True).start()

    def _extract_batch(self, batch_id: str) -> None:
        """Unpack a batch and submit each sample; bad samples are listed as skipped, with the reason."""
        with self.sessions() as session:
            batch = session.get(db.BatchJob, batch_id)
            archive = self.store.path_of(batch.archive_sha256, ".zip")
            model_key = batch.model_key
            done_names = set(session.scalars(select(db.Submission.filenames).where(db.Submission.batch_id == batch_id)).all())
        folder = self.store.tmp / f"batch-{batch_id}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        skipped: list[dict] = []
        try:
            files = extract_zip(archive, folder, self.settings.max_batch_bytes)
            samples, skipped = group_samples(files, folder.resolve())
            self._update_batch(batch_id, total=len(samples), skipped=skipped)
            for sample in samples:
                if sample["name"] in done_names:  # submitted before a restart interrupted the extraction
                    continue
                form = ReceivedForm(fields={"model": [model_key]})
                sources = sample["files"]
                ordered = [sources["image"]] if sample["kind"] == "multichannel" else [sources[c] for c in CHANNELS]
                for source in ordered:
                    received = self.store.receive_file(source)
                    received.filename = source.name
                    form.files.append(received)
                if sample["kind"] == "channels":
                    form.fields["channels"] = list(CHANNELS)
                try:
                    self.create_submission(form, batch_id=batch_id, sample_name=sample["name"])
                except UploadError as exc:
                    skipped.append({"name": sample["name"], "reason": exc.reason})
                    self._update_batch(batch_id, skipped=skipped)
            self._update_batch(batch_id, status="queued", total=len(samples), skipped=skipped)
        except UploadError as exc:
            self._update_batch(batch_id, status="failed", error=exc.reason, skipped=skipped)
        except Exception as exc:  # a damaged archive member, a full disk: the batch says why
            log.exception("batch %s failed", batch_id)
            self._update_batch(batch_id, status="failed", error=f"{type(exc).__name__}: {exc}", skipped=skipped)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _update_batch(self, batch_id: str, **values) -> None:
        with self.sessions.begin() as session:
            batch = session.get(db.BatchJob, batch_id)
            for key, value in values.items():
                setattr(batch, key, list(value) if isinstance(value, list) else value)

    def resume_batches(self) -> None:
        with self.sessions() as session:
            ids = session.scalars(select(db.BatchJob.id).where(db.BatchJob.status == "extracting")).all()
        for batch_id in ids:
            self._start_extraction(batch_id)

    def batch_dict(self, batch_id: str) -> dict:
        with self.sessions() as session:
            batch = session.get(db.BatchJob, batch_id)
            if batch is None:
                raise HTTPException(404, f"no batch {batch_id!r}")
            counts = dict(
                session.execute(
                    select(db.Submission.status, func.count()).where(db.Submission.batch_id == batch_id).group_by(db.Submission.status)
                ).all()
            )
            rows = session.scalars(select(db.Submission).where(db.Submission.batch_id == batch_id).order_by(db.Submission.filenames)).all()
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
                "skipped": list(batch.skipped or []),
                "error": batch.error,
                "submissions": [
                    {"id": r.id, "name": r.filenames, "status": r.status,
                     "predicted": list(r.result.predicted) if r.result is not None and r.status == db.DONE else None}
                    for r in rows
                ],
            }


def results_csv(items: list[dict]) -> str:
    classes: list[str] = []
    for item in items:
        for cls in item.get("classes", []):
            if cls not in classes:
                classes.append(cls)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "name", "model", "status", "created_at", "predicted"] + classes)
    for item in items:
        probs = item.get("probabilities", {})
        writer.writerow(
            [item["id"], item["name"], item["model"], item["status"], item["created_at"], ";".join(item.get("predicted", []))]
            + [f"{probs[c]:.6f}" if c in probs else "" for c in classes]
        )
    return buffer.getvalue()


def create_app(settings: WebSettings | None = None) -> FastAPI:
    settings = settings or WebSettings()
    platform = Platform(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.run_worker:
            platform.worker.start()
        platform.resume_batches()
        yield
        await run_in_threadpool(platform.worker.stop)

    app = FastAPI(
        title="protloc",
        version=__version__,
        description="Upload four-channel fluorescence microscopy (HTI) images and get the protein's "
        "subcellular localisation: class probabilities, predicted locations and localisation maps.",
        lifespan=lifespan,
    )
    app.state.platform = platform
    app.add_middleware(TokenAuth, settings=settings, sessions=platform.sessions)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(channels=CHANNELS, colour_of=COLOUR_OF_CHANNEL, version=__version__,
                                 expert=settings.expert_study is not None)
    if settings.expert_study is not None:
        # The expert-study pages use relative URLs only, so they work under a prefix; the token
        # middleware above guards them like every other page.
        from protloc.expert.web import create_expert_app

        app.mount("/expert", create_expert_app(settings.expert_study, settings.expert_db_url), name="expert")

    @app.exception_handler(UploadError)
    async def upload_error(_request: Request, exc: UploadError):
        return JSONResponse({"detail": exc.reason}, status_code=exc.status)

    @app.exception_handler(ProtlocError)
    async def protloc_error(_request: Request, exc: ProtlocError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    multipart_sample = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                                      "description": "four channel files (HPA names *_blue/_red/_yellow/_green) or one four-channel TIFF/NPZ"},
                            "channels": {"type": "array", "items": {"type": "string"},
                                         "description": "optional, one per file in order: nucleus|microtubules|er|protein (or blue|red|yellow|green)"},
                            "model": {"type": "string", "description": "model key from GET /api/v1/models"},
                        },
                        "required": ["files"],
                    }
                }
            },
        }
    }

    async def receive_form(request: Request, limit: int, max_files: int) -> ReceivedForm:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit + 64 * 1024:
            raise UploadError(413, f"upload of {int(length) / MB:.1f} MB exceeds the limit of {limit / MB:g} MB")
        return await stream_multipart(request.headers.get("content-type"), request.stream(), platform.store, limit, max_files)

    # -- API ----------------------------------------------------------------------------------------
    @app.get("/health", tags=["service"])
    def health() -> dict:
        return {"status": "ok", "version": __version__, "models": len(platform.predictors),
                "worker": "running" if platform.worker.alive else "off", "queue": platform.worker.pending()}

    @app.get("/api/v1/models", tags=["models"])
    def list_models() -> dict:
        return {"models": [platform.model_info(key) for key in platform.predictors], "default": platform.default_model}

    @app.post("/api/v1/predictions", status_code=202, tags=["predictions"], openapi_extra=multipart_sample)
    async def create_prediction(request: Request) -> dict:
        """Upload one sample; returns its id at once, the prediction runs in the background."""
        form = await receive_form(request, settings.max_upload_bytes, max_files=len(CHANNELS))
        submission_id = await run_in_threadpool(platform.create_submission, form)
        return {"id": submission_id, "status": db.QUEUED, "url": f"/api/v1/predictions/{submission_id}",
                "page": f"/submissions/{submission_id}"}

    @app.get("/api/v1/predictions", tags=["predictions"])
    def list_predictions(q: str | None = None, cls: str | None = Query(None, alias="class"), status: str | None = None,
                         limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0)) -> dict:
        total, items = platform.list_submissions(q, cls, status, limit, offset)
        return {"total": total, "items": items}

    @app.get("/api/v1/predictions/export.csv", tags=["predictions"], response_class=PlainTextResponse)
    def export_predictions(q: str | None = None, cls: str | None = Query(None, alias="class"), status: str | None = None):
        _, items = platform.list_submissions(q, cls, status, 100_000, 0)
        return Response(results_csv(items), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="protloc-results.csv"'})

    @app.get("/api/v1/predictions/{submission_id}", tags=["predictions"])
    def get_prediction(submission_id: str) -> dict:
        return platform.get_submission(submission_id)

    @app.get("/api/v1/predictions/{submission_id}/result.json", tags=["predictions"])
    def download_json(submission_id: str):
        data = platform.get_submission(submission_id)
        return JSONResponse(data, headers={"Content-Disposition": f'attachment; filename="protloc-{submission_id}.json"'})

    @app.get("/api/v1/predictions/{submission_id}/result.csv", tags=["predictions"], response_class=PlainTextResponse)
    def download_csv(submission_id: str):
        data = platform.get_submission(submission_id)
        return Response(results_csv([data]), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="protloc-{submission_id}.csv"'})

    @app.get("/api/v1/predictions/{submission_id}/images/{name}", tags=["predictions"])
    def prediction_image(submission_id: str, name: str):
        allowed = {"composite.png"} | {f"channel-{c}.png" for c in CHANNELS}
        if name not in allowed and not (name.startswith("map-") and name.endswith(".png") and name[4:-4].isdigit()):
            raise HTTPException(404, f"no image {name!r}")
        if not submission_id.isalnum():
            raise HTTPException(404, f"no submission {submission_id!r}")
        path = platform.store.render_dir(submission_id) / name
        if not path.is_file():
            raise HTTPException(404, "image not available (yet)")
        return FileResponse(path, media_type="image/png")

    @app.post("/api/v1/batches", status_code=202, tags=["batches"], openapi_extra={
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "properties": {"file": {"type": "string", "format": "binary", "description": "zip of samples"},
                                             "model": {"type": "string"}}, "required": ["file"]}}}}})
    async def create_batch(request: Request) -> dict:
        """Upload a zip of many samples (channel files named <id>_<colour>.<ext>, or multi-channel files)."""
        form = await receive_form(request, settings.max_batch_bytes, max_files=1)
        batch_id = await run_in_threadpool(platform.create_batch, form)
        return {"id": batch_id, "url": f"/api/v1/batches/{batch_id}", "page": f"/batches/{batch_id}"}

    @app.get("/api/v1/batches/{batch_id}", tags=["batches"])
    def get_batch(batch_id: str) -> dict:
        return platform.batch_dict(batch_id)

    @app.get("/api/v1/worker", tags=["service"])
    def worker_stats() -> dict:
        return {"alive": platform.worker.alive, "queue": platform.worker.pending(), **platform.worker.stats.to_dict()}

    # -- pages --------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def upload_page(request: Request):
        return templates.TemplateResponse(request, "upload.html", {
            "models": [platform.model_info(k) for k in platform.predictors],
            "max_upload_mb": settings.max_upload_bytes / MB,
        })

    @app.get("/submissions/{submission_id}", response_class=HTMLResponse, include_in_schema=False)
    def result_page(request: Request, submission_id: str):
        data = platform.get_submission(submission_id)
        return templates.TemplateResponse(request, "result.html", {"s": data})

    @app.get("/history", response_class=HTMLResponse, include_in_schema=False)
    def history_page(request: Request, q: str | None = None, cls: str | None = Query(None, alias="class"),
                     page: int = Query(1, ge=1)):
        per_page = 50
        total, items = platform.list_submissions(q, cls or None, None, per_page, (page - 1) * per_page)
        classes = sorted({c for k in platform.predictors for c in platform.predictors[k].classes})
        return templates.TemplateResponse(request, "history.html", {
            "items": items, "total": total, "q": q or "", "cls": cls or "", "classes": classes,
            "page": page, "pages": max(1, (total + per_page - 1) // per_page),
        })

    @app.get("/batches/{batch_id}", response_class=HTMLResponse, include_in_schema=False)
    def batch_page(request: Request, batch_id: str):
        return templates.TemplateResponse(request, "batch.html", {"b": platform.batch_dict(batch_id)})

    return app
