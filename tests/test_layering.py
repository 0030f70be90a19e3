"""The package's import graph: no import circle between modules, and every import points down the layers
`isp` <- `data`/`tasks` <- `envs` <- `policy` <- `runs` <- `trained` <- `train` <- `experiments` <- `cli`.
Imports inside functions and under `if TYPE_CHECKING:` count: a lazy or type-checking-only import hides a
circle, it does not remove it."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from conftest import REPO

LAYERS = {  # subpackage (or top-level module) of posisp_dist, and `envs` -> its layer; imports go down or level
    "isp": 0, "paths": 0, "config_base": 0, "ray_private": 0,
    "config": 1, "task_config": 1, "methods": 1, "data": 1, "tasks": 1, "cache": 1,
    "envs": 2, "baselines": 2,
    "policy": 3,
    "runs": 4, "cluster": 4,  # a run's records: tracking, checkpoints, leases, signals, provenance
    "trained": 5,  # using a trained policy: inference, evaluation, reports, apply
    "train": 6, "benchmarks": 6,  # training on Ray RLlib
    "experiments": 7,  # runs of methods over seeds and budgets
    "cli": 8, "commands": 8, "__main__": 9,  # `posisp_dist` itself and `python -m posisp_dist`
}


def modules() -> dict[str, Path]:
    found = {}
    for base in ("posisp_dist", "envs"):
        for path in (REPO / base).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its body."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [resolve(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [resolve(f"{node.module}.{a.name}") for a in node.names]
            else:
                continue
            graph[mod] |= {t for t in targets if t and t != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        comp.append(top)
                        if top == node:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def layer(mod: str) -> tuple[str, int]:
    parts = mod.split(".")
    key = "envs" if parts[0] == "envs" else (parts[1] if len(parts) > 1 else "__main__")
    return key, LAYERS[key]


def test_no_import_circle_between_modules():
    graph = import_graph(modules())
    assert cycles(graph) == [], "import circles (lazy imports included)"


def test_imports_point_down_the_layers():
    mods = modules()
    parts = [m.split(".") for m in mods]
    unknown = {p[1] for p in parts if p[0] == "posisp_dist" and len(p) > 1 and p[1] not in LAYERS}
    assert not unknown, f"give these a layer in LAYERS: {sorted(unknown)}"
    upward = [
        f"{a} -> {b}"
        for a, targets in sorted(import_graph(mods).items())
        for b in sorted(targets)
        if layer(b)[1] > layer(a)[1]
    ]
    assert upward == []


def test_the_cycle_finder_finds_a_lazy_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
