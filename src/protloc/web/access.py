"""Who sees what on the platform: the ``Viewer`` of a request, ``visible``/``owner_of``, and
``NotFound`` (an id the viewer may not see is answered as one that does not exist). Its own module
so that the service and the batch uploads share it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass

from protloc.web.errors import UploadError


class NotFound(UploadError):
    def __init__(self, reason: str) -> None:
        super().__init__(404, reason)


@dataclass(frozen=True)
class Viewer:
    """Who is asking: a user sees their own submissions and batches, an admin everyone's.

    No viewer at all (``None``) is a server without tokens: one user, who sees everything.
    """

    user_id: int | None
    name: str
    admin: bool = False

    def sees(self, owner_id: int | None) -> bool:
        return self.admin or (owner_id is not None and owner_id == self.user_id)


def visible(owner_id: int | None, viewer: Viewer | None) -> bool:
    return viewer is None or viewer.sees(owner_id)


def owner_of(viewer: Viewer | None) -> int | None:
    return viewer.user_id if viewer is not None else None
