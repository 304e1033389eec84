"""Samples of several submissions through shared forward passes, and the worker's counters.

``batched_probabilities`` is the worker's network call: every waiting sample of one model cut into
its covering patches, the patches run together ``max_batch_patches`` at a time (the one ``Inferer``),
each sample's probability the mean of its own patches' sigmoids. ``WorkerStats`` counts what the
worker did (``max_samples_per_pass`` > 1 shows batching across requests); the platform's
admin-only worker endpoint reports it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class WorkerStats:
    """What the worker has done; ``max_samples_per_pass`` > 1 shows batching across requests."""

    forward_passes: int = 0
    patches: int = 0
    samples: int = 0
    failures: int = 0
    rendered: int = 0
    lost_leases: int = 0
    max_samples_per_pass: int = 0
    busy_seconds: float = 0.0
    started_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()
                if not k.startswith("_")}

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, **amounts) -> None:
        """Counts added from any lane (``max_samples_per_pass`` keeps the largest)."""
        with self._lock:
            for name, amount in amounts.items():
                if name == "max_samples_per_pass":
                    self.max_samples_per_pass = max(self.max_samples_per_pass, amount)
                else:
                    setattr(self, name, getattr(self, name) + amount)


def batched_probabilities(predictor, images: list[np.ndarray], max_batch_patches: int, stats: WorkerStats | None = None,
                          pixel_sizes: list[float | None] | None = None) -> list[np.ndarray]:
    """Probabilities of several samples, their covering patches sharing forward passes (the one
    ``Inferer``; fp32: GapNet-PL's fast path, equal to the plain forward's logits within 1e-6)."""

    def count(patches: int, samples: int) -> None:
        if stats is not None:
            stats.add(forward_passes=1, patches=patches, max_samples_per_pass=samples)

    inferer = predictor.inferer(batch_size=max(1, max_batch_patches), on_pass=count)  # the predictor's precision
    return inferer.predict_many(images, pixel_sizes)  # each image rescaled to the model's pixel size
