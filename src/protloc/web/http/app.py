"""The protloc platform: upload HTI images, get them annotated (FastAPI).

``create_app(settings)`` wires the parts: ``service.Platform`` (the logic, no HTTP), ``auth``
(tokens), ``routers.api`` (the HTTP API under ``/api/v1``, OpenAPI at ``/docs``) and
``routers.pages`` (upload, result, history, batch progress), and starts and stops the prediction
worker with the application. ``protloc serve`` runs it under uvicorn (``server``).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from protloc.version import __version__
from protloc.errors import ProtlocError
from protloc.web.http.auth import TokenAuth
from protloc.web.http.methods import AllowedMethods
from protloc.web.pictures.idle import ActivityMiddleware
from protloc.web.http.routers.api import api_router
from protloc.web.http.routers.pages import pages_router
from protloc.web.http.service import Platform
from protloc.web.settings import WebSettings
from protloc.web.errors import UploadError

HERE = Path(__file__).parent


def mount_offline_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the swagger-ui-bundle package's files, not from a CDN."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js", swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )


def create_app(settings: WebSettings | None = None) -> FastAPI:
    settings = settings or WebSettings()
    platform = Platform(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.run_worker:
            platform.worker.start()
        platform.batches.resume()
        yield
        await run_in_threadpool(platform.worker.stop)

    app = FastAPI(
        title="protloc",
        version=__version__,
        description="Upload four-channel fluorescence microscopy (HTI) images and get the protein's "
        "subcellular localisation: class probabilities, predicted locations and localisation maps.",
        lifespan=lifespan,
        docs_url=None,  # served below from local files: /docs works without internet
        redoc_url=None,
    )
    app.state.platform = platform
    app.add_middleware(AllowedMethods)
    app.add_middleware(TokenAuth, settings=settings, sessions=platform.sessions, required=platform.auth_required)
    app.add_middleware(ActivityMiddleware, activity=platform.activity)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
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

    mount_offline_docs(app)
    app.include_router(api_router(platform))
    app.include_router(pages_router(platform))
    return app
