"""The worker gives freed heap back once it is idle, not after every submission (docs/platform.md,
"Where an upload's time goes": trimming after each one made the next fault its memory back in)."""

from __future__ import annotations

import pytest

from protloc.web.storage import db
from protloc.web.queue import worker as worker_module
from protloc.web.storage.store import BlobStore
from protloc.web.queue.worker import PredictionWorker

from tests.helpers.web import make_model_file


@pytest.mark.parametrize("idle_seconds, trims", [(0.0, 2), (3600.0, 0)])
def test_the_heap_is_trimmed_once_per_idle_spell(idle_seconds, trims, tmp_path, monkeypatch):
    import protloc

    predictor = protloc.load_model(make_model_file(tmp_path / "tiny.pt", crop_size=32))
    worker = PredictionWorker({"tiny": predictor}, db.open_database(f"sqlite:///{tmp_path / 'p.db'}"),
                              BlobStore(tmp_path / "store"), lanes=1)
    taken = iter([["a"], ["b"], [], [], ["c"], [], [], None])  # work, work, idle, idle, work, idle, idle, stop
    monkeypatch.setattr(worker.jobs, "take", lambda most, linger, wait: next(taken))
    monkeypatch.setattr(worker, "_process", lambda ids, lane=0: None)
    monkeypatch.setattr(worker_module, "TRIM_AFTER_IDLE_SECONDS", idle_seconds)
    released = []
    monkeypatch.setattr(worker_module, "release_memory", lambda: released.append(1))
    worker._run(0)
    assert len(released) == trims  # never after a submission; once per idle spell long enough
