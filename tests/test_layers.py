"""No import cycle anywhere in ``librorum/``, type-only imports included.

The layer contracts (``[tool.importlinter]`` in pyproject.toml, run by ``make lint``) say which
package may import which; they do not see a cycle inside one package, or one that runs through
a package's ``__init__``. This test looks at every module: each strongly connected component
of the import graph with more than one module is a cycle, and the failure lists each one with
the imports (and their lines) that make it.

Imports under ``if TYPE_CHECKING:`` count: a type checker follows them, and a cycle that only
types close still ties the modules together.
"""

from __future__ import annotations

from collections.abc import Iterable

import grimp


def import_cycles(graph: grimp.ImportGraph, modules: Iterable[str]) -> list[list[str]]:
    """The strongly connected components of more than one module among ``modules``, each
    sorted, in order of their first module (Tarjan's algorithm, iterative)."""
    members = set(modules)
    successors = {
        module: sorted(graph.find_modules_directly_imported_by(module) & members)
        for module in members
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(members):
        if root in index:
            continue
        # Each frame: a module and the position of the next successor to visit.
        work = [(root, 0)]
        while work:
            module, position = work.pop()
            if position == 0:
                index[module] = low[module] = len(index)
                stack.append(module)
                on_stack.add(module)
            for next_position in range(position, len(successors[module])):
                successor = successors[module][next_position]
                if successor not in index:
                    work.append((module, next_position + 1))
                    work.append((successor, 0))
                    break
                if successor in on_stack:
                    low[module] = min(low[module], index[successor])
            else:
                if low[module] == index[module]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == module:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[module])
    return sorted(components)


def describe_cycles(graph: grimp.ImportGraph, cycles: list[list[str]]) -> str:
    """One paragraph per cycle: its modules, then each import between them with its lines."""
    paragraphs = []
    for cycle in cycles:
        lines = [f"cycle between {', '.join(cycle)}:"]
        members = set(cycle)
        for importer in cycle:
            for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
                details = graph.get_import_details(importer=importer, imported=imported)
                where = ", ".join(str(detail["line_number"]) for detail in details)
                lines.append(f"    {importer} -> {imported} (line {where})")
        paragraphs.append("\n".join(lines))
    return "\n".join(paragraphs)


def test_no_import_cycles_in_librorum() -> None:
    graph = grimp.build_graph("librorum", cache_dir=None, exclude_type_checking_imports=False)
    cycles = import_cycles(graph, graph.modules)
    assert not cycles, f"{len(cycles)} import cycle(s) in librorum/:\n" + describe_cycles(
        graph, cycles
    )


def test_cycles_are_found_and_described() -> None:
    graph = grimp.ImportGraph()
    for module in ("pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.e"):
        graph.add_module(module)
    # Two cycles: a -> b -> c -> a (through three modules) and d <-> e; pkg -> a is no cycle.
    for importer, imported, line in [
        ("pkg", "pkg.a", 1),
        ("pkg.a", "pkg.b", 2),
        ("pkg.b", "pkg.c", 3),
        ("pkg.c", "pkg.a", 4),
        ("pkg.d", "pkg.e", 5),
        ("pkg.e", "pkg.d", 6),
    ]:
        graph.add_import(
            importer=importer, imported=imported, line_number=line, line_contents="import"
        )
    cycles = import_cycles(graph, graph.modules)
    assert cycles == [["pkg.a", "pkg.b", "pkg.c"], ["pkg.d", "pkg.e"]]
    assert describe_cycles(graph, cycles) == (
        "cycle between pkg.a, pkg.b, pkg.c:\n"
        "    pkg.a -> pkg.b (line 2)\n"
        "    pkg.b -> pkg.c (line 3)\n"
        "    pkg.c -> pkg.a (line 4)\n"
        "cycle between pkg.d, pkg.e:\n"
        "    pkg.d -> pkg.e (line 5)\n"
        "    pkg.e -> pkg.d (line 6)"
    )


def test_type_only_imports_are_in_the_graph() -> None:
    # librorum/__init__.py imports the client only for type checkers (its names load lazily).
    graph = grimp.build_graph("librorum", cache_dir=None, exclude_type_checking_imports=False)
    assert "librorum.client" in graph.find_modules_directly_imported_by("librorum")
