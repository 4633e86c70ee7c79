"""The layout holds what docs/ARCHITECTURE.md promises: small modules and functions, no import cycle, a shallow
runtime import graph, library code that logs instead of printing, and an app that imports only the inference path."""

from __future__ import annotations

import ast
import functools
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400
MAX_LINES_EVER = 450  # no module of diffnphr/ nor app.py passes this, whatever its reason
MAX_FUNCTION_LINES = 120
MAX_IMPORT_DEPTH = 5
# Modules allowed past MAX_LINES (never past MAX_LINES_EVER), and why (docs/ARCHITECTURE.md repeats these).
LONG_MODULES = {
    "diffnphr.data.ict_convert": "one converter from the ICT-FaceKit repository's OBJ files to the archive",
    "app": "the one file the Space runs: the server both tabs share, their endpoints, a builder per tab",
}


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(root: Path = ROOT, package: str = "diffnphr") -> dict[str, Path]:
    return {_module_name(path, root): path for path in (root / package).rglob("*.py")}


def _imports(path: Path, name: str, modules: dict[str, Path], runtime_only: bool) -> set[str]:
    """The package's modules one module imports. `runtime_only`: those it imports when it is imported (top-level
    imports, not those under `if TYPE_CHECKING:` nor inside functions); else every import statement in the file,
    wherever it sits. Relative imports are resolved against the module's package; `from package import x`
    counts the submodule `package.x` where x is one, else `package` itself (x is a name its `__init__` defines).
    The parent packages every import runs first are not counted, or each `__init__` that imports one of its
    submodules would close a loop with any submodule that imports a sibling through it."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in _top_level(tree.body) if runtime_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found |= {imported for imported in names if imported in modules}
    return found - {name}


def _top_level(statements: list[ast.stmt]) -> list[ast.stmt]:
    flat = []
    for statement in statements:
        if isinstance(statement, ast.If) and "TYPE_CHECKING" in ast.unparse(statement.test):
            continue
        if isinstance(statement, ast.If):
            flat += _top_level(statement.body + statement.orelse)
        elif isinstance(statement, ast.Try):
            handlers = [line for handler in statement.handlers for line in handler.body]
            flat += _top_level(statement.body + handlers + statement.orelse + statement.finalbody)
        else:
            flat.append(statement)
    return flat


def _import_graph(root: Path = ROOT, package: str = "diffnphr", runtime_only: bool = True) -> dict[str, set[str]]:
    modules = _modules(root, package)
    return {name: _imports(path, name, modules, runtime_only) for name, path in modules.items()}


def _import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One loop per group of modules that import each other round a loop (a strongly connected component of
    more than one module), as the shortest chain of imports from its first module back to it."""
    reverse: dict[str, set[str]] = {name: set() for name in graph}
    for name, imported in graph.items():
        for other in imported:
            reverse[other].add(name)

    def reach(start: str, edges: dict[str, set[str]]) -> set[str]:
        seen, frontier = {start}, [start]
        while frontier:
            for other in edges[frontier.pop()] - seen:
                seen.add(other)
                frontier.append(other)
        return seen

    cycles, placed = [], set()
    for start in sorted(graph):
        if start in placed:
            continue
        component = reach(start, graph) & reach(start, reverse)
        placed |= component
        if len(component) < 2:
            continue
        previous: dict[str, str] = {}
        queue = deque([start])
        while start not in previous:
            name = queue.popleft()
            for other in sorted(graph[name] & component):
                if other not in previous:
                    previous[other] = name
                    queue.append(other)
        chain = [start]
        while len(chain) == 1 or chain[-1] != start:
            chain.append(previous[chain[-1]])
        cycles.append(chain[::-1])
    return cycles


def _checked_files() -> dict[str, Path]:
    return {**_modules(), "app": ROOT / "app.py"}


def test_modules_stay_small_or_say_why():
    lines = {name: len(path.read_text().splitlines()) for name, path in _checked_files().items()}
    too_long = {name: count for name, count in lines.items() if count > MAX_LINES and name not in LONG_MODULES}
    assert not too_long, f"modules over {MAX_LINES} lines without a stated reason: {too_long}"
    far_too_long = {name: count for name, count in lines.items() if count > MAX_LINES_EVER}
    assert not far_too_long, f"modules over {MAX_LINES_EVER} lines: {far_too_long}"


def test_functions_stay_under_120_lines():
    too_long = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, path in _checked_files().items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not too_long, too_long


def test_no_modules_import_each_other_in_a_loop():
    """Every import counts here, those under `if TYPE_CHECKING:` and inside functions too: a loop is a loop."""
    cycles = _import_cycles(_import_graph(runtime_only=False))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_cycle_check_finds_a_planted_loop_of_every_kind_of_import(tmp_path):
    """A loop closed by a deferred import, an annotation-only import and a relative `from . import a` of a
    submodule is found, named in order; the same package without the loop's annotation-only link passes, though
    its `__init__` imports the module that imports a sibling through the package (no loop: Python imports the
    package before any submodule)."""
    package = tmp_path / "planted"
    package.mkdir()
    files = {
        "__init__.py": "from . import c\n\nVERSION = 1\n",
        "a.py": "def run():\n    from planted.b import helper\n\n    return helper()\n",
        "b.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from planted.c import Thing\n",
        "c.py": "from . import a\n",
        "d.py": "import os\n\nimport planted.a\nfrom planted import VERSION\n",
    }
    for file, text in files.items():
        (package / file).write_text(text)
    graph = _import_graph(tmp_path, "planted", runtime_only=False)
    assert graph["planted.d"] == {"planted", "planted.a"}
    assert _import_cycles(graph) == [["planted.a", "planted.b", "planted.c", "planted.a"]]
    assert _import_cycles(_import_graph(tmp_path, "planted", runtime_only=True)) == []  # the old, runtime-only view
    (package / "b.py").write_text("def helper():\n    return 1\n")
    assert _import_cycles(_import_graph(tmp_path, "planted", runtime_only=False)) == []


def test_the_runtime_import_graph_is_acyclic_and_at_most_five_levels_deep():
    graph = _import_graph()

    @functools.cache
    def chain(name: str, visiting: frozenset = frozenset()) -> tuple[str, ...]:
        assert name not in visiting, f"import cycle through {name}"
        longest: tuple[str, ...] = ()
        for dependency in graph[name]:
            candidate = chain(dependency, visiting | {name})
            longest = max(longest, candidate, key=len)
        return (name, *longest)

    deepest = max((chain(name) for name in graph), key=len)
    assert len(deepest) - 1 <= MAX_IMPORT_DEPTH, " -> ".join(deepest)


def test_library_code_logs_instead_of_printing():
    printing = []
    for name, path in _modules().items():
        if name == "diffnphr.__main__" or name.startswith("diffnphr.cli"):  # the command line's output is its job
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                printing.append(f"{name}:{node.lineno}")
    assert not printing, printing


def test_the_app_imports_only_the_inference_path_serving_and_the_webapp():
    forbidden = ("diffnphr.train", "diffnphr.eval", "diffnphr.bench", "diffnphr.baselines", "diffnphr.data")
    graph = _import_graph()
    reached, frontier = (
        set(),
        {
            node.module
            for node in ast.walk(ast.parse((ROOT / "app.py").read_text()))
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("diffnphr")
        },
    )
    while frontier:
        name = frontier.pop()
        reached.add(name)
        frontier |= graph.get(name, set()) - reached
    assert not [name for name in reached if name.startswith(forbidden)], sorted(reached)


def _imports_gradio(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        else:
            continue
        if any(name == "gradio" or name.startswith("gradio.") for name in names):
            return True
    return False


def test_only_the_webapp_package_imports_gradio():
    """The rules of serving (limits, refusals, file lifetimes) stay testable and reusable without the web framework."""
    importing = sorted(
        name for name, path in _modules().items() if not name.startswith("diffnphr.webapp") and _imports_gradio(path)
    )
    assert not importing, importing
