"""Memory the platform's long-running threads give back: one helper shared by the prediction worker
and the picture drawer (its own module, so neither imports the other)."""

from __future__ import annotations

import ctypes


def release_memory() -> None:
    """Hand freed heap back to the system (glibc keeps it otherwise, and the server's size creeps up)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
