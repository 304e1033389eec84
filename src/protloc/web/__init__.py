"""The protloc platform: a web application and HTTP API where HTI images are uploaded and annotated.

``protloc.web.app.create_app(WebSettings(...))`` builds the FastAPI application; ``protloc serve``
runs it under uvicorn. See ``app`` (routes, pages), ``db`` (database), ``storage`` (uploads) and
``worker`` (batched prediction).
"""
