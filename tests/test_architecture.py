"""Architecture rules read from the source: the import graph of `minillm_core`, built with `ast`, has no cycles.

Every import counts, module-level or inside a function; only `if TYPE_CHECKING:` imports (which never run) do not.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "minillm_core"
ASSERTED = ("minillm_core",)  # every cycle anywhere in the package fails the test
ENGINES = "minillm_core.scoring.engine"
CRITERIA = {f"minillm_core.scoring.{m}" for m in ("magnitude", "wanda", "flap", "taylor", "fms", "obs")}


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module and package `__init__` under `package`."""
    files = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, skipping the bodies of `if TYPE_CHECKING:` blocks."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        children = node.orelse if isinstance(node, ast.If) and _is_type_checking(node) else ast.iter_child_nodes(node)
        todo.extend(children)
    return found


def _targets(node: ast.Import | ast.ImportFrom, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The modules of `modules` one import statement in module `name` loads (a submodule when it names one)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in modules}
    base = node.module or ""
    if node.level:
        here = name.split(".") if is_package else name.split(".")[:-1]
        base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
    subs = {f"{base}.{alias.name}" for alias in node.names} & modules
    return subs or ({base} & modules)


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports."""
    files = module_files(root, package)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        graph[name] = set().union(*(_targets(n, name, is_package, set(files)) for n in _import_nodes(tree))) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted: the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_resolves_submodule_imports():
    graph = import_graph()
    assert "minillm_core.scoring.base" in graph["minillm_core.scoring.fms"]
    assert "minillm_core.registry" in graph["minillm_core.scoring.base"]


def test_no_import_cycles():
    found = cycles(import_graph())
    asserted = [c for c in found if any(m.startswith(ASSERTED) for m in c)]
    for c in found:
        if c not in asserted:
            print("import cycle outside scoring (not asserted yet):", " <-> ".join(c))
    assert asserted == [], asserted


def test_scoring_engines_import_no_criterion_and_criteria_import_no_other_criterion():
    graph = import_graph()
    engines = {m for m in graph if m.startswith(ENGINES)}
    assert engines and set(graph) >= CRITERIA
    for name, deps in graph.items():
        if name in engines:
            assert {d for d in deps if d.startswith("minillm_core.scoring")} <= engines, name
        if name in CRITERIA:
            assert not deps & CRITERIA, name


MAX_FRONT_END_FUNCTION_LINES = 60
PAGE_MODULE_BUDGET = 5
# Attribute paths and config keys that only the adapters in `modeling/` may know.
MODEL_PATHS = ("self_attn", "model.layers", "decoder.layers", "transformer.h.", "max_position_embeddings",
               "o_proj", "down_proj", "dense_4h_to_h", "fc2")


def _python_files(*relative: str) -> list[Path]:
    out = []
    for rel in relative:
        path = ROOT / rel
        out.extend([path] if path.is_file() else sorted(path.rglob("*.py")))
    return out


def test_front_end_functions_stay_short():
    long = []
    for path in _python_files("minillm_core/cli", "pages", "app.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FRONT_END_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_pages_import_only_the_facade_modules():
    used = set()
    for path in _python_files("pages", "app.py"):
        for node in _import_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE):
                used |= ({f"{node.module}.{a.name}" for a in node.names} & set(module_files())) or {node.module}
            elif isinstance(node, ast.Import):
                used |= {a.name for a in node.names if a.name.startswith(PACKAGE)}
    assert len(used) <= PAGE_MODULE_BUDGET, sorted(used)


def test_model_attribute_paths_live_only_in_the_adapters():
    found = []
    for name, path in module_files().items():
        if name.startswith(f"{PACKAGE}.modeling"):
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            hits = [p for p in MODEL_PATHS if p in line]
            if hits:
                found.append(f"{path.relative_to(ROOT)}:{lineno} {hits}")
    assert found == []
