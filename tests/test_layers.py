"""The import graph of cifarq's own packages: no cycle anywhere (imports inside functions
count too: they hide cycles, they don't remove them), and every package imports only the
layers below it (docs/design.md has the map)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("shared", "worker", "api_cli")

# Who may import whom, by package; within worker/, by module (the layers of docs/design.md).
MAY_IMPORT = {
    "shared": {"shared"},
    "worker": {"shared", "worker"},
    "api_cli": {"shared", "api_cli"},
}
# The one door from the CLI into worker/: `cifarq worker` starts the launcher (worker installs).
CLI_INTO_WORKER = {("api_cli.admin", "worker.launcher")}
WORKER_LAYERS = [  # each may import only from the layers before it (and shared/)
    {"worker.model", "worker.data", "worker.devices", "worker.gpu_lease", "worker.tensorboard", "worker.compile_cache"},
    {"worker.loop", "worker.evaluate", "worker.records", "worker.aot_step"},
    {"worker.recipes", "worker.recipes.tutorial_step"},
    {"worker.recipes.tutorial", "worker.recipes.fast", "worker.recipes.packed_step"},
    {"worker.recipes.packed"},
    {"worker.train", "worker.checkpoints", "worker.launcher", "worker.warm_up"},
    {"worker.run"},
    {"worker.run_pack"},
    {"worker.tasks"},
    {"worker"},
]


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from worker import registry` imports the module worker.registry.
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, set(known)) - {name} for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_hidden_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_every_package_imports_only_the_layers_below_it():
    wrong = []
    for module, targets in graph().items():
        package = module.split(".")[0]
        for target in targets:
            if target.split(".")[0] not in MAY_IMPORT[package] and (module, target) not in CLI_INTO_WORKER:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_worker_modules_import_only_from_layers_before_theirs():
    edges = graph()
    layer_of = {module: i for i, layer in enumerate(WORKER_LAYERS) for module in layer}
    worker_modules = {m for m in edges if m.split(".")[0] == "worker"}
    assert worker_modules <= set(layer_of), f"not placed in a layer: {sorted(worker_modules - set(layer_of))}"
    wrong = [f"{m} -> {t}" for m in worker_modules for t in edges[m]
             if t in layer_of and layer_of[t] >= layer_of[m] and t != "worker"]
    assert wrong == []
