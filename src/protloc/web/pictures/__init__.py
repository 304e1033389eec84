"""What the platform draws: a submission's pictures (``renders``: views, maps, the cells' overlay,
cached), the thread that draws them while the server is quiet (``idle``) and a submission's cells
(``cells``: computed by the worker through ``CellsStage``, served by the API and drawn over the
composite; here, below the queue, because the renderer draws them and the worker uses both)."""
