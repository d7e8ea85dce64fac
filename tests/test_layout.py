"""The package's layout keeps its shape: folders that say what they are for, layers that import downwards only,
and no import cycle among kdgen's modules (imports for type annotations only, under TYPE_CHECKING, aside)."""

import ast
from pathlib import Path

import pytest

import kdgen

PACKAGE = Path(kdgen.__file__).parent
FOLDERS = ("training", "running", "reporting", "arms", "methods", "tolerance", "data", "models")
# What each layer may not import at run time: lower layers never reach up.
FORBIDDEN = {
    "training": {"running", "reporting", "arms", "config", "cli", "api"},
    "reporting": {"training", "running", "cli", "api"},
    "methods": {"training", "running", "reporting", "arms", "config", "cli", "api"},
    "tolerance": {"training", "running", "reporting", "arms", "config", "cli", "api"},
    "data": {"training", "running", "reporting", "arms", "config", "cli", "api"},
    "models": {"training", "running", "reporting", "arms", "config", "cli", "api"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _runtime_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The kdgen modules ``path`` imports at any level, except inside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(node) for block in ast.walk(tree)
                   if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                   for statement in block.body for node in ast.walk(statement)}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "kdgen":
            found |= {resolve(f"{node.module}.{alias.name}") for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {resolve(alias.name) for alias in node.names if alias.name.split(".")[0] == "kdgen"}
    return found - {None}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _runtime_imports(path, modules) - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a list of modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            # a package's __init__ importing its own submodules is how packages work, not a cycle
            if target.startswith(module + "."):
                continue
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        state[module] = 2
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_import_cycle_among_kdgen_modules(graph):
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"p": {"p.x"}, "p.x": set()}) is None


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_upper_ones(graph, layer):
    reached = {target.split(".")[1] for module, targets in graph.items() if module.startswith(f"kdgen.{layer}")
               for target in targets if target.count(".") >= 1}
    assert not reached & FORBIDDEN[layer], f"kdgen.{layer} imports {sorted(reached & FORBIDDEN[layer])}"


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_folder_says_what_it_is_for(folder):
    init = PACKAGE / folder / "__init__.py"
    docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert docstring and len(docstring) > 80, f"kdgen/{folder}/__init__.py needs a docstring saying what it holds"


@pytest.mark.parametrize("family", ["data", "training"])
def test_families_own_their_settings_and_never_reach_for_the_config(family):
    """DataConfig lives in kdgen.data.settings, TrainConfig and RuntimeConfig in kdgen.training.settings; these
    layers import them there, never kdgen.config, not even for type annotations (the config composes the sections;
    the families do not look back at it)."""
    for path in (PACKAGE / family).glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "kdgen.config" not in imported, f"kdgen/{family}/{path.name} imports kdgen.config"
