"""The package's layers (docs/layout.md): imports run one way, no module imports itself back through others, and an
import inside a function is a deliberate lazy one (a comment on its line says why). An AST walk, so the rule holds
for imports that never run in the tests too."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top. A layer may import the layers listed for it (and itself), nothing else of the project.
LAYERS = {
    "core": set(),                                       # files, seeding, gates: nothing of the project
    "tasks": {"core"},
    "runtime": {"core", "tasks"},                        # engines, trainers, dist, models, evaluation
    "algorithms": {"core", "tasks", "runtime"},
    "config": {"core", "tasks", "algorithms"},           # the YAML schema, validated against the registries
    "train": {"core", "tasks", "runtime", "algorithms", "config"},
    "launch": {"core", "config", "train", "reporting"},  # train: the run's entry point (`execute`) in the job
    "reporting": {"core"},                               # reads files only, never training code
    "analysis": {"core", "tasks", "runtime", "algorithms", "config", "train", "reporting"},
    "entry": {"core", "tasks", "runtime", "algorithms", "config", "train", "launch", "reporting", "analysis"},
}
ENTRY = {"sweep", "run", "plot", "check", "analyze", "evaluate", "export"}   # `python -m harness.X`: thin modules


def layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "algorithms":
        return "algorithms"
    if parts[0] != "harness" or len(parts) == 1:
        return None
    if parts[1] in ENTRY and len(parts) == 2:
        return "entry"
    return parts[1] if parts[1] in LAYERS else None


def modules() -> dict[str, Path]:
    out = {}
    for top in ("harness", "algorithms"):
        for f in sorted((ROOT / top).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(path: Path, package: str, mods: dict[str, Path]) -> list[tuple[str, int, bool, str]]:
    """(imported project name, line, inside a function?, the source line); `from pkg import mod` names pkg.mod."""
    src = path.read_text()
    lines, tree, out = src.splitlines(), ast.parse(src), []

    def visit(node, in_func: bool):
        for child in ast.iter_child_nodes(node):
            f = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:                          # relative: resolve against this package
                    base = ".".join(package.split(".")[:len(package.split(".")) - child.level + 1] + [base]).strip(".")
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in child.names]
            for n in dict.fromkeys(names):
                if n.split(".")[0] in ("harness", "algorithms"):
                    out.append((n, child.lineno, f, lines[child.lineno - 1]))
            visit(child, f)
    visit(tree, False)
    return out


def resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The module an import name refers to (`from harness.core import gate` names harness.core.gate)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def graph():
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    found = []
    for m, path in mods.items():
        pkg = m if path.name == "__init__.py" else m.rpartition(".")[0]
        for name, line, in_func, text in imports(path, pkg, mods):
            target = resolve(name, mods)
            if target and target != m:
                edges[m].add(target)
                found.append((m, target, line, in_func, text))
    return mods, edges, found


def test_every_module_has_a_layer():
    mods, _, _ = graph()
    assert [m for m in mods if layer(m) is None and m != "harness"] == []


def test_imports_run_one_way():
    _, _, found = graph()
    bad = [f"{m}:{line} imports {t} ({layer(m)} -> {layer(t)})" for m, t, line, _, _ in found
           if layer(t) != layer(m) and layer(t) not in LAYERS[layer(m)]]
    assert bad == [], "\n".join(bad)


def test_function_level_imports_are_deliberate():
    _, _, found = graph()
    bad = [f"{m}:{line}: {text.strip()}" for m, t, line, in_func, text in found
           if in_func and "lazy" not in (text.split("#", 1)[1] if "#" in text else "")]
    assert bad == [], "an import inside a function needs `# lazy: why` on its line:\n" + "\n".join(bad)


def test_no_import_cycles():
    mods, edges, _ = graph()
    cycles, state = [], {}

    def dfs(m, stack):
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                dfs(t, stack + [t])
        state[m] = 2
    for m in sorted(mods):
        if m not in state:
            dfs(m, [m])
    assert cycles == [], "\n".join(cycles)


def test_the_walk_sees_what_it_must():
    """The checks above would pass vacuously if the walk found nothing: pin a few known edges."""
    _, edges, found = graph()
    assert "harness.core.metrics" in edges["harness.train.loop"]
    assert "algorithms.losses" in edges["algorithms.ppo"]
    assert any(in_func for *_, in_func, _ in found)      # the lazy ones are seen as such
    assert len(found) > 100
