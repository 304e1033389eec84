"""The documentation: the site builds strictly, and the README's quickstart runs as written.

The quickstart is run command by command in a fresh temporary folder, as a user on a fresh clone
would (no ../shared in it). Only the weights' origin differs: `protloc pretrained fetch` is pointed
at a loopback web server serving the copy of the published checkpoint in ../shared
(PROTLOC_PRETRAINED_URL), so the test downloads nothing from the internet yet runs the same command.
"""

from __future__ import annotations

import csv
import functools
import http.server
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import shared_dir

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = re.compile(r"<!-- quickstart -->\s*```bash\n(.*?)```\s*<!-- /quickstart -->", re.S)


def quickstart_commands() -> list[str]:
    match = QUICKSTART.search((REPO / "README.md").read_text())
    assert match, "README.md has no quickstart block between <!-- quickstart --> and <!-- /quickstart -->"
    commands = []
    for line in match.group(1).splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(line)
    return commands


def _mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          cwd=config.parent, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_readme_is_short_and_has_no_development_paths():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for text in [readme] + [p.read_text() for p in (REPO / "docs").rglob("*.md")]:
        assert "../shared" not in text


@pytest.mark.slow
def test_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    result = _mkdocs_build(REPO / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    for page in ("install", "predict", "single-cells", "real-images", "training", "expert", "platform", "napari",
                 "export", "benchmarks", "benchmarks-history", "architecture", "demo", "api"):
        assert (tmp_path / "site" / page / "index.html").is_file(), page
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "load_model" in api and "every value checked" in api  # mkdocstrings rendered the docstrings


@pytest.mark.slow
def test_site_build_fails_on_a_broken_link(tmp_path):
    pytest.importorskip("mkdocs")
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in ("mkdocs.yml", "README.md", "BENCHMARKS.md", "CHANGELOG.md", "LICENSE", "CREDITS.md"):
        shutil.copy(REPO / name, copy / name)
    shutil.copytree(REPO / "docs", copy / "docs")
    shutil.copytree(REPO / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__"))
    page = copy / "docs" / "install.md"
    page.write_text(page.read_text() + "\nSee [a page that is not there](no-such-page.md).\n")
    result = _mkdocs_build(copy / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0 and "no-such-page.md" in result.stderr


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def weights_url(tmp_path):
    """The published checkpoint files on a loopback web server, as the authors' repository serves them."""
    served = tmp_path / "served"
    shutil.copytree(shared_dir() / "pretrained" / "gapnet-pl", served)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _readme_columns(readme: str, table_title: str) -> list[str]:
    """The backquoted column names in the first cells of the README's explanation table after ``table_title``."""
    section = readme.split(table_title, 1)[1].split("\n\n|", 1)[1].split("\n\n", 1)[0]
    names = [name for row in section.splitlines() for name in re.findall(r"`([a-z_]+)`", row.split("|")[1])]
    assert names, f"no columns explained after {table_title}"
    return names


@pytest.mark.slow
def test_readme_quickstart_runs_on_a_fresh_folder(tmp_path, weights_url):
    pytest.importorskip("skimage")
    pytest.importorskip("anndata")
    work = tmp_path / "fresh"
    work.mkdir()
    # the `protloc` script of this environment, with this tree's code first (as the editable install has it)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PROTLOC_CACHE": str(tmp_path / "cache"), "PROTLOC_PRETRAINED_URL": weights_url}
    env.pop("PROTLOC_SHARED", None)
    commands = quickstart_commands()
    assert commands[0].startswith("protloc pretrained fetch") and any("--cells" in c for c in commands)
    for command in commands:
        assert "shared" not in command
        result = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"

    readme = (REPO / "README.md").read_text()
    assert (tmp_path / "cache" / "pretrained" / "gapnet-pl.pt").is_file()
    assert "CC BY-SA 3.0" in (work / "hpa-field" / "PROVENANCE.md").read_text()
    with open(work / "predictions.csv", newline="") as handle:
        images = list(csv.DictReader(handle))
    assert len(images) == 1 and images[0]["predicted"] == "Nucleus"
    for column in _readme_columns(readme, "**The image table**"):
        assert column in images[0], column
    with open(work / "cells.csv", newline="") as handle:
        cells = list(csv.DictReader(handle))
    assert len(cells) >= 10 and all(cell["top_class"] == "Nucleus" for cell in cells)
    for column in _readme_columns(readme, "**The cell table**"):
        assert column in cells[0], column
    assert (work / "cells.h5ad").is_file() and any((work / "maps").glob("*__Nucleus.png"))
    # the excerpt's figures are what the commands give
    first = next(cell for cell in cells if cell["cell_id"] == "1")
    assert f"1,{first['centroid_y']},{first['centroid_x']},{first['area']}," in readme
