"""The package's layers point one way: no import cycle, and no import against the layering.

Every ``import`` statement of every module counts, wherever it stands: at module level, inside
a function, under ``if TYPE_CHECKING``. An import deferred into a function still ties the two
modules together (the layer below knows the layer above) and only moves the failure from import
time to call time, so it does not make a cycle acceptable. Packages count as the modules their
``__init__`` is; the import of a package that a submodule's import runs implicitly is not an
edge (every submodule would otherwise form a cycle with a package that re-exports it).
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Iterable
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Installed names of the source folders (pyproject's package-dir mapping).
SOURCE_PACKAGES = {
    "sgl_betty": ROOT / "sgl_betty",
    "sgl_betty.engine": ROOT / "engine",
    "sgl_betty.problems": ROOT / "problems",
}


def module_files() -> dict[str, Path]:
    """Every module of the source folders, by its installed dotted name."""
    modules = {}
    for package, folder in SOURCE_PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def imported_names(module: str, path: Path, modules: Iterable[str] = ()) -> set[str]:
    """The dotted names ``module`` imports, relative imports resolved.

    ``from a import b`` imports the module ``a.b`` when ``modules`` holds it (the package ``a``
    is then only its parent), else the name ``b`` out of the module ``a``.
    """
    modules = set(modules)
    is_package = path.name == "__init__.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                names.add(submodule if submodule in modules else base)
    return names


def import_graph() -> nx.DiGraph:
    """Module -> module it imports, over the project's own modules."""
    modules = module_files()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for module, path in modules.items():
        for name in imported_names(module, path, modules):
            if name in modules and name != module:
                graph.add_edge(module, name)
    return graph


def cycles(graph: nx.DiGraph) -> list[str]:
    """One cycle per strongly connected group of modules, as ``a -> b -> a``, plus the group."""
    found = []
    for group in nx.strongly_connected_components(graph):
        if len(group) < 2:
            continue
        edges = nx.find_cycle(graph.subgraph(group))
        path = " -> ".join([edges[0][0], *(target for _, target in edges)])
        found.append(f"{path} (modules in this knot: {', '.join(sorted(group))})")
    return sorted(found)


def test_module_names_follow_the_installed_layout():
    modules = module_files()
    assert {"sgl_betty", "sgl_betty.engine.build", "sgl_betty.problems.w_stage"} <= set(modules)
    assert "engine.build" not in modules


def test_relative_imports_resolve_to_the_installed_names(tmp_path):
    package_init = tmp_path / "__init__.py"
    package_init.write_text("from .build import x\nfrom . import solvers\n")
    module = tmp_path / "build.py"
    module.write_text(
        "import torch\n"
        "def f():\n"
        "    from ..config import SGLConfig\n"
        "    from .batches import SharedBatches\n"
    )
    modules = {"sgl_betty.engine", "sgl_betty.engine.build", "sgl_betty.engine.solvers"}
    assert imported_names("sgl_betty.engine", package_init, modules) == {
        "sgl_betty.engine.build",
        "sgl_betty.engine.solvers",
    }
    names = imported_names("sgl_betty.engine.build", module, modules)
    assert names == {"torch", "sgl_betty.config", "sgl_betty.engine.batches"}


def test_a_cycle_is_reported_by_name():
    graph = nx.DiGraph([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])
    (reported,) = cycles(graph)
    assert reported.startswith(("a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c"))
    assert reported.endswith("(modules in this knot: a, b, c)")


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(found)


# The recipes import each other as top-level modules (benchmarks/ on sys.path): `from recipe import`.
BENCHMARK_MODULES = ("benchmarks", *(path.stem for path in (ROOT / "benchmarks").glob("*.py")))


def within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("sgl_betty.engine", ("sgl_betty.experiment",)),
        ("sgl_betty.problems", ("sgl_betty.experiment",)),
        ("sgl_betty", BENCHMARK_MODULES),
    ],
)
def test_lower_layers_do_not_import_upper_ones(layer, forbidden):
    offending = sorted(
        f"{module} imports {name}"
        for module, path in module_files().items()
        if within(module, (layer,))
        for name in imported_names(module, path)
        if within(name, forbidden)
    )
    assert not offending, "\n".join(offending)


# Exceptions that stay beside the code that raises them, and why.
LOCAL_EXCEPTIONS = {
    # Caught inside the comparison and reported as a "skipping <folder>: <why>" line.
    "sgl_betty.tracking.compare.NotARunFolder",
    # The search's and the evaluation's RunInterrupted, each with its own resume command.
    "sgl_betty.experiment.search.SearchInterrupted",
    "sgl_betty.experiment.evaluate.EvaluationInterrupted",
}


def exception_classes(module: str, path: Path, known: set[str]) -> set[str]:
    """The classes ``module`` defines whose bases are exceptions (a builtin one or a class of
    ``known``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.ClassDef):
            continue
        bases = {
            base.id if isinstance(base, ast.Name) else ast.unparse(base) for base in node.bases
        }
        builtin = {name for name in bases if isinstance(getattr(builtins, name, None), type)}
        if any(issubclass(getattr(builtins, name), BaseException) for name in builtin) or (
            bases & known
        ):
            found.add(node.name)
    return found


def test_every_user_facing_error_class_is_defined_in_errors():
    modules = module_files()
    known = exception_classes("sgl_betty.errors", modules["sgl_betty.errors"], set())
    assert {"UserError", "ConfigError", "NonFiniteError", "RunInterrupted"} <= known
    elsewhere = sorted(
        f"{module}.{name}"
        for module, path in modules.items()
        if module != "sgl_betty.errors"
        for name in exception_classes(module, path, known)
        if f"{module}.{name}" not in LOCAL_EXCEPTIONS
    )
    assert not elsewhere, "define these in sgl_betty/errors.py:\n" + "\n".join(elsewhere)


# The process-level settings that only sgl_betty.runtime makes (the search, the evaluation and
# the engine ask it): joining the process group and reading the torchrun environment.
RUNTIME_ONLY = {"init_process_group", "WORLD_SIZE"}


def runtime_uses(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    names |= {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    return (names & RUNTIME_ONLY) | (functions & {"launched_distributed", "init_distributed"})


def test_only_the_runtime_joins_processes():
    assert runtime_uses(ROOT / "sgl_betty" / "runtime.py") >= {
        "init_process_group",
        "WORLD_SIZE",
        "launched_distributed",
    }
    elsewhere = sorted(
        f"{module}: {', '.join(sorted(uses))}"
        for module, path in module_files().items()
        if module != "sgl_betty.runtime" and (uses := runtime_uses(path))
    )
    assert not elsewhere, "ask sgl_betty.runtime instead:\n" + "\n".join(elsewhere)
