"""The prediction queue and its workers: where jobs come from (``jobs``: in memory, or claimed from
the database by ``protloc worker`` processes), the worker (``worker``) and its lanes (``lanes``), the
shared forward passes (``batching``) and the long polls that wait for a submission to finish
(``completion``)."""
