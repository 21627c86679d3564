"""Helpers shared by the CLI modules: consoles, errors, inputs, printing a run."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape

from fleet.config import FleetConfig
from fleet.errors import FleetError, WorkflowValidationError

if TYPE_CHECKING:
    from fleet.client.client import Fleet, RunHandle
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
    """Wait for a run, print its trace and result (or error); the exit code to use."""
    from fleet.cli.tables import trace_json, trace_table

    start = time.monotonic()
    code, outputs, error = 0, None, None
    try:
        with console.status(f"run {handle.id} ..."):
            outputs = handle.get(timeout=timeout)
    except FleetError as exc:  # WorkflowFailed and WorkflowTimeout among them
        code, error = 1, str(exc)
    elapsed = time.monotonic() - start
    trace = handle.trace()
    if as_json:
        doc = {"run": handle.id, "status": handle.status(), "outputs": outputs, "error": error}
        console.print_json(dumps({**doc, "elapsed_s": elapsed, "trace": trace_json(trace)}))
    else:
        console.print(trace_table(trace, why=why))
        classes = sorted({e.cls for e in trace if e.cls})
        console.print(
            f"run {handle.id}: {handle.status()} in {elapsed:.2f} s on {', '.join(classes)}"
        )
        if error:
            err.print(f"[bold red]failed:[/] {error}", highlight=False)
        else:
            console.print("[bold]result[/]")
            console.print_json(dumps(outputs))
    return code


def dumps(value: Any) -> str:
    """JSON for people: indented, keys sorted, anything else as its string."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def split(value: str | None) -> list[str] | None:
    return [x.strip() for x in value.split(",") if x.strip()] if value else None
