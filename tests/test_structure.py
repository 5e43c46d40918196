"""The package's shape: no function longer than a reader can hold in view."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# sgl_betty and the two folders installed as its subpackages (sgl_betty.engine, sgl_betty.problems).
PACKAGES = [ROOT / "sgl_betty", ROOT / "engine", ROOT / "problems"]
MAX_FUNCTION_LINES = 80


def long_functions(root: Path, limit: int) -> list[str]:
    """``path:line name (n lines)`` of every function or method under ``root`` longer than
    ``limit`` lines, decorators and docstring included."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = node.end_lineno - start + 1
                if lines > limit:
                    where = path.relative_to(root.parent)
                    found.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_in_the_package_is_longer_than_80_lines():
    too_long = [f for package in PACKAGES for f in long_functions(package, MAX_FUNCTION_LINES)]
    assert not too_long, f"split these functions (at most {MAX_FUNCTION_LINES} lines): " + (
        "; ".join(too_long)
    )


def test_the_walk_names_a_long_function(tmp_path):
    # The check itself: a 90-line function is named, an 80-line one is not.
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(88))
    (package / "long.py").write_text(f"def too_long():\n{body}\n    return 0\n")
    short = "\n".join(f"    y{i} = {i}" for i in range(78))
    (package / "short.py").write_text(f"def fits():\n{short}\n    return 0\n")
    assert long_functions(package, MAX_FUNCTION_LINES) == ["pkg/long.py:1 too_long (90 lines)"]
