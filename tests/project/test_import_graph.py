"""The package's import graph (tools/import_graph.py): no circles, no imports back up the layers.

The lists below are the known exceptions still to break; each names whose area it is in. The test
fails on a new circle or upward import, and on an exception that no longer exists (so the lists only
shrink).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


KNOWN_CIRCLES = set()
KNOWN_UPWARD = set()


def test_no_new_circles_or_upward_imports():
    graph = _tool()
    circles, upward, unlayered = graph.report(ROOT / "src")
    assert not unlayered, f"modules in no layer of tools/import_graph.py LAYERS: {unlayered}"
    found_circles = {frozenset(c) for c in circles}
    assert found_circles <= KNOWN_CIRCLES, f"new import circles: {found_circles - KNOWN_CIRCLES}"
    assert KNOWN_CIRCLES <= found_circles, f"broken circles still listed as known: {KNOWN_CIRCLES - found_circles}"
    found_upward = {(e.source, e.target) for e in upward}
    assert found_upward <= KNOWN_UPWARD, f"new upward imports: {sorted(found_upward - KNOWN_UPWARD)}"
    assert KNOWN_UPWARD <= found_upward, f"gone, still listed: {sorted(KNOWN_UPWARD - found_upward)}"


def test_the_tool_sees_circles_lazy_imports_and_upward_imports(tmp_path):
    graph = _tool()
    package = tmp_path / "protloc"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "errors.py").write_text("")
    (package / "data" / "__init__.py").write_text("")
    (package / "data" / "a.py").write_text("from protloc.data import b\n")
    # a lazy import inside a function still counts; a TYPE_CHECKING one does not
    (package / "data" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from protloc import cli\n"
        "def f():\n    from . import a\n    from protloc.models import net\n")
    (package / "models").mkdir()
    (package / "models" / "__init__.py").write_text("")
    (package / "models" / "net.py").write_text("import protloc.errors\n")
    (package / "cli.py").write_text("")
    circles, upward, unlayered = graph.report(tmp_path)
    assert circles == [["protloc.data.a", "protloc.data.b"]]
    assert [(e.source, e.target) for e in upward] == [("protloc.data.b", "protloc.models.net")]
    assert unlayered == []


def test_the_platforms_parts_are_layers_of_their_own():
    """The platform's sub-packages are ordered (an import from storage up to http is an upward import),
    and a module added at the platform's top level falls in no layer until it is given one."""
    graph = _tool()
    order = ["protloc.web.errors", "protloc.web.storage.db", "protloc.web.pictures.renders",
             "protloc.web.queue.worker", "protloc.web.uploads.batches", "protloc.web.http.service"]
    layers = [graph.layer_of(name) for name in order]
    assert None not in layers and layers == sorted(layers) and len(set(layers)) == len(layers), layers
    assert graph.layer_of("protloc.web.http.server") < graph.layer_of("protloc.expert.web")  # the study serves with it
    assert graph.layer_of("protloc.web") is not None
    assert graph.layer_of("protloc.web.something_new") is None
    edge = graph.Edge("protloc.web.storage.store", "protloc.web.http.app", 1)
    assert graph.upward([edge]) == [edge]
