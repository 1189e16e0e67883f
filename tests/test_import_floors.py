"""The house rule on imports, read from the source with ``ast``: every module of ``landscape`` sits
on a floor, imports only modules on its own floor or below, and no modules import each other
round a circle.

Every ``import`` statement counts, wherever it stands: at module level, inside a function (a lazy
import), under ``if TYPE_CHECKING:``. A lazy import changes *when* a module is loaded, not what
it depends on, and the issue's two circles (``analyzers/runner`` <-> ``analyzers/distributed``,
``zsq/parallel`` <-> ``zsq/trainer``) each had a lazy edge; so lazy edges count for the floors and
for circles alike. Importing ``a.b.c`` also runs the packages ``a`` and ``a.b``, so those count
too, except a module's own enclosing packages (a package's ``__init__`` importing its own modules
is how packages work, not a circle). Imports by name at run time (``importlib``, the quantizer
registry) are not statements and are not seen.

The floors are the table of docs/internals.md (a test below keeps the two the same): a name
places a module or a whole package (the longest name that matches wins).
"""

from __future__ import annotations

import ast
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "landscape"

#: floor -> (name, modules and packages on it); imports go down or stay on the floor
FLOORS: dict[int, tuple[str, tuple[str, ...]]] = {
    0: ("foundations", ("landscape", "landscape.errors", "landscape.safe_paths", "landscape.locking",
                        "landscape.kernels", "landscape.launch_guard", "landscape.schema", "landscape.distributed",
                        "landscape.workers")),
    1: ("curvature engine", ("landscape.curvature",)),
    2: ("models, data, losses, quantization", ("landscape.models", "landscape.data", "landscape.losses",
                                                "landscape.quant", "landscape.compat", "landscape.lm_losses", "landscape.output_hessians",
                                                "landscape.lm_model", "landscape.text_data")),
    3: ("run folders and recipes", ("landscape.checkpoints", "landscape.pretrained", "landscape.config")),
    4: ("trainer", ("landscape.zsq", "landscape.sealed_logs", "landscape.lm_teacher")),
    5: ("analyses", ("landscape.analyzers", "landscape.sensitivity")),
    6: ("tables, findings, figures, pipelines", ("landscape.tables", "landscape.findings", "landscape.figures",
                                                  "landscape.results", "landscape.pipeline", "landscape.compare")),
    7: ("command line", ("landscape.cli", "landscape.__main__")),
}


@dataclass(frozen=True)
class Edge:
    source: str   # the importing module
    target: str   # the module imported (a package when the name is not a module)
    line: int
    lazy: bool    # inside a function

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} (line {self.line}{', in a function' if self.lazy else ''})"


def modules_of(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """``{dotted name: file}`` of every module of ``package`` under ``root``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _targets(node: ast.AST, module: str, is_package: bool, modules: dict[str, Path], package: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name == package or a.name.startswith(package + ".")]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = module.split(".")[: len(module.split(".")) - (0 if is_package else 1)]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not (target == package or target.startswith(package + ".")):
        return []
    # ``from a import b``: the module a.b when there is one, else a name defined in a
    return [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]


def import_edges(root: Path, package: str = PACKAGE) -> tuple[dict[str, Path], list[Edge]]:
    """Every intra-package import of every module, module-level and in functions, plus the
    enclosing packages each import runs (not the importer's own)."""
    modules = modules_of(root, package)
    edges: list[Edge] = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, lazy: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in _targets(child, module, is_package, modules, package):
                        parts = target.split(".")
                        for i in range(1, len(parts) + 1):
                            name = ".".join(parts[:i])
                            own = module == name or module.startswith(name + ".")
                            if name in modules and name != module and (name == target or not own):
                                edges.append(Edge(module, name, child.lineno, lazy))
                visit(child, lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        visit(tree, False)
    return modules, list(dict.fromkeys(edges))  # one edge per statement, however many names it imports


def floor_of(module: str, floors=FLOORS, package: str = PACKAGE) -> int | None:
    """The floor of ``module``: that of the longest table name equal to it or enclosing it (the
    root package's own name places the root ``__init__`` only)."""
    best, best_len = None, -1
    for floor, (_, names) in floors.items():
        for name in names:
            hit = module == name or (name != package and module.startswith(name + "."))
            if hit and len(name) > best_len:
                best, best_len = floor, len(name)
    return best


def cycles(modules, edges: list[Edge]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for e in edges:
        graph[e.source].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def connect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(found)


def violations(root: Path, floors=FLOORS, package: str = PACKAGE) -> list[str]:
    """Every breach of the rule, one line each (empty: the house is in order)."""
    modules, edges = import_edges(root, package)
    out = [f"{m} is on no floor: add it (or its package) to a floor of FLOORS and of docs/internals.md"
           for m in modules if floor_of(m, floors, package) is None]
    for e in edges:
        src, dst = floor_of(e.source, floors, package), floor_of(e.target, floors, package)
        if src is not None and dst is not None and dst > src:
            out.append(f"upward import: {e}: floor {src} ({floors[src][0]}) imports floor {dst} ({floors[dst][0]})")
    for comp in cycles(modules, edges):
        inside = [str(e) for e in edges if e.source in comp and e.target in comp]
        more = f"; and {len(inside) - 8} more" if len(inside) > 8 else ""
        out.append(f"import circle among {', '.join(comp)}: {'; '.join(inside[:8])}{more}")
    return out


# ----------------------------------------------------------------------------- the tests


def test_no_module_imports_above_its_floor_and_there_is_no_import_circle():
    assert violations(ROOT) == []


def test_the_checker_catches_a_planted_upward_import_and_a_planted_circle(tmp_path):
    shutil.copytree(ROOT / PACKAGE, tmp_path / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    assert violations(tmp_path) == []  # the copy is clean ...
    layers = tmp_path / PACKAGE / "curvature" / "layers.py"  # the engine reaching up to the figures, lazily
    layers.write_text(layers.read_text() + "\n\ndef _planted():\n    from landscape.figures import plot_all\n")
    curv = tmp_path / PACKAGE / "curvature"
    (curv / "planted_a.py").write_text("from . import planted_b\n")
    (curv / "planted_b.py").write_text("def f():\n    from landscape.curvature.planted_a import x\n")
    (tmp_path / PACKAGE / "planted_nowhere.py").write_text("")
    found = violations(tmp_path)
    assert len(found) == 3, found
    up, circle, unplaced = sorted(found, key=lambda line: ("upward" not in line, "circle" not in line))
    assert up.startswith("upward import: landscape.curvature.layers -> landscape.figures (line ") and "in a function" in up
    assert "floor 1 (curvature engine) imports floor 6 (tables, findings, figures, pipelines)" in up
    assert circle.startswith("import circle among landscape.curvature.planted_a, landscape.curvature.planted_b")
    assert unplaced.startswith("landscape.planted_nowhere is on no floor")


def test_the_checker_reads_relative_lazy_and_package_imports():
    """What the checker sees, on modules whose imports are known (hand-read from the source)."""
    modules, edges = import_edges(ROOT)
    seen = {(e.source, e.target, e.lazy) for e in edges}
    assert ("landscape.curvature.base", "landscape.curvature.reduction", False) in seen  # from .reduction import
    assert ("landscape.curvature.base", "landscape.curvature.estimators", True) in seen  # inside a function
    assert ("landscape.quant.interface", "landscape.curvature.params", True) in seen
    assert ("landscape.quant.interface", "landscape.curvature", True) in seen  # the package it runs
    assert not any(s == "landscape.curvature.base" and t == "landscape.curvature" for s, t, _ in seen)  # its own
    assert floor_of("landscape.curvature.hessian") == 1 and floor_of("landscape.analyzers.sweep") == 5
    assert floor_of("landscape") == 0 and floor_of("landscape.nothing_placed") is None


def test_the_floor_table_of_the_docs_is_the_one_enforced():
    text = (ROOT / "docs" / "internals.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d) \| ([^|]+?) \| ([^|]+?) \|$", text, flags=re.M)
    documented = {int(f): (name.strip(), tuple(re.findall(r"`([\w.]+)`", mods))) for f, name, mods in rows}
    assert documented == FLOORS


if __name__ == "__main__":  # python tests/test_import_floors.py: every module, its floor and its imports
    found, all_edges = import_edges(ROOT)
    for name in sorted(found, key=lambda m: (floor_of(m) if floor_of(m) is not None else 99, m)):
        mine = [e for e in all_edges if e.source == name]
        now = sorted({e.target for e in mine if not e.lazy})
        later = sorted({e.target for e in mine if e.lazy} - set(now))
        print(f"{floor_of(name)}  {name}: {' '.join(now) or '-'}" + (f" | lazy: {' '.join(later)}" if later else ""))
    print("\n".join(violations(ROOT)) or "no upward import, no circle")
