"""Shared helpers of the web tests: a tiny model, synthetic samples, a real uvicorn server on loopback."""

from __future__ import annotations

import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import tifffile

COLOURS = {"nucleus": "blue", "microtubules": "red", "er": "yellow", "protein": "green"}
KB = 1024


def make_model_file(path: Path, seed: int = 0, crop_size: int = 64) -> Path:
    import torch

    import protloc.model_file
    import protloc.labels
    import protloc.models

    torch.manual_seed(seed)
    protloc.model_file.save_model_file(
        path, protloc.models.create_model("gapnet-pl"), model_name="gapnet-pl",
        classes=list(protloc.labels.HPA13.classes), label_set="hpa13", crop_size=crop_size,
    )
    return path


def cell_like_sample(height: int = 112, width: int = 128, seed: int = 0) -> np.ndarray:
    """uint16 [4, H, W]: round nuclei, a fibrous microtubule ring, ER haze and a protein pattern."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    nucleus = np.zeros((height, width), np.float32)
    tubules = np.zeros_like(nucleus)
    er = np.zeros_like(nucleus)
    protein = np.zeros_like(nucleus)
    for _ in range(3):
        cy, cx = rng.uniform(20, height - 20), rng.uniform(20, width - 20)
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        nucleus += np.exp(-r2 / (2 * 9.0**2))
        ring = np.exp(-((np.sqrt(r2) - 18) ** 2) / (2 * 4.0**2))
        tubules += ring * (0.6 + 0.4 * np.sin(np.arctan2(yy - cy, xx - cx) * 9) ** 2)
        er += np.exp(-r2 / (2 * 16.0**2)) - 0.6 * np.exp(-r2 / (2 * 9.0**2))
        protein += np.exp(-r2 / (2 * 6.0**2)) * (1 + 0.5 * rng.random((height, width)))
    planes = np.stack([nucleus, tubules, np.clip(er, 0, None), protein])
    planes = planes / planes.max(axis=(1, 2), keepdims=True)
    noisy = planes * 40000 + rng.normal(800, 150, planes.shape)
    return np.clip(noisy, 0, 65535).astype(np.uint16)


def write_channel_files(folder: Path, sample_id: str, image: np.ndarray) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, channel in enumerate(COLOURS):
        path = folder / f"{sample_id}_{COLOURS[channel]}.tif"
        tifffile.imwrite(path, image[index])
        paths.append(path)
    return paths


class LiveServer:
    """``create_app(settings)`` under a real uvicorn server on 127.0.0.1 and a free port, in a thread."""

    def __init__(self, settings) -> None:
        import uvicorn

        from protloc.web.http.app import create_app
        from protloc.web.http.server import server_config

        self.app = create_app(settings)
        config = server_config(self.app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        wait_started(self.server, self.thread)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    @property
    def platform(self):
        return self.app.state.platform

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.platform.sessions.kw["bind"].dispose()


def wait_started(server, thread: threading.Thread, timeout: float = 30.0) -> None:
    """Return once a uvicorn server running in ``thread`` listens: the suite's one start-up wait."""
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.02)


def wait_healthy(url: str, process, why=lambda: "", timeout: float = 120.0) -> None:
    """Until the ``protloc serve`` subprocess at ``url`` answers ``/health``; fails with ``why()`` (its
    log, say) when the process ends or ``timeout`` passes first."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert process.poll() is None, f"protloc serve ended: {why()}"
        assert time.monotonic() < deadline, f"protloc serve did not answer in {timeout:.0f} s: {why()}"
        time.sleep(0.2)


def wait_batch(client, batch_id: str, until=lambda batch: batch["status"] in ("finished", "failed"),
               timeout: float = 60.0, interval: float = 0.05) -> dict:
    """Poll a zip batch until ``until(batch)`` holds and return it; past ``timeout`` the test fails with
    the batch's last state (the suite's one batch-polling loop)."""
    deadline = time.monotonic() + timeout
    while not until(batch := client.get(f"/api/v1/batches/{batch_id}").json()):
        assert time.monotonic() < deadline, batch
        time.sleep(interval)
    return batch


def wait_done(client, submission_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        data = client.get(f"/api/v1/predictions/{submission_id}").json()
        if data["status"] in ("done", "failed") or time.monotonic() > deadline:
            return data
        time.sleep(0.05)


def upload_channels(client, paths: list[Path], **fields):
    files = [("files", (p.name, p.read_bytes(), "image/tiff")) for p in paths]
    return client.post("/api/v1/predictions", files=files, data=fields)


def add_submissions(sessions, count: int, model_key: str = "tiny") -> list[str]:
    """``count`` queued submission rows of a 48² multichannel sample (the worker tests' stand-ins)."""
    from protloc.web.storage import db

    ids = []
    with sessions.begin() as session:
        for _ in range(count):
            row = db.Submission(model_key=model_key, input_kind="multichannel", files=[], filenames="x.tif",
                                height=48, width=48)
            session.add(row)
            session.flush()
            ids.append(row.id)
    return ids


def expected_probs(predictor, image: np.ndarray) -> np.ndarray:
    """These servers compute cells (GapNet-PL): the probabilities come from the cells' whole-image pass."""
    return predictor.predict_proba(image.astype(np.float32), whole_image=True)


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path
