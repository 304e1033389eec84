"""protloc's import graph, read from the code: its circles and its imports that climb back up.

    python tools/import_graph.py            # circles and upward imports, one per line; exit 1 if any
    python tools/import_graph.py --edges    # every edge "importer -> imported (line)"

Every ``import`` and ``from ... import`` in every module counts, the ones inside functions too (a lazy
import still makes the importer depend on the imported module; only ``if TYPE_CHECKING:`` blocks
are left out). ``from package import name`` points at ``package.name`` when that is a module, else at
``package`` itself. A package's ``__init__`` is the node named after the package.

Circles are the strongly connected components of more than one module. Upward imports are edges
from a module to one in a higher layer of ``LAYERS`` (lowest first): a module belongs to the first
layer whose prefixes match it; a module in no layer is reported, so the order covers the package.
tests/project/test_import_graph.py runs this and fails on any circle or upward import not in its list of
known exceptions.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "protloc"
SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A module may import from its own layer and the layers below it, never above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("protloc.version", "protloc.errors", "protloc.files", "protloc.devices", "protloc.labels",
                    "protloc.labelsets", "protloc.configs")),
    ("data", ("protloc.data",)),
    ("pictures", ("protloc.visualization",)),
    ("models", ("protloc.models",)),
    # the model file, where published weights come from, and running a model (one layer: the model
    # file records the normalisation the inferer applies; prediction resolves "pretrained")
    ("inference", ("protloc.model_file", "protloc.pretrained", "protloc.inference", "protloc.export")),
    ("cells", ("protloc.cells",)),
    ("training and evaluation", ("protloc.training", "protloc.evaluation")),
    ("http server", ("protloc.web.http.server",)),  # uvicorn set-up, nothing of protloc's: the platform's and the study's
    ("applications", ("protloc.expert", "protloc.napari", "protloc.demo")),
    # the platform, its parts lowest first (src/protloc/web/__init__.py says what each holds)
    ("platform: shared", ("protloc.web", "protloc.web.errors", "protloc.web.access", "protloc.web.settings",
                          "protloc.web.memory")),
    ("platform: storage", ("protloc.web.storage",)),
    ("platform: pictures", ("protloc.web.pictures",)),  # the renderer draws the cells; the worker hands pictures over
    ("platform: queue", ("protloc.web.queue",)),
    ("platform: uploads", ("protloc.web.uploads",)),  # a batch's samples become submissions through the service
    ("platform: http", ("protloc.web.http",)),  # the service wires every part; the app mounts the expert study's pages
    ("distributed", ("protloc.distributed",)),  # prediction and cells over a Dask cluster (the commands' --cluster)
    ("benchmarks", ("protloc.bench",)),  # measures everything below, the platform included
    ("command line", ("protloc.commands", "protloc.cli", "protloc.__main__")),
    ("public facade", ("protloc",)),  # the package root: __version__ and the lazy load_model
]


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules(src: Path = SRC) -> dict[str, Path]:
    return {module_name(path, src): path for path in sorted((src / PACKAGE).rglob("*.py"))}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies in."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def edges(src: Path = SRC) -> list[Edge]:
    known = modules(src)
    found: list[Edge] = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        skipped = _type_checking_lines(tree)
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skipped:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importer's package
                    package = name if is_package else name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
            for target in targets:
                if not target.split(".")[0] == PACKAGE:
                    continue
                resolved = _resolve(target, known)
                if resolved and resolved != name:
                    found.append(Edge(name, resolved, node.lineno))
    return sorted(set(found), key=lambda e: (e.source, e.target, e.line))


def circles(found: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted, sorted."""
    graph: dict[str, set[str]] = {}
    for edge in found:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:  # iterative enough for a package of a few hundred modules
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(result)


# Packages named in LAYERS for their ``__init__`` alone: the modules under them each belong to a
# layer of their own, and one that is in none is reported instead of falling into the package's.
ONLY_ITSELF = {PACKAGE, "protloc.web"}


def layer_of(module: str) -> int | None:
    for position, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if prefix in ONLY_ITSELF and module != prefix:
                continue  # the package's __init__ only
            if module == prefix or module.startswith(prefix + "."):
                return position
    return None


def upward(found: list[Edge]) -> list[Edge]:
    """Edges from a lower layer to a higher one."""
    result = []
    for edge in found:
        low, high = layer_of(edge.source), layer_of(edge.target)
        if low is not None and high is not None and high > low:
            result.append(edge)
    return result


def unlayered(src: Path = SRC) -> list[str]:
    return [name for name in modules(src) if layer_of(name) is None]


def report(src: Path = SRC) -> tuple[list[list[str]], list[Edge], list[str]]:
    found = edges(src)
    return circles(found), upward(found), unlayered(src)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=SRC, help="the folder holding the protloc package")
    parser.add_argument("--edges", action="store_true", help="print every edge instead")
    args = parser.parse_args(argv)
    if args.edges:
        for edge in edges(args.src):
            print(f"{edge.source} -> {edge.target} ({edge.line})")
        return 0
    found_circles, found_upward, found_unlayered = report(args.src)
    for component in found_circles:
        print("circle: " + " <-> ".join(component))
    for edge in found_upward:
        print(f"upward: {edge.source} ({LAYERS[layer_of(edge.source)][0]}) -> {edge.target} "
              f"({LAYERS[layer_of(edge.target)][0]}), line {edge.line}")
    for name in found_unlayered:
        print(f"no layer: {name}")
    print(f"{len(found_circles)} circles, {len(found_upward)} upward imports, {len(found_unlayered)} modules in no layer")
    return 1 if found_circles or found_upward or found_unlayered else 0


if __name__ == "__main__":
    raise SystemExit(main())
