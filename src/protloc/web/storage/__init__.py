"""Where the platform keeps things: the database (``db``: users, tokens, submissions, results, cells,
models, batch jobs), the file store (``store``: uploads under their sha256, pictures, label images)
and a stored submission read back as the canonical sample (``samples``). The lowest part: it imports
no other part of the platform."""
