"""No import cycles among `dstack.*` modules.

A circle of imports hides which module is the lower one: each side can only be understood,
tested or moved with the other, and a lazy import (inside a function) that closes the circle
merely postpones the question to run time. So every `import` counts here, as it does for the
layering rules: module level or inside a function, absolute or relative, `TYPE_CHECKING`
blocks included. The edges come from tests/test_layering.py's scanner, so both tests read the
source the same way.

A failure prints each cycle as a chain `a -> b [line N] -> ... -> a`, naming the lines to
change.
"""

from __future__ import annotations

from collections import defaultdict, deque

import pytest

from test_layering import EDGES, Edge

# Cycles the code still has, each a frozenset of the modules of one strongly connected
# component, with a comment saying why it is tolerated and what would untie it. The goal is
# an empty set: an entry that no longer matches a cycle of the code fails
# `test_allowed_cycles_still_exist`, so it must be removed when its cycle is gone.
ALLOWED_CYCLES: set[frozenset[str]] = set()

Graph = dict[str, dict[str, Edge]]


def graph_of(edges: list[Edge]) -> Graph:
    """module -> {imported module: the first edge that imports it}; self-imports ignored."""
    graph: Graph = defaultdict(dict)
    for edge in edges:
        if edge.module != edge.imported:
            graph[edge.module].setdefault(edge.imported, edge)
    return graph


def components(graph: Graph) -> list[frozenset[str]]:
    """The strongly connected components with more than one module: each is one or more
    cycles (Tarjan's algorithm, iterative so a deep chain cannot hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    nodes = sorted(set(graph) | {m for targets in graph.values() for m in targets})
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph.get(root, {})))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph.get(nxt, {}))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                members = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.append(member)
                    if member == node:
                        break
                if len(members) > 1:
                    found.append(frozenset(members))
    return found


def cycle_through(graph: Graph, component: frozenset[str]) -> list[Edge]:
    """One concrete cycle inside `component`, as the edges to follow from its first module
    (breadth-first, so the shortest way back)."""
    start = min(component)
    came_from: dict[str, Edge] = {}
    queue = deque([start])
    while start not in came_from:  # strongly connected: the way back exists
        module = queue.popleft()
        for target, edge in sorted(graph.get(module, {}).items()):
            if target in component and target not in came_from:
                came_from[target] = edge
                queue.append(target)
    chain = [came_from[start]]
    while chain[-1].module != start:
        chain.append(came_from[chain[-1].module])
    return chain[::-1]


def describe(graph: Graph, component: frozenset[str]) -> str:
    chain = cycle_through(graph, component)
    steps = [chain[0].module] + [
        f"{e.imported}{' (lazy)' if e.lazy else ''} [line {e.lineno}]" for e in chain
    ]
    others = sorted(component - {e.module for e in chain})
    tail = f"\n    (same circle: {', '.join(others)})" if others else ""
    return "  " + "\n    -> ".join(steps) + tail


GRAPH = graph_of(EDGES)
CYCLES = components(GRAPH)


def test_no_import_cycles() -> None:
    print(f"allowed cycles ({len(ALLOWED_CYCLES)}):")
    for allowed in sorted(ALLOWED_CYCLES, key=sorted):
        print("  " + ", ".join(sorted(allowed)))
    new = [c for c in CYCLES if c not in ALLOWED_CYCLES]
    assert not new, "import cycles among dstack modules:\n" + "\n".join(
        describe(GRAPH, c) for c in sorted(new, key=sorted)
    )


def test_allowed_cycles_still_exist() -> None:
    """An allowed cycle that the code no longer has must leave ALLOWED_CYCLES."""
    gone = ALLOWED_CYCLES - set(CYCLES)
    assert not gone, [sorted(c) for c in gone]


# -- the detector itself ----------------------------------------------------------------------


def edges(*pairs: str, lazy: bool = False) -> list[Edge]:
    return [Edge(a, b, n, lazy) for n, pair in enumerate(pairs, 1) for a, b in [pair.split()]]


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        (("a b", "b c"), []),  # a chain
        (("a a",), []),  # a module importing itself is no cycle
        (("a b", "b a"), [{"a", "b"}]),
        (("a b", "b c", "c a", "c d"), [{"a", "b", "c"}]),
        (("a b", "b a", "c d", "d c", "b c"), [{"a", "b"}, {"c", "d"}]),
        (("a b", "b c", "c b", "c a"), [{"a", "b", "c"}]),  # two circles sharing b, c
    ],
)
def test_components(pairs: tuple[str, ...], expected: list[set[str]]) -> None:
    found = components(graph_of(edges(*pairs)))
    assert sorted(map(sorted, found)) == sorted(map(sorted, expected))


def test_a_lazy_import_closes_a_cycle_too() -> None:
    graph = graph_of(edges("m.a m.b") + edges("m.b m.a", lazy=True))
    (cycle,) = components(graph)
    text = describe(graph, cycle)
    assert text == "  m.a\n    -> m.b [line 1]\n    -> m.a (lazy) [line 1]"


def test_the_shortest_way_back_is_shown() -> None:
    graph = graph_of(edges("a b", "b c", "c a", "b a", "c d", "d c"))
    (cycle,) = components(graph)
    assert [e.imported for e in cycle_through(graph, cycle)] == ["b", "a"]
    assert "same circle: c, d" in describe(graph, cycle)


def test_a_deep_chain_does_not_recurse() -> None:
    n = 5000
    chain = [f"m{i} m{i + 1}" for i in range(n)] + [f"m{n} m0"]
    (cycle,) = components(graph_of(edges(*chain)))
    assert len(cycle) == n + 1
