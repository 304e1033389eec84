"""The prediction worker's lanes: threads that take jobs side by side, and how they share the cores.

A sample's work is not all in the network: its segmentation, cell features, label image and
bookkeeping run on one core, so on a machine of two cores one lane's forward pass runs while
another lane does the rest of its sample (issue 15's 1024² upload throughput). How the cores are
shared:

* torch counts its threads per calling thread: a lone sample gets every core for its forward pass
  (its answer comes soonest) but the ones its segmentation runs on meanwhile (cells on: on two
  cores, one torch thread beside one segmentation thread; a second torch thread only waits for a
  core, spinning: 5x the pass's CPU on a busy machine, docs/platform.md); while other lanes work or
  samples wait, each lane gets its share (two forward passes of two threads each on two cores lose
  more waiting for each other than they gain);
* numpy's and SciPy's BLAS (OpenBLAS) would start a thread per core for a cell's small products and
  keep them spinning afterwards: with the lanes on every core that cost 0.04 core-seconds per 1024²
  upload (12% of it), so with several lanes BLAS runs one thread, process-wide, until they stop;
* a lane takes one submission when another lane could start the next (no lingering to batch), and a
  fair share of a backlog when submissions wait (their patches then share forward passes).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import torch

DEFAULT_LANES = 2
# The BLAS limit is process-wide: held while any worker with several lanes runs (several workers can
# live in one process, e.g. in tests), restored when the last one stops.
_blas_lock = threading.Lock()
_blas_users = 0
_blas_limit = None


def _hold_blas_at_one_thread() -> None:
    global _blas_users, _blas_limit
    with _blas_lock:
        if _blas_users == 0:
            # threadpoolctl limits the libraries loaded now: SciPy's own OpenBLAS (the segmentation's)
            # is loaded with scipy.linalg, so that comes first.
            import scipy.linalg  # noqa: F401
            from threadpoolctl import threadpool_limits

            _blas_limit = threadpool_limits(limits=1, user_api="blas")
        _blas_users += 1


def _release_blas() -> None:
    global _blas_users, _blas_limit
    with _blas_lock:
        _blas_users -= 1
        if _blas_users == 0 and _blas_limit is not None:
            _blas_limit.restore_original_limits()
            _blas_limit = None


class Lanes:
    """``count`` threads running ``run(lane)``, and the submission ids each one holds."""

    def __init__(self, count: int = DEFAULT_LANES) -> None:
        if count < 1:
            raise ValueError(f"a worker needs at least one lane, got {count}")
        self.count = count
        self._held: dict[int, list[str]] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._holds_blas = False
        self._torch_threads = torch.get_num_threads()

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self, run: Callable[[int], None], name: str) -> None:
        self._torch_threads = torch.get_num_threads()
        if self.count > 1 and not self._holds_blas:
            _hold_blas_at_one_thread()
            self._holds_blas = True
        self._threads = [threading.Thread(target=run, args=(lane,), name=f"{name}-{lane}", daemon=True)
                         for lane in range(self.count)]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float) -> None:
        """Waits up to ``timeout`` seconds for the lanes (their loop must have been told to end)."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        if self._holds_blas:
            _release_blas()
            self._holds_blas = False

    @property
    def alive(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def join_any(self, seconds: float) -> None:
        if self._threads:
            self._threads[0].join(seconds)

    # -- what they hold -----------------------------------------------------------------------------
    def hold(self, lane: int, ids: list[str]) -> None:
        with self._lock:
            self._held[lane] = list(ids)

    def release(self, lane: int) -> None:
        with self._lock:
            self._held.pop(lane, None)

    def held(self) -> list[str]:
        with self._lock:
            return [i for ids in self._held.values() for i in ids]

    def busy(self) -> bool:
        with self._lock:
            return any(self._held.values())

    # -- sharing the machine ------------------------------------------------------------------------
    def take_at_most(self, max_samples: int, one_pass: bool, waiting: int) -> int:
        """How many submissions a lane takes at once. One lane: up to ``max_samples``. Several: one
        when every model runs one pass per sample (nothing to batch), else a fair share of the
        ``waiting`` ones."""
        if self.count == 1:
            return max_samples
        if one_pass:
            return 1
        return max(1, min(max_samples, -(-waiting // self.count)))

    def share_cores(self, lane: int, waiting: bool, beside: int = 0) -> None:
        """This lane's torch threads for its next sample: every core when it is alone (no other lane
        holds a submission and none waits), else its share; ``beside``: threads of this sample that
        run beside its forward pass (the cells' segmentation), whose cores the pass leaves to them."""
        if self.count == 1:
            return
        with self._lock:
            others = any(ids for other, ids in self._held.items() if other != lane)
        alone = max(1, self._torch_threads - beside)
        threads = max(1, min(alone, self._torch_threads // self.count)) if others or waiting else alone
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
