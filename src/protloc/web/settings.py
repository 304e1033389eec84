"""What a platform is started with: ``WebSettings`` (``protloc serve`` fills it from the command line)
and the models it loads (``load_predictors``, keyed by ``model_key_for``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from protloc.data.limits import DEFAULT_MAX_PIXELS
from protloc.errors import ProtlocError

MB = 1 << 20


@dataclass
class WebSettings:
    """Everything ``create_app`` needs; ``protloc serve`` fills it from the command line."""

    models: list[str] = field(default_factory=lambda: ["pretrained"])  # specs for protloc.load_model
    predictors: dict | None = None  # already loaded predictors by key (skips ``models``)
    data_dir: Path = Path("protloc-data")
    store: object | None = None  # an UploadStore (protloc.web.storage.store); default: the directory store in data_dir
    database_url: str | None = None  # default: sqlite file in data_dir
    auth_tokens: list[str] = field(default_factory=list)  # accepted bearer tokens besides the tokens table
    require_auth: bool = False  # tokens table only (no --auth-token given)
    max_upload_bytes: int = 512 * MB  # per sample (one request)
    max_batch_bytes: int = 8192 * MB  # a zip upload, and its total uncompressed size
    max_zip_ratio: float = 100.0  # uncompressed / compressed size of a batch zip (zip bombs stop here)
    max_pixels: int = DEFAULT_MAX_PIXELS  # per channel plane: decompression bombs stop here
    run_worker: bool = True  # False: accept and queue only (`protloc worker` processes, or a later server, run them)
    eager_render: bool = False  # True: the old path, full-size pictures drawn before a submission is done
    lease_seconds: float = 60.0  # PostgreSQL: a claimed submission's lease; a dead worker's job waits this long
    max_batch_patches: int = 64
    linger_seconds: float = 0.02
    device: str = "cpu"
    expert_study: Path | None = None  # an expert-study folder: its annotation pages are mounted at /expert
    expert_db_url: str | None = None  # its answer database (default: the study's own)
    cells: bool = True  # this server's worker segments each sample and predicts its cells (protloc.web.pictures.cells)
    lanes: int = 2  # worker threads taking jobs side by side (protloc.web.queue.worker)
    precision: str = "auto"  # of the loaded models' passes (protloc.inference.precision); pages and API say which ran

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_tokens) or self.require_auth

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(Path(self.data_dir) / 'protloc.db').resolve()}"


def model_key_for(spec: str, taken: set[str]) -> str:
    base = "pretrained" if spec == "pretrained" else (Path(spec).stem if Path(spec).suffix else Path(spec).name)
    base = "".join(c if c.isalnum() or c in "-_." else "-" for c in base) or "model"
    key, n = base, 2
    while key in taken:
        key, n = f"{base}-{n}", n + 1
    return key


def load_predictors(specs: list[str], device: str = "cpu", precision: str = "auto") -> dict:
    """The platform's models by key, at ``precision`` (auto: the fastest native one, said once)."""
    import math

    from protloc.inference.predictor import load_model

    if not specs:
        raise ProtlocError("give at least one --model")
    predictors: dict = {}
    for spec in specs:
        key = model_key_for(str(spec), set(predictors))
        predictor = load_model(spec, device=device, precision=precision)
        predictor.fields = math.inf  # a server: compiling GapNet-PL's SELU always repays
        predictor.web_source = str(spec)
        predictors[key] = predictor
    return predictors
