"""Resuming an interrupted ``protloc predict``: whatever byte a crash cut the output at, every image
ends up predicted exactly once (issue 11, defect 1).

Hundreds of resumed runs: the model is loaded once and its forward replaced by a cheap deterministic
function of the image, so each run costs milliseconds; the bookkeeping under test is the real one.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from protloc.model_file import save_model_file
from protloc.errors import ProtlocError
from protloc.inference import predictor as predictor_module
from protloc.inference.batch import run_batch_prediction
from protloc.labels import HPA13
from protloc.models import create_model


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    root = tmp_path_factory.mktemp("resume")
    torch.manual_seed(0)
    model = root / "tiny.pt"
    save_model_file(model, create_model("gapnet-pl"), model_name="gapnet-pl", classes=HPA13.classes,
                    label_set="hpa13", crop_size=32, thresholds=[0.5] * 13)
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    ids = ["s1", "s2", "s3"]
    for sample_id in ids:
        np.savez(folder / f"{sample_id}.npz", sample=rng.integers(0, 255, (36, 36, 4), dtype=np.uint8))
    return model, folder, ids


@pytest.fixture
def cheap_model(monkeypatch, inputs):
    predictor = predictor_module.load_model(inputs[0])

    def probabilities(image, **_options):
        means = image.reshape(image.shape[0], -1).mean(axis=1) / 255.0
        return np.resize(means, len(predictor.classes)).astype(np.float32)

    predictor.predict_proba = probabilities
    monkeypatch.setattr(predictor_module, "load_model", lambda *_args, **_kwargs: predictor)


def ids_in(path: Path) -> list[str]:
    text = path.read_text()
    if path.suffix == ".csv":
        return [row[0] for row in list(csv.reader(io.StringIO(text)))[1:]]
    return [json.loads(line)["id"] for line in text.splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_cut_at_any_byte_of_the_last_row_loses_and_repeats_nothing(inputs, cheap_model, tmp_path, suffix):
    model, folder, ids = inputs
    out = tmp_path / f"pred{suffix}"
    options = dict(workers=0, progress=False)
    assert run_batch_prediction([str(folder)], str(model), out, **options).predicted == 3
    complete = out.read_bytes()
    assert sorted(ids_in(out)) == ids
    last_row = complete.rindex(b"\n", 0, len(complete) - 1) + 1
    cuts = range(last_row, len(complete))  # from the whole row gone to only its newline missing
    assert len(cuts) > 100
    for cut in cuts:
        out.write_bytes(complete[:cut])
        result = run_batch_prediction([str(folder)], str(model), out, **options)
        assert (result.predicted, result.already_done) == (1, 2), f"cut at byte {cut}"
        assert sorted(ids_in(out)) == ids, f"cut at byte {cut}"
        assert out.read_bytes() == complete, f"cut at byte {cut}"


def test_a_cut_header_or_first_row_starts_over(inputs, tmp_path):
    """With the real network."""
    model, folder, ids = inputs
    out = tmp_path / "pred.csv"
    run_batch_prediction([str(folder)], str(model), out, workers=0, progress=False)
    complete = out.read_bytes()
    header_end = complete.index(b"\n") + 1
    first_row_end = complete.index(b"\n", header_end) + 1
    for cut in (1, header_end - 1, header_end, header_end + 5, first_row_end - 1):
        out.write_bytes(complete[:cut])
        result = run_batch_prediction([str(folder)], str(model), out, workers=0, progress=False)
        assert result.predicted + result.already_done == 3
        assert sorted(ids_in(out)) == ids, f"cut at byte {cut}"


@pytest.mark.parametrize("name", ["pred.csv", "pred.jsonl", "pred.parquet"])
def test_an_output_that_is_not_ours_is_refused_in_one_line_and_left_alone(inputs, cheap_model, tmp_path, name):
    """Found by tools/attack.py: a --out file holding bytes that are not UTF-8 (or, for Parquet, its
    journal) gave a UnicodeDecodeError traceback; the refusal must come before any byte is changed."""
    model, folder, _ids = inputs
    out = tmp_path / name
    foreign = out.with_name(out.name + ".journal.jsonl") if name.endswith(".parquet") else out
    content = b"id,x\n\xff\xfe not text\npartial"
    foreign.write_bytes(content)
    with pytest.raises(ProtlocError, match="not a protloc prediction file"):
        run_batch_prediction([str(folder)], str(model), out, workers=0, progress=False)
    assert foreign.read_bytes() == content


def test_a_cut_inside_a_multibyte_character_of_the_last_row_resumes(inputs, cheap_model, tmp_path):
    model, folder, ids = inputs
    out = tmp_path / "pred.jsonl"
    run_batch_prediction([str(folder)], str(model), out, workers=0, progress=False)
    complete = out.read_bytes()
    out.write_bytes(complete + '{"id": "caf\u00e9'.encode()[:-1])  # a crash between the two bytes of é
    result = run_batch_prediction([str(folder)], str(model), out, workers=0, progress=False)
    assert (result.predicted, result.already_done) == (0, 3) and out.read_bytes() == complete


@pytest.mark.parametrize("where", ["folder", "under a file"])
def test_an_out_path_that_cannot_be_a_file_is_refused_in_one_line(inputs, cheap_model, tmp_path, where):
    """Found by tools/attack.py: IsADirectoryError / FileExistsError tracebacks."""
    model, folder, _ids = inputs
    if where == "folder":
        out = tmp_path / "pred.csv"
        out.mkdir()
    else:
        (tmp_path / "a-file").write_text("x")
        out = tmp_path / "a-file" / "pred.csv"
    with pytest.raises(ProtlocError, match="folder"):
        run_batch_prediction([str(folder)], str(model), out, workers=0, progress=False)


@pytest.mark.parametrize("name", ["pred.csv", "pred.parquet"])
def test_a_second_run_on_the_same_output_is_refused_while_the_first_writes(inputs, cheap_model, tmp_path, name):
    """Two runs appending to one file each predicted every image: every row twice."""
    from protloc.inference.batch import RowWriter

    model, folder, ids = inputs
    out = tmp_path / name
    journal = out.with_name(out.name + (".journal.csv" if name.endswith(".csv") else ".journal.jsonl"))
    first = RowWriter(journal, "csv" if name.endswith(".csv") else "jsonl", ["id"])
    try:
        with pytest.raises(ProtlocError, match="another protloc predict is writing"):
            run_batch_prediction([str(folder)], str(model), out, workers=0, progress=False)
    finally:
        first.close()
    journal.unlink(missing_ok=True)  # (an empty one is removed on close) the stand-in first run's header is not the model's
    run_batch_prediction([str(folder)], str(model), out, workers=0, progress=False)  # the lock went with it
    if name.endswith(".csv"):
        assert sorted(ids_in(out)) == ids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux: the kernel kills the workers with their parent")
def test_decoding_workers_die_with_a_main_process_killed_with_sigkill(inputs, tmp_path):
    """Found by tools/attack.py: after kill -9 of `protloc predict`, its two decoding workers lived on,
    ~170 MB each, blocked on their queue for good."""
    import os
    import signal
    import subprocess
    import sys
    import time

    model, _folder, _ids = inputs
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(40):
        np.savez(folder / f"m{i}.npz", sample=rng.integers(0, 255, (160, 160, 4), dtype=np.uint8))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "protloc", "predict", "--model", str(model), "--workers", "2",
                             "--out", str(tmp_path / "p.csv"), str(folder)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children_file = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    workers: list[int] = []
    deadline = time.monotonic() + 120
    while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
        workers = [int(pid) for pid in children_file.read_text().split()] if children_file.exists() else []
        time.sleep(0.02)
    assert len(workers) == 2, "the run ended before its workers could be seen"
    out = tmp_path / "p.csv"  # kill once images flow: workers blocked feeding their queue are the ones that stayed
    while proc.poll() is None and (not out.exists() or out.read_text().count("\n") < 3) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    def living(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 15
    while any(living(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [pid for pid in workers if living(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive
