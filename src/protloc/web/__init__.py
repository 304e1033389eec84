"""The protloc platform: a web application and HTTP API where HTI images are uploaded and annotated.

``protloc.web.app.create_app(WebSettings(...))`` builds the FastAPI application; ``protloc serve``
runs it under uvicorn. See ``service`` (the logic, free of FastAPI), ``batches`` (zip uploads),
``auth`` (tokens), ``routers`` (API and pages), ``db`` (database), ``storage`` (uploads),
``worker`` (batched prediction), ``cells`` (a submission's cells) and ``exports`` (CSV, batch zip).
"""
