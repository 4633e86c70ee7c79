"""The layout holds what docs/ARCHITECTURE.md promises: small modules, a shallow import graph, library code
that logs instead of printing, and an app that imports only the inference path."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "diffnphr"
MAX_LINES = 400
MAX_IMPORT_DEPTH = 5
# Modules allowed past MAX_LINES, and why (docs/ARCHITECTURE.md repeats these).
LONG_MODULES = {
    "diffnphr.__main__": "the argparse tree of every subcommand and nothing else",
    "diffnphr.data.ict_convert": "one converter from the ICT-FaceKit repository's OBJ files to the archive",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _runtime_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """diffnphr modules a module imports when it is imported: its top-level imports, not those under
    `if TYPE_CHECKING:` (annotations only) nor inside functions (deliberately deferred)."""
    found = set()
    for node in _top_level(ast.parse(path.read_text()).body):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def _top_level(statements: list[ast.stmt]) -> list[ast.stmt]:
    flat = []
    for statement in statements:
        if isinstance(statement, ast.If) and "TYPE_CHECKING" in ast.unparse(statement.test):
            continue
        if isinstance(statement, ast.Try | ast.If):
            flat += _top_level(statement.body + statement.orelse + getattr(statement, "finalbody", []))
        else:
            flat.append(statement)
    return flat


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _runtime_imports(path, modules) - {name} for name, path in modules.items()}


def test_modules_stay_small_or_say_why():
    too_long = {
        name: len(path.read_text().splitlines())
        for name, path in _modules().items()
        if len(path.read_text().splitlines()) > MAX_LINES and name not in LONG_MODULES
    }
    assert not too_long, f"modules over {MAX_LINES} lines without a stated reason: {too_long}"


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
        if name == "diffnphr.__main__":  # the command line's output is its job
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
