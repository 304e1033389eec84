"""Prediction and cells over a Dask cluster (``--cluster``, issue 25): a real ``dask scheduler`` and two
real ``dask worker`` processes on 127.0.0.1; the merged outputs against the single-process path, a worker
killed with SIGKILL mid-run, a client killed and resumed, inputs the workers read (a plate, URLs, a path
one cannot see), and the batch-system job script (one real SLURM job: tests/distributed/test_slurm.py)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from protloc.cli import main
from protloc.errors import ProtlocError

pytest.importorskip("distributed", reason="the dask extra (pip install 'protloc[dask]') is not installed")
from tests.helpers.dask import (  # noqa: F401 - fixtures
    LoopbackCluster,
    _env,
    _free_port,
    assert_same_rows,
    cluster,
    data_dir,
    read_rows,
    single,
)

# --- the cluster spec, without a cluster -----------------------------------------------------------

def test_cluster_specs_and_their_errors():
    from protloc.distributed import parse_cluster

    assert parse_cluster("local:3").workers == 3
    assert parse_cluster("tcp://10.0.0.5:8786").address == "tcp://10.0.0.5:8786"
    spec = parse_cluster("slurm", ["cores=8", "memory=32GB", "job_extra=--gres=gpu:1", "job_extra=--qos=low",
                                   "adaptive=0-20"])
    assert spec.options["job_extra"] == ["--gres=gpu:1", "--qos=low"] and spec.options["adaptive"] == "0-20"
    for bad, options, message in [("local:0", [], "positive number"), ("yarn", [], "unknown --cluster"),
                                  ("tcp://host", [], "tcp://HOST:PORT"), ("slurm", ["colour=red"], "colour"),
                                  ("slurm", ["cores"], "key=value"), ("slurm", ["jobs=2", "adaptive=1-3"], "exclude"),
                                  ("pbs", ["adaptive=5-2"], "minimum exceeds"), ("lsf", ["jobs=x"], "positive"),
                                  ("tcp://h:1", ["cores=2"], "existing scheduler")]:
        with pytest.raises(ProtlocError, match=message):
            parse_cluster(bad, options)


def test_cli_errors_are_one_line(data_dir, model_file, tmp_path, capsys):
    base = ["predict", str(data_dir), "--model", str(model_file), "--out", str(tmp_path / "x.csv")]
    assert main([*base, "--shard-size", "2"]) == 2
    assert "--shard-size needs --cluster" in capsys.readouterr().err
    assert main([*base, "--cluster", "local:two"]) == 2
    assert "local:N" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_missing_dask_names_the_extra(data_dir, model_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    assert main(["cells", str(data_dir), "--model", str(model_file), "--out", str(tmp_path / "c.csv"),
                 "--cluster", "local:2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "protloc: error: --cluster needs distributed: pip install 'protloc[dask]'"


def test_one_worker_per_gpu_without_a_gpu():
    from protloc.distributed.worker import pin_device

    assert [pin_device("cuda", str(i), 4) for i in range(6)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3",
                                                                  "cuda:0", "cuda:1"]
    assert pin_device("cuda", "SLURMCluster-7", 8) == "cuda:7"
    assert pin_device("cuda", "SLURMCluster-7", 8, visible="3") == "cuda:0"  # the batch system gave it GPU 3
    assert pin_device("cuda:2", "w5", 4) == "cuda:2" and pin_device("cpu", "w5", 0) == "cpu"
    with pytest.raises(ProtlocError, match="worker gpu-node-1 sees no GPU"):
        pin_device("cuda", "gpu-node-1", 0)


def test_shard_size_from_the_image_size():
    from protloc.distributed.shards import shard_size_for

    assert shard_size_for(2048, 2048) == 16
    assert shard_size_for(4096, 4096) == 4
    assert shard_size_for(8192, 8192) == 1
    assert shard_size_for(512, 512) == 256  # capped


def test_slurm_job_script():
    pytest.importorskip("dask_jobqueue", reason="the dask extra installs dask-jobqueue")
    from protloc.distributed import parse_cluster
    from protloc.distributed.clusters import jobqueue_cluster

    spec = parse_cluster("slurm", ["cores=8", "memory=32GB", "walltime=02:30:00", "queue=gpu", "account=imaging",
                                   "job_extra=--gres=gpu:1", "jobs=4"])
    cluster = jobqueue_cluster(spec)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    for directive in ("#SBATCH --cpus-per-task=8", "#SBATCH --mem=30G", "#SBATCH -t 02:30:00", "#SBATCH -p gpu",
                      "#SBATCH -A imaging", "#SBATCH --gres=gpu:1", "#SBATCH -n 1"):
        assert directive in lines, (directive, script)
    command = lines[-1]
    assert command.startswith(sys.executable) and "distributed.cli.dask_worker" in command
    # one worker process owning the job's 8 cores (protloc's torch threads), its memory, the scheduler's address
    assert "--nthreads 8" in command and "--nworkers" not in command and "--memory-limit 29.80GiB" in command
    assert " tcp://" in command and "--nanny" in command


@pytest.mark.parametrize("kind, expected", [
    ("pbs", ["#PBS -q short", "#PBS -A imaging", "#PBS -l walltime=00:30:00", "#PBS -l select=1:ncpus=4:mem=7630MB"]),
    ("lsf", ["#BSUB -q short", '#BSUB -P "imaging"', "#BSUB -W 00:30", "#BSUB -n 4"]),
])
def test_pbs_and_lsf_job_scripts(kind, expected):
    pytest.importorskip("dask_jobqueue", reason="the dask extra installs dask-jobqueue")
    from protloc.distributed import parse_cluster
    from protloc.distributed.clusters import jobqueue_cluster

    cluster = jobqueue_cluster(parse_cluster(kind, ["cores=4", "memory=8GB", "walltime=00:30:00", "queue=short",
                                                    "account=imaging"]))
    try:
        lines = cluster.job_script().splitlines()
    finally:
        cluster.close()
    for directive in expected:
        assert directive in lines, (directive, lines)
    assert "distributed.cli.dask_worker" in lines[-1] and "--nthreads 4" in lines[-1]


# --- a real scheduler and two real workers ----------------------------------------------------------

@pytest.mark.parametrize("name", ["pred.csv", "pred.jsonl", "pred.parquet"])
@pytest.mark.slow  # a real scheduler and worker processes
def test_merged_output_equals_single_process(cluster, data_dir, model_file, single, tmp_path, name, capsys):
    out = tmp_path / name
    assert main(["predict", str(data_dir), "--model", str(model_file), "--out", str(out),
                 "--cluster", cluster.address, "--shard-size", "3"]) == 0
    captured = capsys.readouterr()
    assert "predicted 10 image(s), 0 already done" in captured.out
    assert "Dask dashboard: http://127.0.0.1:" in captured.err
    assert_same_rows(out, single / name)
    assert not (tmp_path / f"{name}.shards").exists()  # merged, then removed


@pytest.mark.slow  # a real scheduler and worker processes
def test_local_cluster_and_its_dashboard(data_dir, model_file, single, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])  # the LocalCluster's worker processes import this tree
    out = tmp_path / "pred.csv"
    assert main(["predict", str(data_dir), "--model", str(model_file), "--out", str(out), "--cluster", "local:2",
                 "--shard-size", "5"]) == 0
    err = capsys.readouterr().err
    assert "a local cluster of 2 worker process(es)" in err and "Dask dashboard: http://127.0.0.1:" in err
    assert_same_rows(out, single / "pred.csv")


@pytest.mark.slow  # a real scheduler and worker processes
def test_cells_merged_equal_single_process(cluster, data_dir, model_file, single, tmp_path):
    import anndata

    out = tmp_path / "cells.csv"
    assert main(["predict", "--cells", str(data_dir), "--model", str(model_file), "--out", str(out),
                 "--cluster", cluster.address, "--shard-size", "4"]) == 0
    assert_same_rows(out, single / "cells.csv")
    got, want = anndata.read_h5ad(tmp_path / "cells.h5ad"), anndata.read_h5ad(single / "cells.h5ad")
    assert list(got.obs_names) == list(want.obs_names) and got.X.shape == want.X.shape
    assert np.abs(got.X - want.X).max() <= 1e-6
    assert dict(got.uns)["method"] == dict(want.uns)["method"]
    masks = sorted(p.name for p in (tmp_path / "cells-masks").iterdir())
    assert masks == sorted(p.name for p in (single / "cells-masks").iterdir()) and len(masks) == 20


@pytest.mark.slow  # a real scheduler and worker processes
def test_worker_that_cannot_see_an_input(cluster, model_file, tmp_path, monkeypatch, capsys):
    from protloc.data.formats import SampleEntry

    missing = tmp_path / "only-on-the-client" / "field_blue.png"
    entries = [SampleEntry("field", {"nucleus": str(missing)}, None, 0, 0)]
    monkeypatch.setattr("protloc.distributed.inputs.list_entries", lambda *a, **k: entries)
    assert main(["predict", str(tmp_path), "--model", str(model_file), "--out", str(tmp_path / "p.csv"),
                 "--cluster", cluster.address, "--shard-size", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("protloc: error: worker w") and f"cannot see {missing}" in err


@pytest.mark.slow  # a real scheduler and worker processes
def test_hcs_plate_read_by_the_workers(cluster, model_file, tmp_path):
    pytest.importorskip("zarr", reason="the formats extra installs zarr")
    from tests.data.test_ome import write_plate

    plate = tmp_path / "plate.zarr"
    write_plate(plate, fields_per_well=3)
    assert main(["predict", str(plate), "--model", str(model_file), "--out", str(tmp_path / "one.csv"),
                 "--workers", "0"]) == 0
    # no --shard-size: a worker reads the first field to choose it (small fields: all six in one shard)
    assert main(["predict", str(plate), "--model", str(model_file), "--out", str(tmp_path / "many.csv"),
                 "--cluster", cluster.address]) == 0
    assert len(read_rows(tmp_path / "one.csv")) == 6
    assert_same_rows(tmp_path / "many.csv", tmp_path / "one.csv")


@pytest.mark.slow  # a real scheduler and worker processes
def test_http_urls_fetched_by_the_workers(cluster, data_dir, model_file, single, tmp_path):
    pytest.importorskip("aiohttp", reason="fsspec's http protocol needs aiohttp")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(data_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        out = tmp_path / "pred.csv"
        assert main(["predict", f"http://127.0.0.1:{port}/", "--model", str(model_file), "--out", str(out),
                     "--cluster", cluster.address, "--shard-size", "4"]) == 0
    finally:
        server.terminate()
        server.wait()
    assert_same_rows(out, single / "pred.csv")


@pytest.fixture(scope="module")
def many(tmp_path_factory, model_file) -> tuple:
    """40 fields of 160², so that the kill tests find a run with work left (their shards take longer
    than the tests' reaction) however idle the machine; and their single-process rows."""
    from protloc.data.synth.dataset import generate_dataset

    folder = tmp_path_factory.mktemp("many")
    generate_dataset(folder / "data", samples=40, size=160, seed=5, workers=1)
    for name in ("pred.csv", "pred.jsonl"):
        assert main(["predict", str(folder / "data"), "--model", str(model_file), "--out", str(folder / name),
                     "--workers", "0"]) == 0
    return folder / "data", folder


@pytest.mark.slow  # a real scheduler and worker processes
def test_client_killed_then_resumed(cluster, many, model_file, tmp_path, capsys):
    data, single = many
    out = tmp_path / "pred.csv"
    parts = tmp_path / "pred.csv.shards"
    arguments = ["predict", str(data), "--model", str(model_file), "--out", str(out),
                 "--cluster", cluster.address, "--shard-size", "1"]
    client = subprocess.Popen([sys.executable, "-c", "import sys; from protloc.cli import main; "
                               "sys.exit(main(sys.argv[1:]))", *arguments], env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(parts.glob("shard-*.parquet"))) < 3 and client.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    client.send_signal(signal.SIGKILL)
    client.wait()
    finished = len(list(parts.glob("shard-*.parquet")))
    assert 3 <= finished < 40, "the client was to be killed mid-run"
    assert main(["predict", str(data), "--model", str(model_file), "--out", str(out),
                 "--cluster", cluster.address, "--shard-size", "1"]) == 0
    err = capsys.readouterr().err
    resumed = int(err.split("resuming: ")[1].split(" of ")[0])
    assert resumed >= finished  # kept, not recomputed (shards running when it died may have finished since)
    assert_same_rows(out, single / "pred.csv")


@pytest.mark.slow  # a real scheduler and worker processes
def test_worker_killed_mid_run_loses_and_doubles_nothing(many, model_file, tmp_path):
    from protloc.distributed import parse_cluster, predict

    data, single = many

    own = LoopbackCluster(tmp_path)  # its own: one of its workers dies here
    try:
        parts = tmp_path / "pred.jsonl.shards"
        killed = []

        def kill_when_working():
            deadline = time.monotonic() + 120
            while not list(parts.glob("shard-*.parquet")) and time.monotonic() < deadline:
                time.sleep(0.01)
            own.workers[1].send_signal(signal.SIGKILL)
            killed.append(len(list(parts.glob("shard-*.parquet"))))

        killer = threading.Thread(target=kill_when_working)
        killer.start()
        result = predict(parse_cluster(own.address), [str(data)], str(model_file), tmp_path / "pred.jsonl",
                         shard_size=1, progress=False)
        killer.join()
        assert own.workers[1].poll() == -signal.SIGKILL and killed and killed[0] < 40
        assert result.predicted == 40
        rows = read_rows(tmp_path / "pred.jsonl")
        assert len({r["id"] for r in rows}) == len(rows) == 40
        assert_same_rows(tmp_path / "pred.jsonl", single / "pred.jsonl")
    finally:
        own.close()


@pytest.mark.slow
def test_bench_cluster_section_quick(model_file, tmp_path, monkeypatch):
    """``protloc bench --sections cluster`` end to end on 4 small fields: every path, every output the same."""
    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--sections", "cluster", "--fields", "4", "--size", "128", "--model",
                 str(model_file), "--out", str(out), "--markdown", str(tmp_path / "bench.md")]) == 0
    section = json.loads(out.read_text())["sections"]["cluster"]
    paths = [r["path"] for r in section["rows"]]
    assert paths == ["single process", "single process", "local:1", "local:2", "scheduler + 2 workers"]
    assert all(r["same_rows"] for r in section["rows"]) and section["empty_task_s"] > 0
    assert [r["workers"] for r in section["projection"]["table"]] == [1, 2, 8, 32, 128]
    assert "load average" in section["uptime"] and "### Cluster" in (tmp_path / "bench.md").read_text()


@pytest.mark.slow  # a real scheduler and worker processes
def test_skipped_input_precision_and_strict_as_single_process(cluster, data_dir, model_file, tmp_path, capsys):
    """An unreadable input, --precision and --strict: the same rows (precision column), the same
    errors list and the same exit status as the single-process run; for cells too (signal_to_noise,
    the .h5ad's uns)."""
    import shutil

    import anndata

    from protloc.commands.options import STRICT_EXIT

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    (data / "broken.npz").write_bytes(b"not a zip file")
    for kind, name, flags in (("predict", "pred.csv", ["--precision", "bf16"]), ("cells", "cells.csv", [])):
        runs = {}
        for where, extra in (("single", ["--workers", "0"] if kind == "predict" else []),
                             ("cluster", ["--cluster", cluster.address, "--shard-size", "4"])):
            out = tmp_path / where / name
            runs[where] = main([kind, str(data), "--model", str(model_file), "--out", str(out), "--strict",
                                *flags, *extra])
        assert runs == {"single": STRICT_EXIT, "cluster": STRICT_EXIT}, kind
        assert_same_rows(tmp_path / "cluster" / name, tmp_path / "single" / name)
        errors = name.replace(".csv", ".errors.csv")
        got, want = (read_rows(tmp_path / where / errors) for where in ("cluster", "single"))
        assert got == want and [r["id"] for r in got] == ["broken"], got
    rows = read_rows(tmp_path / "cluster" / "pred.csv")
    assert {r["precision"] for r in rows} == {"bf16"} and len(rows) == 10
    assert "signal_to_noise" in read_rows(tmp_path / "cluster" / "cells.csv")[0]
    got, want = (anndata.read_h5ad(tmp_path / where / "cells.h5ad") for where in ("cluster", "single"))
    assert {k: str(v) for k, v in got.uns.items()} == {k: str(v) for k, v in want.uns.items()}
    assert got.uns["precision"] == "fp32"
    capsys.readouterr()
