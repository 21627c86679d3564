"""What a wait node (``wait.signal``, ``wait.for``, ``wait.until``) may say, checked before a
run is sent, and the times it names, read the same way by the validator and the engine."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from fleet.constants import WAIT_OP_PREFIX
from fleet.sdk.waits import FOR_OP, SIGNAL_OP, UNTIL_OP
from fleet.workflow.model import NodeSpec, WorkflowSpec, parse_ref

SIGNAL_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")
MAX_WAIT_S = 366 * 86400.0  # a year and a day: longer is a mistake (and outlives run_ttl)


def seconds(value: Any, what: str) -> float:
    """A positive, finite number of seconds, at most MAX_WAIT_S; else ValueError naming
    ``what``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value <= 0 or value > MAX_WAIT_S:
        raise ValueError(f"{what} must be over 0 and at most {MAX_WAIT_S:g} s, not {value!r}")
    return float(value)


def moment(value: Any, what: str = "at") -> float:
    """A time as Unix seconds: a number, or ISO 8601 text with its zone
    ("2026-12-24T09:00:00+01:00", "...Z"); else ValueError naming ``what``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value) and value > 0:
            return float(value)
        raise ValueError(f"{what} must be a positive Unix time, not {value!r}")
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{what} {value!r} is not an ISO 8601 time") from None
        if when.tzinfo is None:
            raise ValueError(f"{what} {value!r} has no time zone (add Z or +01:00)")
        return when.timestamp()
    raise ValueError(f"{what} must be a Unix time or ISO 8601 text, not {value!r}")


def problems(node: NodeSpec) -> Iterator[tuple[str, str]]:
    """(message, field) for each thing wrong with wait node ``node``'s params."""
    params = node.params
    if node.op == SIGNAL_OP:
        if "name" in node.inputs:
            yield "a signal's name is a param (the name senders use), not an input", "name"
        elif not isinstance(params.get("name"), str) or not SIGNAL_NAME_RE.match(params["name"]):
            yield (
                (
                    f"name {params.get('name')!r} is not a signal name (a letter or _, then up "
                    "to 63 letters, digits or _ . : -)"
                ),
                "name",
            )
        if "timeout_s" in params and params["timeout_s"] is not None:
            yield from _check(seconds, params["timeout_s"], "timeout_s")
    elif node.op == FOR_OP and "seconds" in params:
        yield from _check(seconds, params["seconds"], "seconds")
    elif node.op == UNTIL_OP and "at" in params:
        yield from _check(moment, params["at"], "at")
    if node.map is not None:
        yield "a wait cannot be mapped (one wait per node)", "map"


def _check(read: Any, value: Any, name: str) -> Iterator[tuple[str, str]]:
    try:
        read(value, name)
    except ValueError as exc:
        yield str(exc), name


def timeout_handled(wf: WorkflowSpec, node: str) -> bool:
    """Whether anything in ``node``'s workflow body reads its ``timed_out`` output (a
    condition, an input, an output, a loop's end): then a timeout takes that branch; else it
    fails the run naming the node."""
    wanted = (node, "timed_out")
    for other in wf.nodes:
        if any(_is(ref, wanted) for _, ref in other.refs()):
            return True
    sources = [s for v in wf.outputs.values() for s in ([v] if isinstance(v, str) else v)]
    return any(_is(ref, wanted) for ref in sources)


def _is(ref: str, wanted: tuple[str, str]) -> bool:
    try:
        return parse_ref(ref) == wanted
    except ValueError:
        return False


def wait_nodes(wf: WorkflowSpec, prefix: str = "") -> list[tuple[str, str]]:
    """(path, op) of every wait node of a workflow, its bodies' included."""
    found: list[tuple[str, str]] = []
    for node in wf.nodes:
        if node.op is not None and node.op.startswith(WAIT_OP_PREFIX):
            found.append((prefix + node.name, node.op))
        if node.workflow is not None:
            found += wait_nodes(node.workflow, f"{prefix}{node.name}/")
    return found


def signal_names(wf: WorkflowSpec) -> set[str]:
    """The signal names the wait.signal nodes of a workflow (and its bodies) wait on."""
    names: set[str] = set()
    for node in wf.nodes:
        if node.op == SIGNAL_OP and isinstance(node.params.get("name"), str):
            names.add(node.params["name"])
        if node.workflow is not None:
            names |= signal_names(node.workflow)
    return names
