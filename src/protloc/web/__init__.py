"""The protloc platform: a web application and HTTP API where HTI images are uploaded and annotated.

``protloc.web.http.app.create_app(WebSettings(...))`` builds the FastAPI application; ``protloc
serve`` runs it under uvicorn (``http.server``), ``protloc worker`` runs ``queue.worker`` alone. Its
parts, lowest first (each imports only the ones before it, ``tools/import_graph.py`` checks it):

- shared by every part, here: ``errors`` (``UploadError``), ``access`` (who sees what),
  ``settings`` (what a platform is started with, its models), ``memory``;
- ``storage``: the database, the file store, stored samples read back;
- ``pictures``: a submission's pictures and cells, drawn while the server is quiet;
- ``queue``: jobs, the prediction worker and its lanes, long polls;
- ``uploads``: receiving, checking and decoding uploads, zip archives, batches;
- ``http``: the application, routes, pages, the logic they call (``service``), tokens, exports.
"""
