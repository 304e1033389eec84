"""The commands the README's quickstart rests on: sample-data, pretrained fetch from a plain web
server, --version, and the demo check against a stated range."""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import threading
from pathlib import Path

import pytest

from tests.conftest import shared_dir
from protloc.cli import main
from protloc.commands.sample_data import shipped_files
from protloc.data.formats import discover

CHECKPOINT = shared_dir() / "pretrained" / "gapnet-pl"


@pytest.mark.slow
def test_sample_data_writes_the_field_and_its_credit(tmp_path, capsys):
    out = tmp_path / "field"
    assert main(["sample-data", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f.name for f in shipped_files())
    credit = (out / "PROVENANCE.md").read_text()
    assert "CC BY-SA 3.0" in credit and "proteinatlas.org" in credit
    assert "../shared" not in credit  # the credit a user gets stands on its own
    assert "CC BY-SA 3.0" in capsys.readouterr().out
    # one four-channel sample, the credit file no input
    (entry,) = discover([out])
    assert len(entry.sources) == 4
    # again: identical files are fine; a changed one is refused unless --force
    assert main(["sample-data", str(out)]) == 0
    png = next(out.glob("*_green.png"))
    png.write_bytes(b"not the shipped file")
    assert main(["sample-data", str(out)]) == 2
    assert "exists with other content" in capsys.readouterr().err
    assert main(["sample-data", str(out), "--force"]) == 0
    assert png.read_bytes() == next(f for f in shipped_files() if f.name == png.name).read_bytes()


def test_sample_data_into_a_file_is_one_line_error(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["sample-data", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("protloc: error:") and err.count("\n") == 1


def test_version_names_torch_and_the_device(capsys):
    import torch

    import protloc

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"protloc {protloc.__version__}"
    assert f"torch {torch.__version__}" in out
    assert "device: cuda (" in out if torch.cuda.is_available() else "device: cpu" in out
    assert f"kernels {torch.backends.cpu.get_cpu_capability()}" in out


def test_version_has_one_source_of_truth():
    import tomllib

    import protloc

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    # the bumping rule: every version has its section in the changelog, the newest first
    changelog = (Path(__file__).resolve().parents[2] / "CHANGELOG.md").read_text()
    sections = re.findall(r"^## (\d+\.\d+\.\d+) \(", changelog, flags=re.M)
    assert sections and sections[0] == protloc.__version__, (sections[:2], protloc.__version__)


@pytest.fixture
def weights_server(tmp_path):
    """A plain http.server on loopback serving a copy of the published checkpoint folder."""
    served = tmp_path / "served"
    shutil.copytree(CHECKPOINT, served)
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_fetch_from_a_web_server_checks_sha256_and_fills_the_cache(weights_server, tmp_path, monkeypatch, capsys):
    served, url = weights_server
    monkeypatch.setenv("PROTLOC_CACHE", str(tmp_path / "cache"))
    assert main(["pretrained", "fetch", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "sha256 verified" in out and "the published release" in out
    assert (tmp_path / "cache" / "pretrained" / "gapnet-pl.pt").is_file()


def test_fetch_of_a_tampered_file_is_refused_and_nothing_cached(weights_server, tmp_path, monkeypatch, capsys):
    served, url = weights_server
    data = served / "gapnet-pl.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[1000] ^= 0xFF  # same size, other bytes: only the checksum can tell
    data.chmod(0o644)
    data.write_bytes(bytes(raw))
    monkeypatch.setenv("PROTLOC_CACHE", str(tmp_path / "cache"))
    assert main(["pretrained", "fetch", "--url", url, "--retries", "0"]) == 2
    assert "sha256" in capsys.readouterr().err
    cached = tmp_path / "cache" / "pretrained"
    assert not any(cached.rglob("*")) if cached.exists() else True


TINY_DEMO = ["--samples", "24", "--size", "64", "--crop-size", "32", "--epochs", "1", "--batch-size", "8",
             "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    assert main(["demo", "--out", str(out), *TINY_DEMO]) == 0
    return out


def _stated(tmp_path, ranges, **settings) -> Path:
    stated = {"settings": {"samples": 24, "size": 64, "crop_size": 32, "epochs": 1, "batch_size": 8,
                           "learning_rate": 0.01, "patience": 5, **settings},
              "ranges": ranges, "status": "test range"}
    path = tmp_path / "stated.json"
    path.write_text(json.dumps(stated))
    return path


@pytest.mark.slow
def test_demo_check_inside_and_outside_the_stated_range(tiny_demo, tmp_path, capsys):
    metrics = json.loads((tiny_demo / "runs" / "gapnet-pl" / "evaluation" / "test" / "metrics.json").read_text())
    auc = metrics["summary"]["auc"]["mean"]
    inside = _stated(tmp_path, {"auc": [auc - 0.01, auc + 0.01]})
    out = tmp_path / "check.json"
    assert main(["bench", "--sections", "demo-check", "--run", str(tiny_demo), "--expected", str(inside),
                 "--out", str(out)]) == 0
    assert "all inside the stated range" in capsys.readouterr().out
    row = json.loads(out.read_text())["sections"]["demo-check"]["rows"][0]
    assert row["figure"] == "auc" and row["measured"] == pytest.approx(auc) and row["inside"]

    outside = _stated(tmp_path, {"auc": [min(auc + 0.05, 1.0), 1.0], "f1": [0.0, 1.0]})
    assert main(["bench", "--sections", "demo-check", "--run", str(tiny_demo), "--expected", str(outside),
                 "--out", str(out)]) == 1
    assert "**outside the stated range**" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_check_refuses_other_settings_and_bad_files(tiny_demo, tmp_path, capsys):
    other = _stated(tmp_path, {"auc": [0.0, 1.0]}, epochs=60)
    assert main(["bench", "--sections", "demo-check", "--run", str(tiny_demo), "--expected", str(other),
                 "--out", str(tmp_path / "c.json")]) == 2
    assert "not comparable: epochs 1 (stated 60)" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"ranges": {"auc": [0.9]}}')
    assert main(["bench", "--sections", "demo-check", "--run", str(tiny_demo), "--expected", str(bad),
                 "--out", str(tmp_path / "c.json")]) == 2
    assert "must be [low, high]" in capsys.readouterr().err
    assert main(["bench", "--sections", "demo-check", "--out", str(tmp_path / "c.json")]) == 2
    assert "needs --run DIR" in capsys.readouterr().err
    assert main(["bench", "--sections", "demo-check,inference", "--run", str(tiny_demo)]) == 2
    assert "runs alone" in capsys.readouterr().err


def test_stated_demo_range_file_is_valid():
    from protloc.bench.demo_check import read_stated
    from protloc.demo import DemoSettings

    stated = read_stated(Path(__file__).resolve().parents[2] / "benchmarks" / "demo-headline.json")
    defaults = DemoSettings()
    # the stated range is for the demo's defaults: the command a user runs
    assert stated["settings"] == {"samples": defaults.samples, "size": defaults.size, "crop_size": defaults.crop_size,
                                  "epochs": defaults.epochs, "batch_size": defaults.batch_size,
                                  "learning_rate": defaults.learning_rate, "patience": defaults.patience}
    for measurement in stated["measurements"]:
        for name, (low, high) in stated["ranges"].items():
            if name in measurement:
                assert low <= measurement[name] <= high, (name, measurement)
