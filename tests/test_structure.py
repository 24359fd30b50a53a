"""The package's structure: no import cycles, behaviour in process and schedule objects
rather than in branches on their kind, and one place that calls the network."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "thermodiff"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at module level or inside functions."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # "from . import x" may name a submodule.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_no_import_cycles():
    graph = import_graph()
    assert "thermodiff.model" in graph and "thermodiff.processes" in graph["thermodiff.model"]
    assert cycles(graph) == []


def _lines(pattern: str, exclude: tuple[str, ...]) -> list[str]:
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent.parent).as_posix()
        if rel.startswith(exclude):
            continue
        hits += [f"{rel}:{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(pattern, line)]
    return hits


def test_few_branches_on_the_process_kind_or_the_kind_of_time():
    """At most 5 each outside the process and schedule modules (the features ask the
    process's ``supports`` and the schedule's methods instead). Asking whether the data
    are bits (``process.binary``) counts as a branch on the process kind."""
    process = _lines(r"\.binomial\b|process *== *.binomial.|process *== *.gaussian.|logits is not None|"
                     r"process\.name *[!=]=|process\.binary\b", ("src/thermodiff/processes/",))
    time = _lines(r"\.continuous\b|\.discrete\b", ("src/thermodiff/processes/", "src/thermodiff/schedules"))
    assert len(process) <= 5, "\n".join(process)
    assert len(time) <= 5, "\n".join(time)


def test_the_network_is_called_in_one_place():
    """Only DiffusionModel.forward calls the network; only predict interprets its output."""
    assert _lines(r"\bself\.net\(|\bmodel\.net\(", ("src/thermodiff/model.py",)) == []
    assert _lines(r"(?<![\w.])model\((?!\s*\))", ("src/thermodiff/model.py",)) == []
