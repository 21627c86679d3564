"""Load a workflow from a YAML or JSON file, keeping line numbers for error messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fleet.errors import FleetError, Problem, WorkflowValidationError
from fleet.workflow.model import WorkflowSpec


class _LineDict(dict[str, Any]):
    line: int | None = None
    key_lines: dict[Any, int]


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings remember the (1-based) line they start on."""


def _scalar(key: Any) -> bool:
    """A YAML key fleet can use: a name or number (``? [a, b]`` makes a list key)."""
    return key is None or isinstance(key, str | int | float | bool)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> _LineDict:
    loader.flatten_mapping(node)
    result = _LineDict()
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not _scalar(key):
            raise yaml.constructor.ConstructorError(
                None, None, f"a key must be a name, not {type(key).__name__}", key_node.start_mark
            )
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}'", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    result.line = node.start_mark.line + 1
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _annotate_lines(data: Any) -> None:
    """Copy each node mapping's line into its ``line`` field (nested workflows too)."""
    if not isinstance(data, dict):
        return
    for node in data.get("nodes") or []:
        if isinstance(node, _LineDict) and "line" not in node:
            node["line"] = node.line
        if isinstance(node, dict):
            _annotate_lines(node.get("workflow"))


def _locate(data: Any, loc: tuple[int | str, ...]) -> tuple[str | None, int | None, str]:
    """Walk a pydantic error location to the innermost node: (node name, line, field path)."""
    node_name, line, rest = None, getattr(data, "line", None), list(loc)
    cur, i = data, 0
    while i < len(loc):
        key = loc[i]
        if key == "nodes" and i + 1 < len(loc) and isinstance(cur, dict):
            idx = loc[i + 1]
            nodes = cur.get("nodes")
            if isinstance(nodes, list) and isinstance(idx, int) and idx < len(nodes):
                cur = nodes[idx]
                if isinstance(cur, dict):
                    node_name = str(cur.get("name", f"#{idx}"))
                    line = getattr(cur, "line", None) or line
                rest = list(loc[i + 2 :])
                i += 2
                continue
        cur = cur.get(key) if isinstance(cur, dict) else None
        i += 1
    return node_name, line, ".".join(str(p) for p in rest)


def spec_from_data(data: Any, source: str | None = None) -> WorkflowSpec:
    """Validate raw mapping data into a spec, turning schema errors into named problems."""
    if not isinstance(data, dict):
        raise WorkflowValidationError([Problem("top level must be a mapping", file=source)])
    _annotate_lines(data)
    try:
        spec = WorkflowSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            node, line, field = _locate(data, tuple(err["loc"]))
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            problems.append(Problem(msg, node=node, field=field or None, line=line, file=source))
        raise WorkflowValidationError(problems, workflow=str(data.get("name", source))) from None
    if source:
        spec.source = source
    if isinstance(data, _LineDict):
        spec.inputs_line = data.key_lines.get("inputs", data.line)
    return spec


def load_inputs(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """A run's inputs from a JSON (or YAML) file: (values, the line of each top-level key)."""
    try:
        data = _load_yaml(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        problem = Problem(f"cannot read inputs: {exc}", file=str(path))
        raise WorkflowValidationError([problem]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = Problem(f"inputs are not valid JSON/YAML: {exc}", line=line, file=str(path))
        raise WorkflowValidationError([problem]) from None
    if not isinstance(data, dict):
        raise WorkflowValidationError([Problem("inputs must be a mapping", file=str(path))])
    _check_shape(data, str(path), MAX_INPUT_VALUES)  # an alias bomb, before anything expands it
    lines = dict(data.key_lines) if isinstance(data, _LineDict) else {}
    return dict(data), lines


MAX_FILE_BYTES = 1 << 20  # a workflow, not a data file
MAX_VALUES = 100_000  # values in the document with every alias expanded
MAX_INPUT_VALUES = 1_000_000  # the same for a run's inputs (bounded again by max_value_bytes)
MAX_DEPTH = 64  # nesting of mappings and lists


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_LineLoader)


def _shape(data: Any, limit: int = MAX_VALUES) -> tuple[int, int]:
    """(values, depth) of ``data`` as if every YAML alias were expanded -- computed without
    expanding them (shared objects are measured once), so an alias bomb is measured, not
    built. Raises RecursionError past MAX_DEPTH."""
    sizes: dict[int, tuple[int, int]] = {}

    def walk(obj: Any, level: int) -> tuple[int, int]:
        if level > MAX_DEPTH:
            raise RecursionError
        if not isinstance(obj, dict | list):
            return 1, 0
        known = sizes.get(id(obj))
        if known is not None:
            return known
        children = list(obj.values()) if isinstance(obj, dict) else obj
        count, depth = 1, 0
        for child in children:
            c, d = walk(child, level + 1)
            count, depth = min(count + c, limit + 1), max(depth, d + 1)
        sizes[id(obj)] = (count, depth)
        return count, depth

    return walk(data, 0)


def _check_shape(data: Any, source: str, limit: int = MAX_VALUES) -> None:
    try:
        values, _ = _shape(data, limit)
    except RecursionError:
        raise WorkflowValidationError(
            [Problem(f"nested deeper than {MAX_DEPTH} levels", file=source)]
        ) from None
    if values > limit:
        raise WorkflowValidationError(
            [Problem(f"more than {limit} values once aliases are expanded", file=source)]
        )


def load_workflow(path: str | Path) -> WorkflowSpec:
    """Read ``path`` (.yaml/.yml/.json) into a spec. Structural checks only; see validate."""
    data = _read_data(Path(path), MAX_VALUES)
    return spec_from_data(data, source=str(path))


def load_data_file(path: str | Path, error: type[FleetError], max_values: int = MAX_VALUES) -> Any:
    """A YAML (or .json) file of data -- a question set, a workload, a values file -- read
    as a workflow file is: at most MAX_FILE_BYTES, UTF-8, a safe loader, and measured with
    its aliases expanded before anything expands them (an alias bomb is refused, not built).
    A problem raises ``error`` naming the file (and the line, where there is one)."""
    try:
        return _read_data(Path(path), max_values)
    except WorkflowValidationError as exc:
        raise error("; ".join(str(p) for p in exc.problems)) from None


def _read_data(path: Path, max_values: int) -> Any:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise WorkflowValidationError(
                [Problem(f"file is larger than {MAX_FILE_BYTES} bytes", file=str(path))]
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkflowValidationError(
            [Problem(f"cannot read file: {exc}", file=str(path))]
        ) from exc
    try:
        # _LineLoader is a SafeLoader: no arbitrary Python objects from workflow files.
        loads = json.loads if path.suffix == ".json" else _load_yaml
        data = loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowValidationError(
            [Problem(f"invalid JSON: {exc.msg}", line=exc.lineno, file=str(path))]
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise WorkflowValidationError(
            [Problem(f"invalid YAML: {exc}", line=line, file=str(path))]
        ) from exc
    except RecursionError:
        raise WorkflowValidationError(
            [Problem(f"nested deeper than {MAX_DEPTH} levels", file=str(path))]
        ) from None
    _check_shape(data, str(path), max_values)
    return data
