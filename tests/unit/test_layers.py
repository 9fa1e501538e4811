"""Imports go one way (ARCHITECTURE.md): domain packages never import the stages, the pipeline or the CLI, and each
domain package imports only the ones before it. Read from the source with ast (no import, no Ray)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mlscale"

# Lower number = earlier. A module may import its own layer or lower ones, never a higher one.
LAYERS: list[tuple[str, int]] = [
    # shared foundations: declarations and plumbing every layer may use
    ("mlscale.version", 0), ("mlscale.errors", 0), ("mlscale.uris", 0), ("mlscale.direction", 0), ("mlscale.config", 0),
    ("mlscale.schema", 0),
    ("mlscale.caching", 0), ("mlscale.hashing", 0), ("mlscale.cluster", 0), ("mlscale.tracking", 0),
    ("mlscale.plots", 0), ("mlscale.logs", 0), ("mlscale.cost", 0), ("mlscale.submit", 0),
    # the domain, in the order data flows
    ("mlscale.data", 1), ("mlscale.features", 2), ("mlscale.models", 3), ("mlscale.train", 4), ("mlscale.tune", 5),
    ("mlscale.registry", 6), ("mlscale.evaluate", 7), ("mlscale.behaviour", 7), ("mlscale.promotion", 7),
    ("mlscale.scoring", 7),
    ("mlscale.serve", 8), ("mlscale.monitor", 9),
    # orchestration
    ("mlscale.stages", 10), ("mlscale.pipeline", 11), ("mlscale.retrain", 11), ("mlscale.replay", 11),
    ("mlscale.entry", 12), ("mlscale.cli", 12),
]
PUBLIC_API = "mlscale"  # the package's __init__: the facade over everything (lazy), imported by nothing inside


def layer_of(module: str) -> int:
    """The layer of a module: that of the longest matching prefix."""
    matches = [(len(prefix), layer) for prefix, layer in LAYERS if module == prefix or module.startswith(prefix + ".")]
    if not matches:
        raise AssertionError(f"{module} has no layer: add it to LAYERS (and to ARCHITECTURE.md)")
    return max(matches)[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every mlscale import in the file, including imports inside functions."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "mlscale"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mlscale":
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: relative import; use the absolute mlscale path")
            found += [(node.lineno, f"{node.module}.{alias.name}") if _is_module(f"{node.module}.{alias.name}")
                      else (node.lineno, node.module) for alias in node.names]
    return found


def _is_module(dotted: str) -> bool:
    relative = Path(*dotted.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").exists() or (PACKAGE / relative / "__init__.py").exists()


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if module_name(p) != PUBLIC_API)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_never_go_upward(path):
    module = module_name(path)
    own = layer_of(module)
    upward = [f"line {line}: {target} (layer {layer_of(target)})" for line, target in imported_modules(path)
              if target != PUBLIC_API and layer_of(target) > own]
    assert not upward, f"{module} (layer {own}) imports upward:\n" + "\n".join(upward)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_nothing_inside_imports_the_public_facade(path):
    """`import mlscale` inside the package would make every worker load the whole API."""
    assert PUBLIC_API not in [target for _, target in imported_modules(path)]


def test_the_check_catches_an_upward_import(tmp_path):
    """The rule itself: a domain module importing a stage, even inside a function, is reported."""
    module = tmp_path / "sweep.py"
    module.write_text("import json\n\ndef f():\n    from mlscale.stages.train import train_stage\n"
                      "    from mlscale.train import loop\n")
    assert imported_modules(module) == [(4, "mlscale.stages.train"), (5, "mlscale.train.loop")]
    assert layer_of("mlscale.stages.train") > layer_of("mlscale.tune.sweep") > layer_of("mlscale.train.loop")
    assert layer_of("mlscale.schema") < layer_of("mlscale.data.prepare")
    with pytest.raises(AssertionError, match="has no layer"):
        layer_of("mlscale.unknown_module")


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (anywhere in the file, functions included)."""
    modules = {module_name(path): path for path in SOURCES}
    return {module: {target for _, target in imported_modules(path) if target in modules and target != module}
            for module, path in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each is a loop of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_no_module_imports_itself_through_others():
    """Beside the layers: no loop even within one layer (two stages importing each other inside functions)."""
    assert import_cycles(import_graph()) == []


SHARED_BY_STAGES = {"mlscale.stages.common", "mlscale.stages.judge", "mlscale.stages.run_records"}


def test_stages_do_not_use_each_other_as_libraries():
    """A stage imports only what the stages share (start, judging a trained model, what runs record); composing
    stages (pipeline, retrain, replay) happens at the orchestration level above them."""
    graph = import_graph()
    stages = {module for module in graph if module.startswith("mlscale.stages.") and module not in SHARED_BY_STAGES}
    assert stages >= {"mlscale.stages.train", "mlscale.stages.tune", "mlscale.stages.monitor"}
    found = {module: sorted(graph[module] & stages) for module in sorted(stages) if graph[module] & stages}
    assert found == {}, found


def test_the_cycle_check_finds_a_loop():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_cycles(graph) == [["a", "b", "c"]]


def test_the_notebooks_and_the_readme_use_only_the_public_api():
    """What a newcomer copies must keep working when modules move: `import mlscale`, nothing deeper."""
    import json
    import re

    repo = PACKAGE.parent
    notebooks = sorted((repo / "notebooks").glob("*.ipynb"))
    assert len(notebooks) >= 2
    code = ["".join(cell["source"]) for path in notebooks for cell in json.loads(path.read_text())["cells"]
            if cell["cell_type"] == "code"]
    code += re.findall(r"```python\n(.*?)```", (repo / "README.md").read_text(), re.S)
    assert any("import mlscale" in block for block in code)
    deep = [line for block in code for line in block.splitlines()
            if re.match(r"\s*(from mlscale[.\w]* import|import mlscale\.)", line)]
    assert not deep, deep
