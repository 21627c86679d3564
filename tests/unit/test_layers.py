"""The import graph: layers point one way, and the core never imports the ops plug-in.

cli -> evaluation -> calibration -> bench -> examples -> deploy -> client -> worker -> planning
-> routing -> engine -> workflow -> sdk -> store -> base (config, errors, constants, paths).
Every import counts, including those inside functions. docs/architecture.md draws the map.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx
import pytest

FLEET = Path(__file__).resolve().parents[2] / "fleet"
LAYERS = [
    "base",
    "store",
    "sdk",
    "workflow",
    "engine",
    "routing",
    "planning",
    "worker",
    "client",
    "deploy",
    "examples",
    "bench",
    "calibration",
    "evaluation",
    "cli",
]
BASE = {"fleet.config", "fleet.errors", "fleet.constants", "fleet.paths"}
FACADE = {"fleet"}  # the package's __init__: public names, loaded lazily from any layer
PLUGIN = "fleet.ops"  # the built-in ops: a plug-in that imports only the op SDK


def _module(path: Path) -> str:
    rel = path.relative_to(FLEET.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _layer(module: str) -> str | None:
    if module in FACADE:
        return None
    if module in BASE:
        return "base"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def _sources() -> list[Path]:
    """The core: every module but the ops plug-in."""
    return [p for p in sorted(FLEET.rglob("*.py")) if not _in(_module(p), PLUGIN)]


def _plugin() -> list[Path]:
    return sorted((FLEET / "ops").rglob("*.py"))


def test_every_module_belongs_to_a_layer() -> None:
    orphans = [_module(p) for p in _sources() if _layer(_module(p)) is None]
    assert orphans == ["fleet"]


@pytest.mark.parametrize("path", _sources(), ids=lambda p: _module(p))
def test_imports_point_down_and_never_into_the_ops(path: Path) -> None:
    module = _module(path)
    own = _layer(module)
    bad = []
    for name in _imports(path):
        if _in(name, PLUGIN):
            bad.append(f"{name} (the core never imports the ops: use entry points)")
            continue
        target = _layer(name) if name.startswith("fleet") else None
        if own is None or target is None:
            continue
        if LAYERS.index(target) > LAYERS.index(own):
            bad.append(f"{name} (layer {target} is above {own})")
    assert not bad, f"{module} imports: {bad}"


def test_op_names_do_not_appear_below_the_tools_that_run_workflows() -> None:
    """An op's units, samples and models live with the op, not in the core."""
    names = ("llm.generate", "llm.prefill", "embed.texts", "speech.tts", "fleet.ops.")
    runs_workflows = {"deploy", "examples", "bench", "calibration", "evaluation", "cli"}
    hits = []
    for path in _sources():
        if _layer(_module(path)) in runs_workflows:
            continue  # the demo, the checks and the benchmark are workflows using these ops
        text = path.read_text()
        hits += [f"{_module(path)}: {n}" for n in names if n in text]
    assert not hits


def test_the_ops_use_only_the_op_sdk() -> None:
    bad = []
    for path in _plugin():
        for name in _imports(path):
            if _in(name, "fleet") and not (_in(name, "fleet.sdk") or _in(name, PLUGIN)):
                bad.append(f"{path.name}: {name}")
    assert _plugin() and not bad


def test_no_import_cycle_between_modules() -> None:
    """Imports between modules form a DAG: a cycle is a layering smell even inside a layer."""
    modules = {_module(p): p for p in sorted(FLEET.rglob("*.py"))}
    graph = nx.DiGraph()
    for module, path in modules.items():
        for name in _imports(path):
            if name in modules and name not in (module, "fleet"):
                graph.add_edge(module, name)
    assert list(nx.simple_cycles(graph)) == []


def test_the_architecture_map_lists_every_package() -> None:
    """docs/architecture.md opens with the map: every package of fleet/ is on it."""
    text = (FLEET.parent / "docs" / "architecture.md").read_text()
    the_map = text.split("## The map", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^ fleet/([a-z_]+)/ ", the_map, re.M)
    mapped = set(rows)
    packages = {p.name for p in FLEET.iterdir() if (p / "__init__.py").is_file()}
    assert packages == mapped, sorted(packages ^ mapped)
    # listed top-down: each row may import only the rows below it, as LAYERS says
    layered = [r for r in rows if r in LAYERS]
    assert layered == sorted(layered, key=LAYERS.index, reverse=True)
