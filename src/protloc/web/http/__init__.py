"""The platform over HTTP: the FastAPI application (``app``), its routes (``routers``: API and pages,
with ``templates`` and ``static``), the logic the routes call (``service.Platform``, FastAPI-free),
tokens (``auth``), ``OPTIONS``/``405`` answers (``methods``), the submission list (``listing``), the
downloads (``exports``) and uvicorn as the platform runs it (``server``, shared with the expert
study). Nothing here imports FastAPI at package level: ``service`` stays usable without it."""
