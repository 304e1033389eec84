"""The prediction worker's lanes: threads that take jobs side by side, and how they share the cores.

A sample's work is not all in the network: its segmentation, cell features, label image and
bookkeeping run on one core, so on a machine of two cores one lane's forward pass runs while
another lane does the rest of its sample (issue 15's 1024² upload throughput). How the cores are
shared:

* torch counts its threads per calling thread: a lone sample gets every core for its forward pass
  (its answer comes soonest); while other lanes work or samples wait, each lane gets its share
  (two forward passes of two threads each on two cores lose more waiting for each other than they
  gain);
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


class Lanes:
    """``count`` threads running ``run(lane)``, and the submission ids each one holds."""

    def __init__(self, count: int = DEFAULT_LANES) -> None:
        if count < 1:
            raise ValueError(f"a worker needs at least one lane, got {count}")
        self.count = count
        self._held: dict[int, list[str]] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._blas_limit = None
        self._torch_threads = torch.get_num_threads()

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self, run: Callable[[int], None], name: str) -> None:
        self._torch_threads = torch.get_num_threads()
        if self.count > 1 and self._blas_limit is None:
            from threadpoolctl import threadpool_limits

            self._blas_limit = threadpool_limits(limits=1, user_api="blas")
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
        if self._blas_limit is not None:
            self._blas_limit.restore_original_limits()
            self._blas_limit = None

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
    def take_at_most(self, max_samples: int, one_pass: bool, waiting: int | None) -> int:
        """How many submissions a lane takes at once. One lane: up to ``max_samples``. Several: one
        when every model runs one pass per sample (nothing to batch), else a fair share of the
        ``waiting`` ones (None: unknown, then ``max_samples``)."""
        if self.count == 1:
            return max_samples
        if one_pass:
            return 1
        waiting = max_samples if waiting is None else waiting
        return max(1, min(max_samples, -(-waiting // self.count)))

    def share_cores(self, lane: int, waiting: bool) -> None:
        """This lane's torch threads for its next sample: every core when it is alone (no other lane
        holds a submission and none waits), else its share."""
        if self.count == 1:
            return
        with self._lock:
            others = any(ids for other, ids in self._held.items() if other != lane)
        threads = max(1, self._torch_threads // self.count) if others or waiting else self._torch_threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
