"""The package directions of DESIGN.md's layout table, and no import cycles, read from the source.

Every import statement counts, wherever it sits: module level, inside a function, or under
TYPE_CHECKING. A local import may keep a heavy library or a CLI sub-command off the start-up
path; it may not hide a cycle or a forbidden direction.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("ferry", "exporters", "optimizers", "server", "monitoring", "measure")

# package -> what its modules may import from the project (a module or any module below it)
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "ferry": PACKAGES,
    "exporters": ("exporters", "server.repository_format", "monitoring"),
    "optimizers": (
        "optimizers",
        "server.repository_format",
        "server.runtimes",
        "measure.charts",  # optimize_report.html's chart and page
        "measure.html_page",
    ),
    "server": ("server", "monitoring.observer"),
    "monitoring": ("monitoring",),
    # a client: the sweep edits configs; the gRPC client shares the HTTP/2 frame layout
    "measure": ("measure", "server.repository_format", "server.protocol.grpc_wire.frames"),
}
# the composition root wires the concrete monitors in
EXTRA_FOR_MODULE: dict[str, tuple[str, ...]] = {"server.app": ("monitoring",)}
TRANSPORTS = "server.protocol"
# modules of server/ that may import the transports: the transports themselves and app wiring
MAY_IMPORT_TRANSPORTS = ("server.protocol", "server.app")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """Every module of the six packages, by dotted name."""
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    }


def _is_project(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def imported_modules(module: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(imported project module, line) for every import statement in the file."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_project(alias.name):
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            if not _is_project(base):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield (submodule if submodule in known else base), node.lineno


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported project module: first line}."""
    modules = project_modules()
    known = set(modules)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in imported_modules(module, path, known):
            if target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def direction_violations(graph: dict[str, dict[str, int]]) -> list[str]:
    """Imports against DESIGN.md's layout table, as 'module:line imports target'."""
    problems = []
    for module, edges in sorted(graph.items()):
        package = module.split(".")[0]
        allowed = MAY_IMPORT[package] + EXTRA_FOR_MODULE.get(module, ())
        for target, line in sorted(edges.items()):
            if not _within(target, allowed):
                problems.append(f"{module}:{line} imports {target}")
            elif (
                package == "server"
                and _within(target, (TRANSPORTS,))
                and not _within(module, MAY_IMPORT_TRANSPORTS)
            ):
                problems.append(f"{module}:{line} imports the transport {target}")
    return problems


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                lowlink[node] = min(lowlink[node], lowlink[target])
            elif target in on_stack:
                lowlink[node] = min(lowlink[node], index[target])
        if lowlink[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_packages_import_only_what_the_layout_allows() -> None:
    assert direction_violations(import_graph()) == []


def test_modules_form_a_dag() -> None:
    assert cycles(import_graph()) == []


def test_every_module_is_seen() -> None:
    graph = import_graph()
    assert {"server.app", "server.protocol.http", "monitoring.metrics", "ferry.cli"} <= set(graph)
    # local and TYPE_CHECKING imports are edges too
    assert "server.app" in graph["server.cli"]
    assert "monitoring.composition" in graph["monitoring"]


@pytest.mark.parametrize(
    "graph,expected",
    [
        ({"server.a": {"ferry": 3}}, ["server.a:3 imports ferry"]),
        (
            {"server.dataplane": {"server.protocol.http": 9}},
            ["server.dataplane:9 imports the transport server.protocol.http"],
        ),
        ({"server.protocol.http": {"server.dataplane": 1}}, []),
        (
            {"server.model": {"monitoring.metrics": 2}},
            ["server.model:2 imports monitoring.metrics"],
        ),
        ({"server.model": {"monitoring.observer": 2}}, []),
        ({"server.app": {"monitoring": 2}}, []),
        ({"monitoring.drift": {"server.types": 5}}, ["monitoring.drift:5 imports server.types"]),
        ({"exporters.specs": {"server.types": 1}}, ["exporters.specs:1 imports server.types"]),
        ({"optimizers.variants": {"server.runtimes.tensorrt": 1}}, []),
        ({"optimizers.report_html": {"measure.charts": 1}}, []),
        (
            {"optimizers.pipeline": {"measure.load": 1}},
            ["optimizers.pipeline:1 imports measure.load"],
        ),
        ({"measure.grpc_client": {"server.protocol.grpc_wire.frames": 1}}, []),
        ({"measure.load": {"server.dataplane": 1}}, ["measure.load:1 imports server.dataplane"]),
        (
            {"optimizers.variants": {"exporters.cli": 1}},
            ["optimizers.variants:1 imports exporters.cli"],
        ),
    ],
)
def test_direction_rules(graph: dict[str, dict[str, int]], expected: list[str]) -> None:
    assert direction_violations(graph) == expected


def test_cycle_detection() -> None:
    graph = {"a.x": {"a.y": 1}, "a.y": {"a.z": 1}, "a.z": {"a.x": 1}, "a.w": {"a.x": 1}}
    assert cycles(graph) == [["a.x", "a.y", "a.z"]]
    assert cycles({"a.x": {"a.y": 1}, "a.y": {}}) == []
