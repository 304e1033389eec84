"""The HTML pages: upload, a submission's result, the history, a batch's progress."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from protloc.version import __version__
from protloc.data.channels import CHANNELS, COLOUR_OF_CHANNEL
from protloc.web.http.auth import viewer_of
from protloc.web.access import Viewer
from protloc.web.http.service import MAX_OFFSET, Platform
from protloc.web.settings import MB

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
PER_PAGE = 50


def cells_context(data: dict) -> dict:
    """What the result page's cell section draws: each cell with its outline colour, and the area of
    the field the display-size overlay covers (its SVG coordinates are the field's pixels)."""
    from protloc.visualization import NO_CLASS, class_colours, display_factor
    from protloc.web.pictures.cells import colour_classes

    classes = data.get("classes", [])
    items = data["cells"].get("items", [])
    stored = [{**c, "probabilities": [c["probabilities"][k] for k in classes]} for c in items]
    colour_of = colour_classes(stored, classes)
    factor = display_factor(data["height"], data["width"], full=False)
    rgb = class_colours(classes)
    cells = [{**c, "colour_class": colour_of[c["cell_id"]],
              "colour": "rgb({}, {}, {})".format(*rgb.get(colour_of[c["cell_id"]], NO_CLASS)),
              "points": " ".join(f"{x},{y}" for x, y in c["outline"])} for c in items]
    shown = {c["colour_class"] for c in cells}
    legend = [(c, "rgb({}, {}, {})".format(*rgb[c])) for c in classes if c in shown]
    if None in shown:
        legend.append(("no class over its threshold", "rgb({}, {}, {})".format(*NO_CLASS)))
    return {"items": cells, "width": data["width"] // factor * factor, "height": data["height"] // factor * factor,
            "dot": max(3, factor * 3), "legend": legend}


def pages_router(platform: Platform) -> APIRouter:
    settings = platform.settings
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.globals.update(channels=CHANNELS, colour_of=COLOUR_OF_CHANNEL, version=__version__,
                                 expert=settings.expert_study is not None)
    router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)

    @router.get("/")
    def upload_page(request: Request):
        return templates.TemplateResponse(request, "upload.html", {
            "models": [platform.model_info(k) for k in platform.predictors],
            "max_upload_mb": settings.max_upload_bytes / MB,
        })

    @router.get("/submissions/{submission_id}")
    def result_page(request: Request, submission_id: str, viewer: Viewer | None = Depends(viewer_of)):
        data = platform.get_submission(submission_id, viewer, cells=True)
        return templates.TemplateResponse(request, "result.html", {"s": data, "cells": cells_context(data)})

    @router.get("/history")
    def history_page(request: Request, q: str | None = None, cls: str | None = Query(None, alias="class"),
                     page: int = Query(1, ge=1, le=MAX_OFFSET // PER_PAGE), viewer: Viewer | None = Depends(viewer_of)):
        total, items = platform.list_submissions(q, cls or None, None, PER_PAGE, (page - 1) * PER_PAGE, viewer)
        classes = sorted({c for k in platform.predictors for c in platform.predictors[k].classes})
        return templates.TemplateResponse(request, "history.html", {
            "items": items, "total": total, "q": q or "", "cls": cls or "", "classes": classes,
            "page": page, "pages": max(1, (total + PER_PAGE - 1) // PER_PAGE),
        })

    @router.get("/batches/{batch_id}")
    def batch_page(request: Request, batch_id: str, viewer: Viewer | None = Depends(viewer_of)):
        return templates.TemplateResponse(request, "batch.html", {"b": platform.batches.get(batch_id, viewer)})

    return router
