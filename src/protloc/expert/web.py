"""The annotation pages: experts label the study's samples in the browser.

``create_expert_app(study, db_url)`` returns a FastAPI application that serves on its own
(``protloc expert serve``) or mounted inside the web platform (``app.mount("/expert", ...)``): the
page only uses relative URLs. An expert signs in with a name (kept in a cookie), gets the samples in
an order of their own (random, seeded by the name, so the same at every visit), sees the four views
(zoom with the wheel, pan by dragging), answers with a button or a key, and can go back and change
answers. Each answer is committed to the database as it is given; on return the page resumes at the
first unanswered sample. Sample ids and true labels are never sent to the page: samples are
addressed by their position in the expert's order and images by an opaque token.
"""

from __future__ import annotations

import hashlib
import html
import logging
from pathlib import Path
from urllib.parse import quote, unquote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from protloc.errors import ProtlocError
from protloc.expert.db import AnswerStore
from protloc.expert.render import VIEW_TITLES, VIEWS, cells_missing, render_cells, render_views
from protloc.expert.study import Study, load_study

log = logging.getLogger("protloc.expert")
STATIC = Path(__file__).parent / "static"
COOKIE = "protloc_expert"
# Keys for the 13 (or up to 36) answer buttons, in class order.
SHORTCUT_KEYS = "1234567890qwertyuiopasdfghjklzxcvbnm"
# Shows or hides the cell outlines, unless a class has it (a study of 32 classes or more): then the button only.
CELLS_KEY = "c"


class SignIn(BaseModel):
    name: str


class AnswerIn(BaseModel):
    label: str


def _token(study: Study, sample_id: str) -> str:
    return hashlib.sha256(f"{study.study_id}\0{sample_id}".encode()).hexdigest()[:16]


def create_expert_app(study: Study | str | Path, db_url: str | None = None) -> FastAPI:
    """The annotation application for one study; answers go to ``db_url`` (default STUDY/answers.db)."""
    if not isinstance(study, Study):
        study = load_study(study)
    store = AnswerStore(db_url or study.default_db_url, study.study_id)
    token_to_id = {_token(study, sample_id): sample_id for sample_id in study.sample_ids}
    shortcuts = {cls: SHORTCUT_KEYS[i] for i, cls in enumerate(study.classes) if i < len(SHORTCUT_KEYS)}
    cells_key = CELLS_KEY if CELLS_KEY not in shortcuts.values() else None

    app = FastAPI(title="protloc expert study", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.study = study
    app.state.store = store
    app.mount("/static", StaticFiles(directory=STATIC), name="expert-static")

    def expert_of(request: Request) -> str:
        raw = request.cookies.get(COOKIE)
        if not raw:
            raise HTTPException(401, "not signed in")
        try:
            return AnswerStore.clean_name(unquote(raw))
        except ProtlocError:
            raise HTTPException(401, "not signed in") from None

    def session_state(name: str) -> dict:
        order = study.expert_order(name)
        answers = store.answers_of(name)
        answered = sum(1 for s in order if s in answers)
        first_open = next((i for i, s in enumerate(order) if s not in answers), None)
        return {
            "expert": name, "total": len(order), "answered": answered, "done": first_open is None,
            "resume": first_open if first_open is not None else len(order) - 1,
            "classes": [{"name": c, "key": shortcuts.get(c)} for c in study.classes],
            "cells_key": cells_key, "cells_missing": cells_missing(),
        }

    def sample_at(name: str, position: int) -> str:
        order = study.expert_order(name)
        if not 0 <= position < len(order):
            raise HTTPException(404, f"no sample at position {position} (0..{len(order) - 1})")
        return order[position]

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        text = (STATIC / "expert.html").read_text(encoding="utf-8")
        title = html.escape(study.extra.get("title") or f"Expert study {study.study_id}")
        return HTMLResponse(text.replace("{{TITLE}}", title), headers={"Cache-Control": "no-store"})

    @app.get("/api/health")
    def health() -> dict:
        return {"ok": True, "study": study.study_id, "samples": len(study.samples)}

    @app.post("/api/signin")
    def sign_in(body: SignIn, request: Request) -> JSONResponse:
        try:
            expert = store.sign_in(body.name)
        except ProtlocError as exc:
            raise HTTPException(422, str(exc)) from None
        response = JSONResponse(session_state(expert.name))
        response.set_cookie(COOKIE, quote(expert.name), path=(request.scope.get("root_path") or "") + "/",
                            httponly=True, samesite="lax", max_age=180 * 24 * 3600)
        return response

    @app.post("/api/signout")
    def sign_out(request: Request) -> JSONResponse:
        response = JSONResponse({"ok": True})
        response.delete_cookie(COOKIE, path=(request.scope.get("root_path") or "") + "/")
        return response

    @app.get("/api/session")
    def current(request: Request) -> dict:
        return session_state(expert_of(request))

    @app.get("/api/items/{position}")
    def item(position: int, request: Request) -> dict:
        name = expert_of(request)
        sample_id = sample_at(name, position)
        token = _token(study, sample_id)
        return {
            "position": position, "total": len(study.samples),
            "answer": store.answers_of(name).get(sample_id),
            "views": [{"name": v, "title": VIEW_TITLES[v], "url": f"api/views/{token}/{v}.png"} for v in VIEWS],
            "cells": f"api/cells/{token}.png",
        }

    @app.put("/api/answers/{position}")
    def answer(position: int, body: AnswerIn, request: Request) -> dict:
        name = expert_of(request)
        sample_id = sample_at(name, position)
        try:
            label = study.class_name(body.label)
        except ProtlocError as exc:
            raise HTTPException(422, str(exc)) from None
        store.set_answer(name, sample_id, label)
        return session_state(name) | {"position": position, "label": label}

    @app.get("/api/views/{token}/{view}.png")
    def view_image(token: str, view: str) -> FileResponse:
        sample_id = token_to_id.get(token)
        if sample_id is None or view not in VIEWS:
            raise HTTPException(404, "no such image")
        try:
            paths = render_views(study, sample_id)
        except (ProtlocError, OSError) as exc:
            # Gone, not a server fault: the data set moved or lost the file after the study was made.
            # The reason names files (and so sample ids, which the page must not learn): it goes to
            # the server's log, the page gets a blind one.
            log.warning("expert study %s: cannot render a view: %s", study.study_id, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise HTTPException(410, "the source image of this sample is missing or unreadable on the server "
                                     "(its data set moved or changed after the study was made; the server log names the file)") from None
        return FileResponse(paths[view], media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})

    @app.get("/api/cells/{token}.png")
    def cell_outlines(token: str) -> FileResponse:
        """The sample's cell outlines (white on transparent, the views' size): laid over the views on request."""
        sample_id = token_to_id.get(token)
        if sample_id is None:
            raise HTTPException(404, "no such image")
        missing = cells_missing()
        if missing:
            raise HTTPException(503, missing)
        try:
            path = render_cells(study, sample_id)
        except (ProtlocError, OSError) as exc:  # as for the views: the reason names files, the log gets it
            log.warning("expert study %s: cannot draw cell outlines: %s", study.study_id,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise HTTPException(410, "the cell outlines of this sample cannot be drawn on the server "
                                     "(the server log says why)") from None
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})

    return app


def serve(study: Study, db_url: str | None, host: str, port: int) -> None:
    # The platform's uvicorn set-up: stalled clients cut off, oversized headers a 431.
    from protloc.web.http.server import serve as serve_app

    app = create_expert_app(study, db_url)
    print(f"expert study {study.study_id}: {len(study.samples)} samples; answers in {app.state.store.url}")
    print(f"open http://{host}:{port}/ in a browser (Ctrl+C stops; answers are saved as they are given)")
    serve_app(app, host, port, log_level="warning")
