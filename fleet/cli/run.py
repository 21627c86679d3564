"""Commands that run a fleet and its workflows: up, submit, trace, status, validate,
compile, schema.

What a command needs beyond click is imported inside it: `fleet --help` loads none of it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from fleet.cli.common import (
    check_run_inputs,
    config,
    console,
    fail,
    key_path,
    load_and_validate,
    parse_inputs,
    plan_config,
    print_outcome,
    save_outputs,
)
from fleet.cli.follow import print_events
from fleet.config import FleetConfig, redact
from fleet.deploy.signals import stops_on_signals
from fleet.errors import ConfigError, FleetError, WorkflowValidationError


def submit_hint(cfg: FleetConfig) -> str:
    """How to submit to this fleet, to paste as it is: a URL with a password is named by
    the environment variable that holds it, never printed (not even as ****)."""
    urls = [("--broker", "FLEET_BROKER_URL", cfg.broker_url)]
    if cfg.result_backend:
        urls.append(("--backend", "FLEET_RESULT_BACKEND", cfg.result_backend))
    flags, secret = [], []
    for flag, var, url in urls:
        if redact(url) != url:
            secret.append(var)
        else:
            flags.append(f"{flag} {url}")
    line = " ".join(["fleet", *flags, "submit FILE --input key=value"])
    if secret:
        line += f"  (with {' and '.join(secret)} set as for this fleet: not printed)"
    return line


@click.command()
@click.option(
    "--classes", show_default="every configured class", help="Comma-separated classes to start."
)
@click.option("--flower/--no-flower", default=True, help="Start Flower.")
@click.option(
    "--flower-port",
    type=click.IntRange(1, 65535),
    show_default="flower_port, FLEET_FLOWER_PORT or 5555",
    help="Flower's port on 127.0.0.1.",
)
@click.option("--workdir", default=".fleet", help="Folder for logs and Redis data.")
@click.option("--loglevel", default="INFO", help="Log level of the workers and Flower.")
@click.option(
    "--autoscale",
    is_flag=True,
    help="Add and remove workers per class from queue depth, within min/max_workers.",
)
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(dir_okay=False),
    help="A plan (`fleet plan --save`): its classes, worker counts, routes, budgets, splits.",
)
@click.pass_context
@stops_on_signals
def up(
    ctx: click.Context,
    classes: str | None,
    flower: bool,
    flower_port: int | None,
    workdir: str,
    loglevel: str,
    autoscale: bool,
    plan_file: str | None,
) -> None:
    """Start a local fleet: Redis (if none is reachable), each class's workers, Flower.

    Each class runs its `workers` worker processes (1 unless a plan sized it). With --plan,
    the plan's classes run as planned, scaled down (with a note) to what this host can hold:
    two worker processes per core. With --autoscale, each class grows and shrinks between its
    min_workers and max_workers from its queue (docs/operations.md says the rule). Runs until
    Ctrl-C, then stops everything it started. A worker, Flower or the Redis it started that
    dies is restarted with backoff; the others keep running.
    """
    from fleet.deploy.autoscale import Autoscaler
    from fleet.deploy.local import LocalFleet

    cfg = config(ctx) if plan_file is None else plan_config(plan_file)
    if flower_port is not None:
        cfg = cfg.model_copy(update={"flower_port": flower_port})
    wanted = [c.strip() for c in classes.split(",")] if classes else []
    if plan_file is not None and not wanted:  # the plan's classes, not the built-in ones
        wanted = _planned_classes(plan_file)
    try:
        fleet = LocalFleet(cfg, wanted, flower, Path(workdir), loglevel, say=console.print)
    except FleetError as exc:
        fail(str(exc))
    cut = fleet.fit_to_host(2 * (os.cpu_count() or 1))
    if cut:
        console.print(f"[yellow]note[/]: {cut}")
    # Ctrl-C and SIGTERM (stops_on_signals) stop what was started, at any moment: also while
    # it starts
    try:
        try:
            with console.status("starting workers..."):
                fleet.start()
        except FleetError as exc:
            fail(str(exc))
        console.print(f"[green]fleet is up[/]: {len(fleet.classes)} class(es). Ctrl-C stops it.")
        console.print(f"submit with: {submit_hint(cfg)}")
        scaler = Autoscaler(fleet, say=console.print) if autoscale else None
        while True:  # a process that dies is restarted (with backoff); the rest go on
            fleet.supervise()
            if scaler is not None:
                scaler.step()
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("\nstopping the fleet...")
    finally:
        fleet.stop()
    console.print("stopped.")


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-i", "--input", "pairs", multiple=True, help="key=value (JSON, or @file for text).")
@click.option("--inputs-json", type=click.Path(dir_okay=False), help="A JSON file of inputs.")
@click.option(
    "--upload",
    "uploads",
    multiple=True,
    metavar="KEY=PATH",
    help="Send a local file (or folder) into the fleet; the input gets its reference.",
)
@click.option(
    "--save",
    "saves",
    multiple=True,
    metavar="OUTPUT=PATH",
    help="Write an output that is a blob reference (audio...) to a local file.",
)
@click.option("--timeout", default=120.0, help="Seconds to wait.")
@click.option("--no-wait", is_flag=True, help="Print the run id and return at once.")
@click.option(
    "--follow",
    is_flag=True,
    help="Print each step as it starts and ends, and the text of LLM steps with "
    "stream: true as it is written; then the result.",
)
@click.option(
    "--priority",
    type=click.IntRange(0, 9),
    help="0-9: a higher priority is served sooner from each queue (none: 0).",
)
@click.option("--sla", "sla_s", type=float, help="End-to-end latency target in seconds.")
@click.option(
    "--policy", help="Routing policy for this run (static, preferred, least-latency, cost-sla)."
)
@click.option("--json", "as_json", is_flag=True, help="Print result and trace as JSON.")
@click.option("--why", is_flag=True, help="Say under the trace why each step went where it did.")
def submit(
    file: str,
    pairs: tuple[str, ...],
    inputs_json: str | None,
    uploads: tuple[str, ...],
    saves: tuple[str, ...],
    timeout: float,
    no_wait: bool,
    follow: bool,
    priority: int | None,
    sla_s: float | None,
    policy: str | None,
    as_json: bool,
    why: bool,
) -> None:
    """Validate, enqueue and (by default) wait for a workflow; print its result and trace."""
    import redis

    client, spec = load_and_validate(file)
    inputs, lines = parse_inputs(pairs, inputs_json)
    to_upload = dict(key_path(item, "--upload") for item in uploads)
    to_save = dict(key_path(item, "--save") for item in saves)
    check_run_inputs(spec, {**inputs, **to_upload}, inputs_json, lines)
    try:
        for key, path in to_upload.items():
            inputs[key] = client.upload(path)
        handle = client.submit(
            spec, inputs, priority=priority, sla_s=sla_s, policy=policy, follow=follow
        )
    except (WorkflowValidationError, ValueError, FileNotFoundError) as exc:
        fail(str(exc), 2)
    except redis.RedisError as exc:
        where = redact(client.cfg.broker_url)
        fail(f"cannot reach the broker/backend at {where}: {exc} (try `fleet up`)")
    except FleetError as exc:  # sending failed after retries: the message names the broker
        fail(f"{exc} (is the broker up? try `fleet up`)")
    if no_wait:
        console.print(handle.id)
        return
    if follow:
        print_events(handle, timeout)
    code = print_outcome(handle, timeout, as_json, why)
    if code == 0 and to_save:
        save_outputs(client, handle, to_save)
    sys.exit(code)


@click.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print status, result and trace as JSON.")
@click.option("--why", is_flag=True, help="Say under the trace why each step went where it did.")
@click.pass_context
def trace(ctx: click.Context, run_id: str, as_json: bool, why: bool) -> None:
    """Show the status and trace of a run."""
    from fleet.client.client import Fleet
    from fleet.deploy.local import broker_reachable

    cfg = config(ctx)
    if not broker_reachable(cfg.backend_url):  # say so at once, not after retries
        fail(f"cannot reach the run store at {redact(cfg.backend_url)} (is the fleet up?)")
    handle = Fleet().handle(run_id)
    if handle.info() is None:
        fail(f"no run {run_id}: unknown, or its record expired (run_ttl {cfg.run_ttl} s)")
    sys.exit(print_outcome(handle, 0.0, as_json, why))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Workers per class and queue depths."""
    import redis

    from fleet.cli.tables import status_table
    from fleet.routing.state import StateReader

    cfg = config(ctx)
    try:
        state = StateReader(cfg).read()
    except redis.RedisError as exc:
        fail(f"cannot reach {redact(cfg.backend_url)}: {exc}")
    if as_json:
        doc = {
            c: {
                "depth": state.depth.get(c),
                "busy": state.busy(c),
                "slots": state.slots(c),
                "workers": [w.hostname for w in state.workers[c]],
            }
            for c in cfg.classes
        }
        console.print_json(json.dumps(doc))
        return
    console.print(status_table(cfg, state))


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
def validate(file: str) -> None:
    """Check a workflow file without sending anything."""
    _, spec = load_and_validate(file)
    console.print(f"[green]ok[/]: workflow '{spec.name}' with {len(spec.nodes)} node(s)")


@click.command()
def schema() -> None:
    """Print the JSON Schema of workflow files (for editors and CI checks)."""
    from fleet.workflow.model import WorkflowSpec

    console.print_json(json.dumps(WorkflowSpec.model_json_schema()))


@click.command(name="compile")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--canvas",
    "as_canvas",
    is_flag=True,
    help="Print the Celery canvas it compiles to (Workflow.to_canvas) instead.",
)
def compile_(file: str, as_canvas: bool) -> None:
    """Print what a workflow compiles to, without sending anything.

    By default: its top-level nodes level by level, what each runs, the nodes it reads and the
    classes it may be routed to (preferred first). With --canvas: the chain, groups and
    chords of the Celery canvas, each node's task and where it may go.
    """
    from fleet.client.canvas import canvas_nodes, describe
    from fleet.engine.compiler import compile_workflow
    from fleet.sdk.registry import registry

    client, spec = load_and_validate(file)
    compiled = compile_workflow(spec, client.cfg, registry)
    control = client.cfg.classes[client.cfg.control_class].queue_name
    if as_canvas:
        click.echo(describe(compiled, control))
        return
    click.echo(f"workflow '{spec.name}': {len(spec.nodes)} node(s)")
    for depth, level in enumerate(canvas_nodes(compiled, control)):
        for node in level:
            reads = ", ".join(sorted(compiled.root.deps[node.name])) or "inputs"
            where = ", ".join(node.classes)
            click.echo(f"  {depth}  {node.name}: {node.what}  reads {reads}  -> {where}")


def _planned_classes(plan_file: str) -> list[str]:
    """The classes a plan file defines (a configuration also has the built-in ones), read
    as the configuration is: TOML, or YAML by its suffix."""
    from fleet.config import read_config_file

    try:
        tables = read_config_file(Path(plan_file)).get("classes") or {}
    except ConfigError as exc:
        fail(f"{plan_file}: {exc}", 2)
    if not isinstance(tables, dict):
        fail(f"{plan_file}: classes must be a table of classes", 2)
    off = [n for n, t in tables.items() if isinstance(t, dict) and t.get("enabled") is False]
    return [name for name in tables if name not in off]
