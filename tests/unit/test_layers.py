"""The import graph: layers point one way and the core never imports its workers.

tooling -> cli -> runtime -> planning -> routing -> engine -> workflow -> base (config, errors,
constants, registry). Every import counts, including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FLEET = Path(__file__).resolve().parents[2] / "fleet"
LAYERS = ["base", "workflow", "engine", "routing", "planning", "runtime", "cli", "tooling"]
BASE = {"fleet.config", "fleet.errors", "fleet.constants", "fleet.registry"}
FACADE = {"fleet"}  # the package's __init__: public names, loaded lazily from any layer


def _module(path: Path) -> str:
    rel = path.relative_to(FLEET.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


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
    return [p for p in sorted(FLEET.rglob("*.py")) if "examples" not in p.parts]


def test_every_module_belongs_to_a_layer() -> None:
    orphans = [_module(p) for p in _sources() if _layer(_module(p)) is None]
    assert orphans == ["fleet"]


@pytest.mark.parametrize("path", _sources(), ids=lambda p: _module(p))
def test_imports_point_down_and_never_into_workers(path: Path) -> None:
    module = _module(path)
    own = _layer(module)
    bad = []
    for name in _imports(path):
        if name == "workers" or name.startswith("workers."):
            bad.append(f"{name} (the core never imports workers: use entry points)")
            continue
        target = _layer(name) if name.startswith("fleet") else None
        if own is None or target is None:
            continue
        if LAYERS.index(target) > LAYERS.index(own):
            bad.append(f"{name} (layer {target} is above {own})")
    assert not bad, f"{module} imports: {bad}"


def test_op_names_do_not_appear_in_the_core() -> None:
    """An op's units, samples and models live with the op, not in fleet/."""
    names = ("llm.generate", "llm.prefill", "embed.texts", "speech.tts", "workers.ops")
    hits = []
    for path in _sources():
        if "tooling" in path.parts:
            continue  # the demo and the benchmark are workflows that use these ops
        text = path.read_text()
        hits += [f"{_module(path)}: {n}" for n in names if n in text]
    assert not hits


def test_workers_use_only_the_op_sdk_and_the_registry() -> None:
    allowed = {"fleet.registry", "fleet.runtime.sdk"}
    bad = []
    for path in sorted((FLEET.parent / "workers").rglob("*.py")):
        for name in _imports(path):
            if name.startswith("fleet") and not any(
                name == a or name.startswith(a + ".") for a in allowed
            ):
                bad.append(f"{path.name}: {name}")
    assert not bad
