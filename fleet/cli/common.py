"""Helpers shared by the CLI modules: consoles, errors, inputs, printing a run."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape

from fleet.config import FleetConfig
from fleet.errors import ConfigError, FleetError, WorkflowValidationError

if TYPE_CHECKING:
    from fleet.client.client import Fleet, RunHandle
    from fleet.store.records import RunInfo, TraceEntry
    from fleet.workflow.model import WorkflowSpec

# Width from the terminal, or from COLUMNS when piped (rich's default is 80 columns).
console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    sys.exit(code)


def config(ctx: click.Context) -> FleetConfig:
    cfg: FleetConfig = ctx.obj["cfg"]
    return cfg


def _text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path} as UTF-8 text: {exc}") from None


def parse_inputs(
    pairs: tuple[str, ...], inputs_json: str | None
) -> tuple[dict[str, Any], dict[str, int]]:
    """``key=value`` pairs: JSON values when they parse, ``@path`` reads a file, else text.
    Also the line of each key in the ``--inputs-json`` file, for errors."""
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    if inputs_json:
        from fleet.workflow.loader import load_inputs

        try:
            values, lines = load_inputs(inputs_json)
        except WorkflowValidationError as exc:
            fail(str(exc), 2)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"'{pair}' is not key=value", param_hint="--input")
        if raw.startswith("@"):
            values[key] = _text(raw[1:])
            continue
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values, lines


def key_path(item: str, option: str) -> tuple[str, str]:
    key, sep, path = item.partition("=")
    if not sep or not key or not path:
        raise click.BadParameter(f"'{item}' is not KEY=PATH", param_hint=option)
    return key, path


def save_outputs(client: Fleet, handle: RunHandle, to_save: dict[str, str]) -> None:
    """Download the named outputs (blob references) of a finished run to local files."""
    info = handle.info()
    outputs = (info.outputs or {}) if info else {}
    for name, path in to_save.items():
        ref = outputs.get(name)
        if not isinstance(ref, str):
            fail(f"--save {name}: the run has no output '{name}' holding a blob reference")
        client.download(ref, path)
        err.print(f"saved {name} to {path}", highlight=False)


def check_run_inputs(
    spec: WorkflowSpec, inputs: dict[str, Any], inputs_json: str | None, lines: dict[str, int]
) -> None:
    """Missing or unknown inputs, named with the file and line they come from (exit 2)."""
    from fleet.workflow.validate import check_inputs

    try:
        check_inputs(spec, inputs, inputs_json, lines)
    except WorkflowValidationError as exc:
        fail(str(exc), 2)


def load_and_validate(file: str) -> tuple[Fleet, WorkflowSpec]:
    from fleet.client.client import Fleet

    client = Fleet()
    try:
        spec = client.validate(file)
    except WorkflowValidationError as exc:
        fail(str(exc), 2)
    return client, spec


def print_outcome(handle: RunHandle, timeout: float, as_json: bool, why: bool = False) -> int:
    """Wait up to ``timeout`` s for a run (0: not at all), then print what its record says:
    its state, trace, duration (from submission, not how long this waited) and result or
    error. The exit code: 0 when it succeeded -- or, without a wait, is still running --
    1 when it failed, is unknown, or did not finish within the wait."""
    from fleet.cli.tables import trace_json, trace_table

    if timeout > 0:
        try:
            with console.status(f"run {handle.id} ..."):
                handle.get(timeout=timeout)
        except FleetError:
            pass  # failed or still running: the run's record says which, below
    info = handle.info()
    trace = handle.trace()
    status = info.status if info else "unknown"
    outputs = info.outputs if info and status == "succeeded" else None
    error = _run_error(info, status)
    late = timeout > 0 and status == "running"
    if late:
        error = f"not finished after {timeout:g} s of waiting (`fleet trace {handle.id}`)"
    code = 0 if status == "succeeded" or (status == "running" and not late) else 1
    duration = _duration(info)
    if as_json:
        doc: dict[str, Any] = {"run": handle.id, "status": status, "outputs": outputs}
        doc |= {"error": error, "duration_s": duration, "trace": trace_json(trace)}
        console.print_json(dumps(doc))
        return code
    if trace:
        console.print(trace_table(trace, why=why))
    console.print(_summary(handle.id, status, duration, trace), highlight=False)
    if error:
        err.print(
            f"[bold red]{'failed' if status != 'running' else 'waiting'}:[/] {escape(error)}",
            highlight=False,
        )
    elif status == "succeeded":
        console.print("[bold]result[/]")
        console.print_json(dumps(outputs))
    return code


def _run_error(info: RunInfo | None, status: str) -> str | None:
    if info is None:
        return "no record of this run: unknown, or its record expired"
    if status == "failed":
        where = f"node '{info.error_node}': " if info.error_node else ""
        return where + (info.error or "unknown error")
    return None


def _duration(info: RunInfo | None) -> float | None:
    """Seconds from submission to the end, or to now while the run goes on."""
    if info is None or info.submitted_at is None:
        return None
    return (info.finished_at or time.time()) - info.submitted_at


def _summary(run_id: str, status: str, duration: float | None, trace: list[TraceEntry]) -> str:
    took = "" if duration is None else f" {duration:.2f} s"
    classes = sorted({e.cls for e in trace if e.cls})
    where = f" on {', '.join(classes)}" if classes else ""
    ran = sum(1 for e in trace if e.status != "skipped")
    if status == "succeeded":
        return f"run {run_id}: succeeded in{took}{where}"
    if status == "failed":
        return f"run {run_id}: failed after{took}{where}"
    if status == "running":
        steps = f"{ran} step(s) finished" if ran else "no step has finished yet (queued)"
        return f"run {run_id}: running for{took}; {steps}"
    return f"run {run_id}: {status}"


def dumps(value: Any) -> str:
    """JSON for people: indented, keys sorted, anything else as its string."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def split(value: str | None) -> list[str] | None:
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


def plan_config(plan_file: str) -> FleetConfig:
    """The configuration a plan file is (the environment still names broker and backend)."""
    from fleet.config import load_config

    path = Path(plan_file)
    if not path.is_file():
        fail(f"plan file {plan_file} does not exist (write one with `fleet plan --save FILE`)", 2)
    os.environ["FLEET_CONFIG"] = str(path.resolve())  # the workers read the same file
    try:
        return load_config()
    except ConfigError as exc:
        fail(f"{plan_file}: {exc}", 2)
