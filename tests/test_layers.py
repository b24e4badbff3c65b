"""The package's layers: every module imports only from its own layer or the ones below, and no import
cycle exists, counting the imports inside functions too (a lazy import is still a dependency). Imports
under ``if TYPE_CHECKING:`` are annotations only and do not count.

The layers, lowest first, are :data:`LAYERS` (the README's "Layout" names each); a module's layer is
its first package under ``fbloop``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "fbloop"

LAYERS: list[tuple[str, ...]] = [
    ("errors", "seeding", "sparse", "metrics", "cache", "records", "render", "prompts"),  # the base
    ("targets",),
    ("queries",),
    ("learners",),
    ("store",),
    ("agents",),
    ("loop", "app"),
    ("cli", "__main__"),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every ``fbloop`` module ``path`` imports, anywhere in the file, as absolute names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "fbloop"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "fbloop":
                module = node.module
            else:
                continue
            for alias in node.names:  # `from pkg import submodule` depends on the submodule
                sub = f"{module}.{alias.name}"
                out.add(sub if _exists(sub) else module)
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                todo.extend(child.orelse)
            else:
                todo.append(child)


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").exists() or (ROOT / rel / "__init__.py").exists()


def graph() -> dict[str, set[str]]:
    return {module_name(f): imports(f) for f in sorted(ROOT.rglob("*.py"))}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return RANK.get(parts[1]) if len(parts) > 1 else None  # the root package is a lazy facade over all


def violations(edges: dict[str, set[str]]) -> list[str]:
    out = []
    for src, targets in edges.items():
        for dst in targets:
            if layer(src) is not None and layer(dst) is not None and layer(dst) > layer(src):
                out.append(f"{src} imports {dst} from a layer above its own")
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    top = {m.split(".")[1] for m in graph() if m != "fbloop"}
    assert top <= set(RANK), f"modules with no layer: {sorted(top - set(RANK))}; add them to LAYERS and the README"


def test_no_module_imports_from_a_layer_above():
    assert violations(graph()) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_checks_catch_what_they_look_for():
    """The checks themselves: a made-up upward import and a made-up cycle are both found."""
    edges = {"fbloop.store.core": {"fbloop.agents.pool"}, "fbloop.agents.pool": {"fbloop.store.core"}}
    assert violations(edges) == ["fbloop.store.core imports fbloop.agents.pool from a layer above its own"]
    assert cycles(edges) == [["fbloop.agents.pool", "fbloop.store.core"]]


@pytest.mark.parametrize("layer_names", LAYERS)
def test_the_readme_lists_each_layer(layer_names):
    readme = (ROOT.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    for name in layer_names:
        if name != "__main__":
            assert re.search(rf"^\s+{name}(\.py|/)\s", section, re.M), f"README's Layout does not list {name!r}"


# ---------------------------------------------------------------- the loop knows no agent by type

LOOP = ROOT / "loop"
MAX_LINES = 60


def agent_classes() -> set[str]:
    """Every class under fbloop/agents that answers or asks (has ``answer``, ``ask`` or ``collect``)."""
    out = set()
    for f in (ROOT / "agents").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and {m.name for m in node.body if isinstance(m, ast.FunctionDef)} \
                    & {"answer", "ask", "collect"}:
                out.add(node.name)
    return out


def type_checks(path: Path, classes: set[str]) -> list[str]:
    """``isinstance`` on an agent class, and ``hasattr`` / ``getattr`` on an agent, in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        if node.func.id == "isinstance" and len(node.args) == 2:
            named = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
            named |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
            if named & classes:
                out.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
        elif node.func.id in ("hasattr", "getattr") and node.args:
            subject = ast.unparse(node.args[0]).lower()
            if any(word in subject for word in ("agent", "pool", "member", "people", "asker")):
                out.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return out


def long_functions(path: Path, limit: int = MAX_LINES) -> list[str]:
    return [f"{path.name}:{n.lineno} {n.name}: {n.end_lineno - n.lineno + 1} lines"
            for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > limit]


def test_the_loop_asks_no_agent_its_type():
    classes = agent_classes()
    assert {"OracleAgent", "LLMAgent", "AgentPool", "People", "BisectionAgent", "BasisView"} <= classes
    assert [hit for f in sorted(LOOP.glob("*.py")) for hit in type_checks(f, classes)] == []


def test_no_function_in_the_loop_is_longer_than_60_lines():
    assert [hit for f in sorted(LOOP.glob("*.py")) for hit in long_functions(f)] == []


def test_the_shape_checks_catch_what_they_look_for(tmp_path):
    bad = tmp_path / "bad.py"
    body = "\n".join(f"    x = {i}" for i in range(MAX_LINES))
    bad.write_text("def f(agent, pool):\n    if isinstance(agent, AgentPool) or hasattr(pool, 'agents'):\n"
                   f"        pass\n{body}\n", encoding="utf-8")
    assert len(type_checks(bad, {"AgentPool"})) == 2
    assert long_functions(bad) == [f"bad.py:1 f: {MAX_LINES + 3} lines"]


def test_every_path_the_docs_name_exists():
    """A module moved without its mentions leaves readers at a dead end."""
    docs = [ROOT.parent / name for name in ("README.md", "prompts/README.md", "benchmarks/README.md")]
    named = {m for doc in docs for m in re.findall(r"fbloop/[A-Za-z_/]+(?:\.py|/)", doc.read_text(encoding="utf-8"))}
    assert named and sorted(m for m in named if not (ROOT.parent / m).exists()) == []
