"""The package's import contract: the stages import one way, down the data flow, with no cycle.

Every module of src/jsquad_lora belongs to a layer (its subpackage); a module may import its own
subpackage or a layer below it, never a layer above it nor a sibling of the same layer (train and generate
are independent). Lazy imports inside functions count like top-level ones. A registry's lazy entries and
homes ("module:attr" strings) are how a lower layer names a higher one without importing it; they are
checked to point at something that exists.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "jsquad_lora"

#: bottom to top, in the order data flows; a layer may hold independent siblings
LAYERS = [
    {"__init__", "errors", "registry"},
    {"util"},
    {"config"},
    {"data"},
    {"prompts"},
    {"encoding"},
    {"model"},
    {"train", "generate"},
    {"evaluate"},
    {"report"},
    {"tuned"},
    {"recipe", "questions"},
    {"commands"},
    {"cli"},
    {"__main__"},
]


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, names in enumerate(LAYERS) if top in names)


def modules() -> dict[str, Path]:
    """Dotted name → file of every module in the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("jsquad_lora",) + path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports anywhere in its file (top level or inside functions)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import mod` imports the submodule pkg.mod
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]  # a name inside a module: the module itself
            if target and target != name:
                found.add(target)
    return found


def violations(graph: dict[str, set[str]], layer=_layer) -> list[str]:
    """Every upward or sideways import, and every cycle, of an import graph (module → imported modules)."""
    problems = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer(target) > layer(module):
                problems.append(f"upward import: {module} imports {target}")
            elif layer(target) == layer(module) and target.split(".")[:2] != module.split(".")[:2]:
                problems.append(f"sideways import: {module} imports its sibling {target}")
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                problems.append("import cycle: " + " → ".join(cycle))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return problems


def package_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def test_every_module_has_a_layer():
    for name in modules():
        _layer(name)  # StopIteration names a module outside every layer


def test_imports_go_down_the_stages_without_a_cycle():
    assert violations(package_graph()) == []


def test_the_check_fails_on_an_upward_import_a_sibling_and_a_cycle():
    graph = {
        "jsquad_lora.data.a": {"jsquad_lora.recipe.job"},  # data must not know the recipe
        "jsquad_lora.train.t": {"jsquad_lora.generate.g"},  # siblings stay independent
        "jsquad_lora.model.x": {"jsquad_lora.model.y"},
        "jsquad_lora.model.y": {"jsquad_lora.model.x"},
        "jsquad_lora.recipe.job": set(),
        "jsquad_lora.generate.g": set(),
    }
    assert violations(graph) == [
        "upward import: jsquad_lora.data.a imports jsquad_lora.recipe.job",
        "sideways import: jsquad_lora.train.t imports its sibling jsquad_lora.generate.g",
        "import cycle: jsquad_lora.model.x → jsquad_lora.model.y → jsquad_lora.model.x",
    ]


def test_lazy_imports_inside_functions_count():
    source = PACKAGE / "recipe" / "job.py"
    assert "jsquad_lora.train.trainer" in imports_of("jsquad_lora.recipe.job", source, set(modules()))


def test_nothing_but_the_cli_imports_the_recipe():
    importers = {m for m, targets in package_graph().items() for t in targets if t.startswith("jsquad_lora.recipe")}
    assert importers <= {"jsquad_lora.cli"} | {m for m in modules() if m.startswith("jsquad_lora.recipe")}


def test_package_inits_import_nothing_but_what_registers():
    """Importing a module runs its packages' __init__: they stay empty, so a light module stays light."""
    for name, path in modules().items():
        if path.name == "__init__.py" and name not in ("jsquad_lora", "jsquad_lora.model.sources"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            assert not [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], name


@pytest.mark.parametrize(
    "kind", ["template", "decoding mode", "scorer", "evaluation backend", "model source", "data format"]
)
def test_registry_homes_and_lazy_entries_exist(kind):
    from jsquad_lora.registry import REGISTRIES

    registry = REGISTRIES[kind]
    assert registry.home in modules()
    assert list(registry), f"{kind}: its home registers nothing"
    for name in registry:
        entry = registry._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            assert module in modules() and attr in importlib.import_module(module).__dict__, entry
