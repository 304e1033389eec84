"""The platform's one error for bad input from a client: ``UploadError(status, reason)``, which the
application answers as HTTP ``status`` with ``{"detail": reason}``. Its own module because every part
raises it (uploads, the cells' sorting, who-sees-what's ``NotFound``), and none should import another
part only for it."""

from __future__ import annotations


class UploadError(Exception):
    """Bad input from a client: an HTTP status and one line saying why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

