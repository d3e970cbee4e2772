"""The import rules of docs/architecture.md, read from the source: no circles, layers point one way."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = ("server.auth", "server.avatars", "server.billing", "server.content", "server.credits",
          "server.dashboard", "server.moderation", "server.activity", "server.realtime.outbox",
          "server.realtime.publisher", "server.realtime.events")
ADAPTERS_MAY_USE = ("server.adapters", "server.config", "server.errors", "server.media")


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("server", "jobs", "db"):
        for path in (ROOT / package).rglob("*.py"):
            if "versions" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> tuple[set[str], set[str]]:
    """(project modules, external top names) imported anywhere in the file, TYPE_CHECKING and function bodies included."""
    project: set[str] = set()
    external: set[str] = set()
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            target = _resolve(name)
            if target and target != module:
                project.add(target)
            elif not target:
                external.add(name)
    return project, external


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _circles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in GRAPH:
        if root in index:
            continue
        work = [(root, iter(sorted(GRAPH[root][0])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(GRAPH[child][0]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_checker_sees_imports() -> None:
    assert "server.config" in GRAPH["server.app"][0]
    assert "server.realtime.outbox" in GRAPH["server.realtime.actions"][0]
    assert any(name.startswith("aiohttp") for name in GRAPH["server.app"][1])


def test_no_import_circles_even_behind_type_checking_or_inside_functions() -> None:
    assert _circles() == []


def test_adapters_know_no_domain() -> None:
    wrong = {module: sorted(target for target in imports if not target.startswith(ADAPTERS_MAY_USE))
             for module, (imports, _) in GRAPH.items() if module.startswith("server.adapters")}
    assert {module: targets for module, targets in wrong.items() if targets} == {}


def test_db_imports_neither_server_nor_jobs() -> None:
    wrong = {module: sorted(target for target in imports if not target.startswith("db"))
             for module, (imports, _) in GRAPH.items() if module.startswith("db")}
    assert {module: targets for module, targets in wrong.items() if targets} == {}


def test_only_the_command_line_reaches_from_server_into_jobs() -> None:
    wrong = sorted(module for module, (imports, _) in GRAPH.items()
                   if module.startswith("server") and module != "server.cli"
                   and any(target.startswith("jobs") for target in imports))
    assert wrong == []


def test_domain_logic_knows_no_http_server() -> None:
    # routes.py is the HTTP edge (the rest of server/realtime the socket edge); current_user
    # reads the request's bearer token for it.
    wrong = sorted(module for module, (_, external) in GRAPH.items()
                   if module.startswith(DOMAIN) and not module.endswith((".routes", ".current_user"))
                   and any(name.startswith("aiohttp.web") or name == "aiohttp.web" for name in external))
    assert wrong == []
