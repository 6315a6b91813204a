"""Layers point down: no import circle among the modules of slwtune, service and devstack.

Lazy imports inside functions count (a circle through a lazy import is still a circle);
imports under `if TYPE_CHECKING:` do not (they never run).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("slwtune", "service", "devstack")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module (or module.attribute) this file imports, TYPE_CHECKING blocks aside."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            out.add(source)
            out.update(f"{source}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        edges = set()
        for target in imported_names(ast.parse(path.read_text()), name, path.name == "__init__.py"):
            while target and target not in files:  # `pkg.mod.func` -> `pkg.mod`
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_circles_are_found_through_lazy_imports_but_not_type_checking_ones():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert circles(graph) == [["a", "b", "c"]]
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x.y\n"
                     "def f():\n    from .z import w\n")
    assert imported_names(tree, "pkg.mod", False) == {"typing", "typing.TYPE_CHECKING", "pkg.z", "pkg.z.w"}


def test_no_import_circle_among_modules():
    assert circles(import_graph()) == []


def test_the_library_points_down_only():
    graph = import_graph()
    upward = {m: sorted(t for t in targets if t.split(".")[0] in ("service", "devstack"))
              for m, targets in graph.items() if m.split(".")[0] == "slwtune"}
    assert {m: t for m, t in upward.items() if t} == {}


# The pure core (docs/architecture.md, layers 0-1): the search, its results, the decision, the plan
# and the names the service shares load no framework, so the service, `plan` and the tests of the
# method run without torch, Ray, MLflow or Optuna.
PURE_CORE = ("slwtune.files", "slwtune.metrics", "slwtune.spec", "slwtune.pacing", "slwtune.schedule",
             "slwtune.tuning.strategies", "slwtune.tuning.results", "slwtune.tuning.evidence", "slwtune.tuning.loop",
             "slwtune.tuning.race", "slwtune.tuning.decision", "slwtune.tuning.report", "slwtune.tuning.searches",
             "slwtune.simulation", "slwtune.plan", "slwtune.job", "slwtune.tracking", "service.states")
FRAMEWORKS = ("torch", "ray", "mlflow", "optuna", "numpy")


def test_the_pure_core_loads_no_framework():
    import subprocess
    import sys

    code = ("import importlib, sys\n"
            f"importlib.import_module(sys.argv[1])\n"
            f"print(' '.join(m for m in {FRAMEWORKS!r} if m in sys.modules))")
    loaded = {}
    for module in PURE_CORE:
        out = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True, cwd=ROOT,
                             check=True).stdout.split()
        if out:
            loaded[module] = out
    assert loaded == {}


def test_the_pure_core_check_sees_a_framework():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import sys, slwtune.sessions; print('torch' in sys.modules)"],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "True"  # the probe above would notice a module that loads torch
