"""The HTTP API under /api/v1 (and /health): each route is a thin call into ``Platform``.

The OpenAPI schema says what each route really answers: the 4xx answers with their reason
(``{"detail": ...}``), ``text/csv`` for the exports and ``image/png`` for the images, so a client
generated from /openapi.json handles them.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from protloc.version import __version__
from protloc.data.channels import CHANNELS, HPA_COLOURS
from protloc.web.storage import db
from protloc.web.http.auth import viewer_of
from protloc.web.queue.completion import MAX_WAIT_SECONDS
from protloc.web.http.exports import results_csv
from protloc.web.access import Viewer, owner_of
from protloc.web.http.service import MAX_OFFSET, Platform
from protloc.web.settings import MB
from protloc.web.errors import UploadError
from protloc.web.uploads.receiving import ReceivedForm, stream_multipart

log = logging.getLogger("protloc.web")


class ErrorAnswer(BaseModel):
    """Why a request was refused: one line, or FastAPI's list of invalid parameters."""

    detail: str | list[dict]


def errors(*statuses: int) -> dict:
    reasons = {
        401: "no valid API token, or a revoked one (only when the server requires tokens)",
        403: "for admins only (the operator's --auth-token, or a user made with admin rights)",
        400: "malformed request (not multipart/form-data, too many files, a bad zip member)",
        404: "no such submission, batch or image (or another user's: they are not told apart)",
        413: "over a size limit: bytes per upload, pixels per image, a zip's unpacked size",
        415: "not an image (or, for a batch, not a zip)",
        422: "invalid parameters or content: unknown model or channel, channels of different sizes, ...",
    }
    # The schema inline, not as "model": FastAPI would give a model the route's own media type (text/csv, image/png).
    content = {"application/json": {"schema": ErrorAnswer.model_json_schema()}}
    return {status: {"content": content, "description": reasons[status]} for status in (401, *statuses)}


class CellOut(BaseModel):
    """One cell of a submission (``protloc.cells``: segmented from the nucleus, microtubule and ER
    channels; probabilities from GapNet-PL's head over the cell's own features)."""

    cell_id: int
    centroid_y: float
    centroid_x: float
    area: int
    border: bool
    predicted: list[str]
    top_class: str
    top_probability: float
    probabilities: dict[str, float]
    outline: list[list[int]] = []


class CellsPage(BaseModel):
    """A page of a submission's cells; ``note`` says why there are none (no cells found, scikit-image
    not installed on the worker, not a GapNet-PL model, cells off, not done yet)."""

    id: str
    status: str
    total: int
    note: str | None
    classes: list[str]
    links: dict[str, str]
    items: list[CellOut]


class CSVResponse(Response):
    media_type = "text/csv"


class PNGResponse(FileResponse):
    media_type = "image/png"


CSV_CONTENT = {200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "CSV, one row per submission"}}
CELLS_CSV_CONTENT = {200: {"content": {"text/csv": {"schema": {"type": "string"}}},
                           "description": "CSV: the submission's row (level=image), then one row per cell (level=cell)"}}
ZIP_CONTENT = {200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
                     "description": "zip: results.csv (each sample, then its cells) and masks/<name>_cellmask.png"}}
MASK_CONTENT = {200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                                  "image/tiff": {"schema": {"type": "string", "format": "binary"}}},
                      "description": "label image: 0 background, cell i has value i (16-bit PNG; 32-bit TIFF past 65535 cells)"}}
PNG_CONTENT = {200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}, "description": "PNG image"}}
IMAGE_TYPES = "image/png, image/tiff, image/jpeg, application/octet-stream"


def multipart_sample(models: list[str]) -> dict:
    """The upload of one sample, with every constraint the server enforces: one to four files, a
    model among the loaded ones (the file's content is checked by decoding it: 415/422 say why)."""
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1,
                      "maxItems": len(CHANNELS),
                      "description": "four channel files (HPA names *_blue/_red/_yellow/_green) or one four-channel "
                                     "TIFF/NPZ; PNG, TIFF or JPEG images (anything else: 415)"},
            "channels": {"type": "array", "items": {"type": "string", "enum": CHANNEL_NAMES},
                         "maxItems": len(CHANNELS),
                         "description": "optional, one per file in order: nucleus|microtubules|er|protein (or blue|red|yellow|green)"},
            "model": {"type": "string", "enum": models, "description": "model key from GET /api/v1/models"},
        },
        "required": ["files"],
    }, "encoding": {"files": {"contentType": IMAGE_TYPES}}}}}}


def multipart_zip(models: list[str]) -> dict:
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "properties": {"file": {"type": "string", "format": "binary", "contentMediaType": "application/zip",
                                "description": "a zip of samples (anything else: 415)"},
                       "model": {"type": "string", "enum": models, "description": "model key from GET /api/v1/models"}},
        "required": ["file"],
    }, "encoding": {"file": {"contentType": "application/zip"}}}}}}


def sort_keys(platform: Platform) -> list[str]:
    """Every key ``sort`` takes: a column or a class of a loaded model, ``-`` first for descending."""
    from protloc.web.pictures.cells import SORT_KEYS

    keys = list(SORT_KEYS) + [c for p in platform.predictors.values() for c in p.classes if c not in SORT_KEYS]
    keys = list(dict.fromkeys(keys))
    return keys + ["-" + k for k in keys]


async def receive_form(request: Request, platform: Platform, limit: int, max_files: int) -> ReceivedForm:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + 64 * 1024:
        raise UploadError(413, f"upload of {int(length) / MB:.1f} MB exceeds the limit of {limit / MB:g} MB")
    try:
        return await stream_multipart(request.headers.get("content-type"), request.stream(), platform.store, limit, max_files)
    except ClientDisconnect:
        # Nothing was kept (stream_multipart removed its temporary files); one line, not a traceback.
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        log.warning("%s disconnected during the upload to %s; nothing stored", client, request.url.path)
        raise UploadError(400, "client disconnected during the upload") from None


def text_query():
    return Query(None, description="text in a submission's name or the start of its id (matched literally)")


def class_query():
    return Query(None, alias="class", description="a predicted class")


CHANNEL_NAMES = list(CHANNELS) + [c for c in HPA_COLOURS if c not in CHANNELS]


def api_router(platform: Platform) -> APIRouter:
    settings = platform.settings
    router = APIRouter()
    models = list(platform.predictors)

    @router.get("/health", tags=["service"])
    def health() -> dict:
        return {"status": "ok", "version": __version__, "models": len(platform.predictors),
                "worker": "running" if platform.worker.alive else "off", "queue": platform.worker.pending()}

    @router.get("/api/v1/models", tags=["models"], responses=errors())
    def list_models() -> dict:
        return {"models": [platform.model_info(key) for key in platform.predictors], "default": platform.default_model}

    @router.post("/api/v1/predictions", status_code=202, tags=["predictions"], openapi_extra=multipart_sample(models),
                 responses=errors(400, 413, 415, 422))
    async def create_prediction(request: Request, viewer: Viewer | None = Depends(viewer_of)) -> dict:
        """Upload one sample; returns its id at once, the prediction runs in the background."""
        form = await receive_form(request, platform, settings.max_upload_bytes, max_files=len(CHANNELS))
        submission_id = await run_in_threadpool(platform.create_submission, form, owner_id=owner_of(viewer))
        return {"id": submission_id, "status": db.QUEUED, "url": f"/api/v1/predictions/{submission_id}",
                "page": f"/submissions/{submission_id}"}

    @router.get("/api/v1/predictions", tags=["predictions"], responses=errors(422))
    def list_predictions(q: str | None = text_query(), cls: str | None = class_query(), status: str | None = None,
                         limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0, le=MAX_OFFSET),
                         viewer: Viewer | None = Depends(viewer_of)) -> dict:
        # Finished items come serialised from a cache; nothing passes through FastAPI's encoder.
        return Response(platform.list_json(q, cls, status, limit, offset, viewer), media_type="application/json")

    @router.get("/api/v1/predictions/export.csv", tags=["predictions"], response_class=CSVResponse,
                responses={**CSV_CONTENT, **errors(422)})
    def export_predictions(q: str | None = text_query(), cls: str | None = class_query(), status: str | None = None,
                           viewer: Viewer | None = Depends(viewer_of)):
        _, items = platform.list_submissions(q, cls, status, 100_000, 0, viewer)
        return CSVResponse(results_csv(items), headers={"Content-Disposition": 'attachment; filename="protloc-results.csv"'})

    @router.get("/api/v1/predictions/{submission_id}", tags=["predictions"], responses=errors(404))
    async def get_prediction(submission_id: str, viewer: Viewer | None = Depends(viewer_of),
                             wait: float = Query(0.0, ge=0.0, le=MAX_WAIT_SECONDS, description=(
                                 "seconds to wait for the submission to be done or failed before answering "
                                 "(a long poll: one request instead of many polls); 0 answers at once"))) -> dict:
        # Polled often: a finished submission's JSON comes from a cache, without a query.
        if not wait:
            body = await run_in_threadpool(platform.submission_json, submission_id, viewer)
        else:
            body = await platform.submission_json_when_finished(submission_id, viewer, wait)
        return Response(body, media_type="application/json")

    @router.get("/api/v1/predictions/{submission_id}/result.json", tags=["predictions"], responses=errors(404))
    def download_json(submission_id: str, viewer: Viewer | None = Depends(viewer_of)) -> dict:
        """The submission as ``GET /api/v1/predictions/{id}`` gives it, with every cell listed under ``cells.items``."""
        data = platform.get_submission(submission_id, viewer, cells=True)
        return JSONResponse(data, headers={"Content-Disposition": f'attachment; filename="protloc-{submission_id}.json"'})

    @router.get("/api/v1/predictions/{submission_id}/result.csv", tags=["predictions"], response_class=CSVResponse,
                responses={**CELLS_CSV_CONTENT, **errors(404)})
    def download_csv(submission_id: str, viewer: Viewer | None = Depends(viewer_of)):
        data = platform.get_submission(submission_id, viewer, cells=True)
        return CSVResponse(results_csv([data]), headers={"Content-Disposition": f'attachment; filename="protloc-{submission_id}.csv"'})

    @router.get("/api/v1/predictions/{submission_id}/images/{name}", tags=["predictions"], response_class=PNGResponse,
                responses={**PNG_CONTENT, **errors(404)})
    def prediction_image(submission_id: str, name: str, viewer: Viewer | None = Depends(viewer_of),
                         full: bool = Query(False, description="full resolution (default: display size, "
                                                               "the longest side at most 1024 px)")):
        """A finished submission's picture, drawn on first request (or earlier by an idle worker) and cached."""
        return PNGResponse(platform.submission_image(submission_id, name, viewer, full))

    @router.get("/api/v1/predictions/{submission_id}/cells", tags=["cells"], response_model=CellsPage,
                responses=errors(404, 422))
    def prediction_cells(submission_id: str, viewer: Viewer | None = Depends(viewer_of),
                         limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=MAX_OFFSET),
                         sort: str = Query("cell_id", description="cell_id, area, border, centroid_x, centroid_y, "
                                           "top_class, top_probability or a class name; '-' first: descending",
                                           json_schema_extra={"enum": sort_keys(platform)})):
        """The submission's cells, a page at a time: centroid (px), area (px), border flag, probabilities,
        predicted classes, top class and outline polygon ([x, y] in px)."""
        return platform.submission_cells(submission_id, viewer, limit, offset, sort)

    @router.get("/api/v1/predictions/{submission_id}/cells/mask", tags=["cells"], response_class=FileResponse,
                responses={**MASK_CONTENT, **errors(404)})
    def prediction_cell_mask(submission_id: str, viewer: Viewer | None = Depends(viewer_of)):
        """The cells' label image, in the layout `protloc cells --masks` reads back (correct it, feed it back)."""
        path, filename = platform.cell_mask(submission_id, viewer)
        return FileResponse(path, media_type="image/tiff" if path.suffix == ".tif" else "image/png", filename=filename)

    @router.get("/api/v1/batches/{batch_id}/results.zip", tags=["batches"], response_class=Response,
                responses={**ZIP_CONTENT, **errors(404)})
    def download_batch(batch_id: str, viewer: Viewer | None = Depends(viewer_of)):
        """A batch's results: every sample's row and its cells' rows in results.csv, the cells' label images."""
        from protloc.web.http.exports import batch_zip

        return Response(batch_zip(platform, batch_id, viewer), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="protloc-batch-{batch_id}.zip"'})

    @router.post("/api/v1/batches", status_code=202, tags=["batches"], openapi_extra=multipart_zip(models),
                 responses=errors(400, 413, 415, 422))
    async def create_batch(request: Request, viewer: Viewer | None = Depends(viewer_of)) -> dict:
        """Upload a zip of many samples (channel files named <id>_<colour>.<ext>, or multi-channel files)."""
        form = await receive_form(request, platform, settings.max_batch_bytes, max_files=1)
        batch_id = await run_in_threadpool(platform.batches.create, form, owner_of(viewer))
        return {"id": batch_id, "url": f"/api/v1/batches/{batch_id}", "page": f"/batches/{batch_id}"}

    @router.get("/api/v1/batches/{batch_id}", tags=["batches"], responses=errors(404, 422))
    def get_batch(batch_id: str, viewer: Viewer | None = Depends(viewer_of),
                  limit: int = Query(100, ge=1, le=1000, description="submissions and skipped entries per page"),
                  offset: int = Query(0, ge=0, le=MAX_OFFSET, description="where the page starts in both lists")) -> dict:
        """The batch's counts, and a page of its submissions and of its skipped entries (``*_total``:
        how many there are; ``next``: the next page's address while there is one)."""
        return platform.batches.get(batch_id, viewer, limit=limit, offset=offset)

    @router.get("/api/v1/worker", tags=["service"], responses=errors(403))
    def worker_stats(viewer: Viewer | None = Depends(viewer_of)) -> dict:
        """The worker's counters, across every user: for admins (anyone when the server has no tokens)."""
        if viewer is not None and not viewer.admin:
            raise UploadError(403, "the worker's counters cover every user: for admins only")
        return {"alive": platform.worker.alive, "queue": platform.worker.pending(),
                "pictures_waiting": len(platform.worker.pictures), **platform.worker.stats.to_dict()}

    return router
