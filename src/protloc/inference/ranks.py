"""The ranks of one ``torchrun ... protloc predict`` meeting at the end, without waiting forever.

Each rank writes its rows to ``OUT.rankN`` (the output folder is shared, as rank 0 reads every part).
The ranks meet once at the start (a gloo process group, bounded by ``timeout``) to agree on a run
token, then only through small files in ``OUT.ranks/``: ``N.alive`` (touched every second by a thread
while the rank's process lives) and ``N.done`` (written when its share is finished; the folder goes
away after the merge).
Rank 0 merges when every part is done and raises a one-line error when a rank stops beating for
``timeout`` seconds: a dead rank is reported in bounded time, and a slow one (a large image, a busy
machine) is waited for as long as it lives. The other ranks do not wait for the merge.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

from protloc.errors import ProtlocError

DEFAULT_TIMEOUT = 120.0  # seconds without a sign of life before a rank counts as dead
_BEAT_SECONDS = 1.0


def rank_timeout() -> float:
    """``PROTLOC_RANK_TIMEOUT`` (seconds), else ``DEFAULT_TIMEOUT``."""
    text = os.environ.get("PROTLOC_RANK_TIMEOUT")
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ProtlocError(f"PROTLOC_RANK_TIMEOUT must be a positive number of seconds, got {text!r}")
    return value


def _agree_on_token(timeout: float) -> str:
    """One token for this run, from rank 0 (stale markers of an earlier run never count)."""
    import torch.distributed as dist

    initialised_here = not dist.is_initialized()
    if initialised_here:
        try:
            dist.init_process_group("gloo", timeout=timedelta(seconds=timeout))
        except Exception as exc:  # rendezvous timed out or failed: say so in one line
            raise ProtlocError(f"the torchrun ranks could not meet: {str(exc).strip().splitlines()[0]}") from None
    try:
        token = [uuid.uuid4().hex if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(token, src=0)
        return str(token[0])
    finally:
        if initialised_here:
            dist.destroy_process_group()


class RankSync:
    """Heartbeat and done marker of one rank; ``wait_for_all`` on rank 0."""

    def __init__(self, journal: Path, rank: int, world: int, timeout: float | None = None) -> None:
        self.rank, self.world = rank, world
        self.timeout = rank_timeout() if timeout is None else timeout
        self.base = journal.with_name(journal.name.rsplit(".rank", 1)[0])
        self.folder = self.base.with_name(f"{self.base.name}.ranks")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.token = _agree_on_token(self.timeout)
        self._stop = threading.Event()
        self.alive_file(rank).write_text(self.token)
        self._thread = threading.Thread(target=self._beat, name="protloc-rank-heartbeat", daemon=True)
        self._thread.start()

    def part(self, rank: int) -> Path:
        return self.base.with_name(f"{self.base.name}.rank{rank}")

    def alive_file(self, rank: int) -> Path:
        return self.folder / f"{rank}.alive"

    def done_file(self, rank: int) -> Path:
        return self.folder / f"{rank}.done"

    def _beat(self) -> None:
        path = self.alive_file(self.rank)
        while not self._stop.wait(_BEAT_SECONDS):
            try:
                os.utime(path)
            except OSError:
                pass

    def finish(self) -> None:
        """Mark this rank's share done and stop its heartbeat."""
        self.done_file(self.rank).write_text(self.token)
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _is(self, path: Path) -> bool:
        try:
            return path.read_text() == self.token
        except OSError:
            return False

    def wait_for_all(self) -> list[Path]:
        """Rank 0: the parts of every rank once all are done; ProtlocError when one stops beating."""
        started = time.time()
        while True:
            waiting = [r for r in range(self.world) if not self._is(self.done_file(r))]
            if not waiting:
                return [self.part(r) for r in range(self.world)]
            now = time.time()
            for r in waiting:
                alive = self.alive_file(r)
                last = alive.stat().st_mtime if self._is(alive) else started
                if now - last > self.timeout:
                    raise ProtlocError(
                        f"rank {r} stopped ({now - last:.0f} s without a sign of life, PROTLOC_RANK_TIMEOUT="
                        f"{self.timeout:g}); finished rows are kept in {self.part(r).name}: rerun the same "
                        "command to resume"
                    )
            time.sleep(0.2)

    def cleanup(self) -> None:
        """Rank 0 after the merge: every rank is done, the markers are no longer needed."""
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)
