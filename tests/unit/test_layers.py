"""The import graph: layers point one way, `fleet` never imports `workers`, and the ops are a
plug-in that imports only the op SDK.

Inside `fleet`: facade (fleet/__init__.py) -> cli -> evaluation -> calibration -> loadtest ->
demo -> examples -> diagnostics -> measurement -> deploy -> client -> messaging -> planning ->
routing -> engine -> workflow -> sdk -> store -> base (config, errors, constants, paths).
A name imported from the facade (`from fleet import signature`) counts as an import of the
module the facade loads it from. `workers` (the worker side) may import any of `fleet`; nothing
in `fleet` imports `workers` (Celery and entry points name its modules as strings). Every
import counts, including those inside functions. docs/architecture.md draws the map.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx
import pytest

import fleet
import fleet.errors

ROOT = Path(__file__).resolve().parents[2]
FLEET = ROOT / "fleet"
WORKERS = ROOT / "workers"
LAYERS = [
    "base",
    "store",
    "sdk",
    "workflow",
    "engine",
    "routing",
    "planning",
    "messaging",
    "client",
    "deploy",
    "measurement",
    "diagnostics",
    "examples",
    "demo",
    "loadtest",
    "calibration",
    "evaluation",
    "cli",
    "facade",
]
BASE = {"fleet.config", "fleet.errors", "fleet.constants", "fleet.paths"}
FACADE = "fleet"  # the package's __init__: public names, loaded lazily from their modules
PLUGIN = "workers.ops"  # the built-in ops: a plug-in that imports only the op SDK


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _facade_target(name: str) -> str:
    """The module a name imported from the facade really comes from."""
    lazy: dict[str, str] = fleet._LAZY
    attr = name.removeprefix(FACADE + ".")
    if attr in lazy:
        return lazy[attr]
    return "fleet.errors" if hasattr(fleet.errors, attr) else FACADE


def _from_facade(name: str) -> bool:
    """``import fleet`` or a name of the facade (``fleet.signature``), not a module path."""
    parts = name.split(".")
    if parts[0] != FACADE or len(parts) > 2:
        return False
    return len(parts) == 1 or (parts[1] not in LAYERS and name not in BASE)


def _layer(module: str) -> str | None:
    if module == FACADE:
        return "facade"
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
    """The client and operator side: every module of `fleet`."""
    return sorted(FLEET.rglob("*.py"))


def _worker_side() -> list[Path]:
    """The worker side: every module of `workers` but the ops plug-in."""
    return [p for p in sorted(WORKERS.rglob("*.py")) if not _in(_module(p), PLUGIN)]


def _plugin() -> list[Path]:
    return sorted((WORKERS / "ops").rglob("*.py"))


def test_every_module_belongs_to_a_layer() -> None:
    orphans = [_module(p) for p in _sources() if _layer(_module(p)) is None]
    assert orphans == []


@pytest.mark.parametrize("path", _sources(), ids=lambda p: _module(p))
def test_imports_point_down_and_never_into_the_worker_side(path: Path) -> None:
    module = _module(path)
    own = _layer(module)
    assert own is not None
    bad = []
    for name in _imports(path):
        if _in(name, "workers"):
            bad.append(f"{name} (fleet never imports workers: name it for Celery or entry points)")
            continue
        if _from_facade(name) and module != FACADE:
            name = _facade_target(name)  # `from fleet import X`: where X really comes from
        target = _layer(name) if _in(name, FACADE) else None
        if target is None:
            continue
        if LAYERS.index(target) > LAYERS.index(own):
            bad.append(f"{name} (layer {target} is above {own})")
    assert not bad, f"{module} imports: {bad}"


def test_the_facade_counts_as_the_module_it_loads_from() -> None:
    """`from fleet import signature` in a low layer is an import of the client, not a pass."""
    assert _facade_target("fleet.signature") == "fleet.client.client"
    assert _layer(_facade_target("fleet.Workflow")) == "client"
    assert _layer(_facade_target("fleet.FleetError")) == "base"


@pytest.mark.parametrize("path", _worker_side(), ids=lambda p: _module(p))
def test_the_worker_side_never_imports_the_ops(path: Path) -> None:
    bad = [n for n in _imports(path) if _in(n, PLUGIN)]
    assert not bad, f"{_module(path)} imports {bad} (find ops through entry points)"


def test_op_names_do_not_appear_below_the_tools_that_run_workflows() -> None:
    """An op's units, samples and models live with the op, not in the core."""
    names = ("llm.generate", "llm.prefill", "embed.texts", "speech.tts", "workers.ops.")
    runs_workflows = {
        *("deploy", "measurement", "diagnostics", "examples", "demo", "loadtest"),
        *("calibration", "evaluation", "cli"),
    }
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
            if _in(name, "workers") and not _in(name, PLUGIN):
                bad.append(f"{path.name}: {name}")
            if _in(name, "fleet") and not _in(name, "fleet.sdk"):
                bad.append(f"{path.name}: {name}")
    assert _plugin() and not bad


def test_no_import_cycle_between_modules() -> None:
    """Imports between modules form a DAG: a cycle is a layering smell even inside a layer."""
    modules = {
        _module(p): p for p in [*sorted(FLEET.rglob("*.py")), *sorted(WORKERS.rglob("*.py"))]
    }
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
