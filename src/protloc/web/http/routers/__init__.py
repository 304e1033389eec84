"""The HTTP side of the platform: ``api`` (the JSON API under /api/v1) and ``pages`` (HTML), thin over ``Platform``."""
