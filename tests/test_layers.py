"""The layers of docs/ARCHITECTURE.md hold: read every module's imports (ast) and check the edges.

Imports inside functions count too, and "reach" follows imports through other modules. The check
was shown to fail by adding ``from pipeline.demo import run_demo`` to ``pipeline/stages/report.py``
(``stages`` reaches ``demo``) and ``from pipeline.sinks.base import Outcome`` back to
``pipeline/ledger/transitions.py`` (the ledger imports a sink); ``test_an_added_forbidden_import_is_caught``
does the same on a copy of the graph so the checker itself is kept honest.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"

# the part each module belongs to: its first name under pipeline/, with the CLI-side modules as one
CLI_SIDE = {"cli", "cli_bench", "run_commands", "check_commands", "problem_commands", "__main__"}
EDGES_ONLY_FOR_TOOLS = {"sandbox", "demo", "benchmarks", "cli", "testing", "samplegen"}
PRODUCTION = {"core", "sources", "sinks", "ledger", "stages", "runner", "scheduling", "reports", "alerts",
              "expected", "locks", "config", "logs", "records", "errors", "checkout_codec", "csvsafe",
              "progress", "report_page", "problems", "health", "pg_locks", "scope_locks"}
# (part, parts it must not import directly)
FORBIDDEN_DIRECT = {
    "core": {"sources", "sinks", "ledger", "stages", "runner", "scheduling", "reports", "alerts", "locks",
             "expected", "progress", "problems", "health", "pg_locks", "scope_locks"},
    "problems": {"sources", "sinks", "ledger", "stages", "runner", "scheduling", "alerts", "health"},
    "sources": {"sinks", "ledger", "stages", "runner", "scheduling", "reports"},
    "sinks": {"sources", "ledger", "stages", "runner", "scheduling", "reports"},
    "ledger": {"sinks", "sources", "stages", "runner", "scheduling"},
    "records": {"sinks", "sources", "ledger", "stages", "runner"},
    "logs": {"config"},
}


def part_of(module: str) -> str:
    """``pipeline.sinks.antavo`` -> ``sinks``; the CLI-side modules are all ``cli``."""
    first = module.split(".")[1] if "." in module else "pipeline"
    return "cli" if first in CLI_SIDE else first


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports (anywhere in its code)."""
    def module_name(path: Path) -> str:
        parts = path.relative_to(package).with_suffix("").parts
        return ".".join(("pipeline", *parts)).removesuffix(".__init__")

    modules = {module_name(path) for path in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        name = module_name(path)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names
                          if f"{node.module}.{alias.name}" in modules}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _reach(graph: Mapping[str, set[str]], start: str) -> dict[str, str]:
    """Every module reachable from ``start``, each with the module it was reached through."""
    via: dict[str, str] = {}
    todo = [start]
    while todo:
        current = todo.pop()
        for nxt in graph.get(current, ()):
            if nxt not in via and nxt != start:
                via[nxt] = current
                todo.append(nxt)
    return via


def violations(graph: Mapping[str, set[str]]) -> list[str]:
    """Every forbidden edge and every production module that reaches a tool, as readable lines."""
    found = []
    for module, imports in sorted(graph.items()):
        banned = FORBIDDEN_DIRECT.get(part_of(module), set())
        found += [f"{module} imports {target}" for target in sorted(imports) if part_of(target) in banned]
        if part_of(module) in PRODUCTION:
            via = _reach(graph, module)
            for target in sorted(via):
                if part_of(target) in EDGES_ONLY_FOR_TOOLS:
                    chain = [target]
                    while chain[-1] in via:
                        chain.append(via[chain[-1]])
                    found.append(f"{module} reaches {target} ({' <- '.join(chain)})")
    return found


def test_the_layers_hold() -> None:
    problems = violations(import_graph())
    assert not problems, "forbidden imports (see docs/ARCHITECTURE.md):\n" + "\n".join(problems)


def test_an_added_forbidden_import_is_caught() -> None:
    graph = import_graph()
    graph["pipeline.stages.report"] = graph["pipeline.stages.report"] | {"pipeline.demo"}
    graph["pipeline.ledger.transitions"] = graph["pipeline.ledger.transitions"] | {"pipeline.sinks.base"}

    problems = violations(graph)

    assert "pipeline.ledger.transitions imports pipeline.sinks.base" in problems
    assert any(line.startswith("pipeline.stages.report reaches pipeline.demo") for line in problems)
    # and through the stages, whatever imports them
    assert any(line.startswith("pipeline.runner reaches pipeline.demo") for line in problems)


def test_the_graph_sees_imports_inside_functions() -> None:
    assert "pipeline.demo" in import_graph()["pipeline.run_commands"]  # imported in demo_command()


def test_only_the_ledger_connection_knows_it_is_sqlite() -> None:
    """Every ledger statement goes through the ``Db`` seam; only ``connection.py`` imports sqlite3."""
    knowing = set()
    for path in sorted((PACKAGE / "ledger").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] == "sqlite3" for name in names):
                knowing.add(path.name)
    assert knowing == {"connection.py"}
