"""The layout's rules, checked on the source: routes reach services only through `deps.py`, SQL
stays in `db/`, no module imports another's private names, and the service's own code reads time
from the injectable clock."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import midori_preview

SRC = Path(midori_preview.__file__).parent


def modules(*under: str) -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        name = path.relative_to(SRC).as_posix()
        if not under or name.startswith(under):
            yield name, ast.parse(path.read_text(encoding="utf-8"))


def attribute_chains(tree: ast.Module) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts = [node.attr]
            value = node.value
            while isinstance(value, ast.Attribute):
                parts.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name):
                yield ".".join([value.id, *reversed(parts)])


def imports(tree: ast.Module) -> Iterator[tuple[str, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ""


def test_no_routes_module_touches_app_state() -> None:
    found = [
        name
        for name, tree in modules()
        if name.endswith(("routes.py", "_routes.py"))
        and any("app.state" in chain for chain in attribute_chains(tree))
    ]
    assert found == []


def test_sql_stays_in_db() -> None:
    """Only `db/` speaks SQLAlchemy (the composition root names the engine's type)."""
    found = {
        name
        for name, tree in modules()
        if not name.startswith("db/")
        and any(module.split(".")[0] == "sqlalchemy" for module, _ in imports(tree))
    }
    assert found == {"bootstrap.py"}


def test_no_module_imports_another_modules_private_names() -> None:
    found = [
        f"{name}: {module}.{what}"
        for name, tree in modules()
        for module, what in imports(tree)
        if module.startswith("midori_preview") and what.startswith("_")
    ]
    assert found == []


def test_the_services_read_time_from_the_clock() -> None:
    """The lifecycle, the repositories, the GitHub service and the app's wiring take a `Clock`."""
    wall = {"datetime.now", "datetime.utcnow", "time.time", "time.monotonic", "time.perf_counter"}
    owned = [
        (name, tree)
        for name, tree in modules()
        if name.startswith(("previews/", "db/")) or name == "github/service.py" or "/" not in name
    ]
    found = [
        f"{name}: {chain}"
        for name, tree in owned
        if name not in ("clock.py", "bench.py")
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for chain in attribute_chains(ast.Module(body=[ast.Expr(node.func)], type_ignores=[]))
        if chain in wall
    ]
    assert found == []


def test_no_function_is_longer_than_80_lines() -> None:
    found = [
        f"{name}: {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for name, tree in modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > 80
    ]
    assert found == []


def test_sandbox_states_are_spelled_in_few_modules() -> None:
    """A state's name as a string literal (not an envelope's `"error"` key, not an error code)
    appears only in the state table, the provider port's own states and GitHub's preview states."""
    from midori_preview.previews.states import SandboxStatus

    names = {s.value for s in SandboxStatus}
    found: set[str] = set()
    for name, tree in modules():
        keys = (
            {id(key) for node in ast.walk(tree) if isinstance(node, ast.Dict) for key in node.keys}
            | {id(node.slice) for node in ast.walk(tree) if isinstance(node, ast.Subscript)}
            | {  # an error class's `code` is an error code, not a state
                id(node.value)
                for node in ast.walk(tree)
                if isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "code" for t in node.targets)
            }
        )
        if any(
            isinstance(node, ast.Constant) and node.value in names and id(node) not in keys
            for node in ast.walk(tree)
        ):
            found.add(name)
    assert len(found) <= 3, sorted(found)


def test_no_module_is_longer_than_450_lines() -> None:
    found = [
        f"{path.relative_to(SRC).as_posix()} ({n} lines)"
        for path in sorted(SRC.rglob("*.py"))
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 450
    ]
    assert found == []
