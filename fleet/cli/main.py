"""The ``fleet`` command line: up, worker, submit, validate, status, ops, trace, schema
(and, through the ``agent_fleet.commands`` entry points, demo, profile and bench)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import click
import redis

from fleet.cli.common import (
    check_run_inputs,
    config,
    console,
    fail,
    key_path,
    load_and_validate,
    parse_inputs,
    print_outcome,
    save_outputs,
)
from fleet.config import load_config, redact
from fleet.constants import COMMANDS_GROUP
from fleet.errors import ConfigError, FleetError, WorkflowValidationError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="FLEET_CONFIG",
    help="Config file (TOML or YAML). Default: ./fleet.toml if present.",
)
@click.option(
    "--broker", envvar="FLEET_BROKER_URL", help="Broker URL (default redis://127.0.0.1:6379/0)."
)
@click.option(
    "--backend",
    envvar="FLEET_RESULT_BACKEND",
    help="Result backend / run store URL (default: the broker).",
)
@click.pass_context
def cli(
    ctx: click.Context, config_path: str | None, broker: str | None, backend: str | None
) -> None:
    """Run agent workflows on a fleet of Celery workers grouped by hardware class.

    Each workflow step goes to a class queue (gpu, npu-lite, cpu, io) chosen when the step
    is sent, from the op's profile and the live workers. Start a local fleet with
    `fleet up`, submit with `fleet submit FILE`, watch with `fleet status` or Flower.
    """
    # The Celery app reads its configuration from the environment when first imported.
    if config_path:
        os.environ["FLEET_CONFIG"] = str(Path(config_path).resolve())
    if broker:
        os.environ["FLEET_BROKER_URL"] = broker
    if backend:
        os.environ["FLEET_RESULT_BACKEND"] = backend
    try:
        ctx.obj = {"cfg": load_config()}
    except ConfigError as exc:
        fail(str(exc), 2)


@cli.command()
@click.option("--classes", help="Comma-separated classes to start (default: all configured).")
@click.option("--flower/--no-flower", default=True, show_default=True, help="Start Flower.")
@click.option("--workdir", default=".fleet", show_default=True, help="Logs and Redis data.")
@click.option("--loglevel", default="INFO", show_default=True)
@click.pass_context
def up(ctx: click.Context, classes: str | None, flower: bool, workdir: str, loglevel: str) -> None:
    """Start a local fleet: Redis (if none is reachable), one worker per class, Flower.

    Runs until Ctrl-C, then stops everything it started. A worker, Flower or the Redis it
    started that dies is restarted with backoff; the others keep running.
    """
    from fleet.runtime.local import LocalFleet

    cfg = config(ctx)
    wanted = [c.strip() for c in classes.split(",")] if classes else []
    try:
        fleet = LocalFleet(cfg, wanted, flower, Path(workdir), loglevel, say=console.print)
        with console.status("starting workers..."):
            fleet.start()
    except FleetError as exc:
        fail(str(exc))
    console.print(f"[green]fleet is up[/]: {len(fleet.classes)} class(es). Ctrl-C stops it.")
    backend = f" --backend {redact(cfg.backend_url)}" if cfg.result_backend else ""
    broker = redact(cfg.broker_url)
    console.print(f"submit with: fleet --broker {broker}{backend} submit FILE --input key=value")
    # Ctrl-C and SIGTERM both stop the fleet (a shell starts background jobs with SIGINT
    # ignored, so the handler is installed rather than inherited).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:  # a process that dies is restarted (with backoff); the rest go on
            fleet.supervise()
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("\nstopping the fleet...")
    finally:
        fleet.stop()
    console.print("stopped.")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("cls", metavar="CLASS")
@click.option("-c", "--concurrency", type=int, help="Override the preset's concurrency.")
@click.option("-n", "--name", help="Worker node name (default CLASS-PID@HOST).")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option(
    "--device",
    "gpu",
    type=click.IntRange(0),
    help="The GPU this worker uses (sets CUDA_VISIBLE_DEVICES): one worker per GPU.",
)
@click.option("--dry-run", is_flag=True, help="Print the celery command instead of running it.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def worker(
    ctx: click.Context,
    cls: str,
    concurrency: int | None,
    name: str | None,
    loglevel: str,
    gpu: int | None,
    dry_run: bool,
    celery_args: tuple[str, ...],
) -> None:
    """Start one worker for hardware class CLASS with its preset.

    Extra arguments after `--` go to `celery worker` unchanged. `--dry-run` prints the
    command, the device its processes bind to and the runtimes they may load.
    """
    from fleet.registry import registry
    from fleet.runtime.devices import detect_gpus
    from fleet.runtime.launch import worker_argv, worker_env

    cfg = config(ctx)
    if cls not in cfg.classes:
        fail(f"unknown class '{cls}' (configured: {', '.join(cfg.classes)})", 2)
    if gpu is not None:
        # Before any CUDA library loads in the worker: it sees this GPU only, as cuda:0.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
        name = name or f"{cls}-gpu{gpu}-{os.getpid()}@%h"
    argv = worker_argv(
        cfg.classes[cls],
        concurrency=concurrency,
        name=name,
        loglevel=loglevel,
        extra=list(celery_args),
    )
    if dry_run:
        spec = cfg.classes[cls]
        registry.load(cfg.op_modules, cfg.op_plugins)
        gpus = detect_gpus()
        if spec.device != "cuda":
            device = "cpu (the class binds to the CPU)"
        elif gpus.gpus:
            device = f"cuda:0 = {gpus.gpus[0].name} (GPU {gpus.gpus[0].index})"
        else:
            device = f"cpu ({gpus.note})"
        runtimes = ", ".join(sorted(registry.class_runtimes(cls, cfg))) or "none (plain Python)"
        console.print(" ".join(argv), highlight=False)
        console.print(f"device: {device}\nruntimes: {runtimes}", highlight=False)
        return
    os.execve(argv[0], argv, worker_env(cfg, cls))


@cli.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check this host for every class: device, runtimes, GPU builds, models, problems.

    Each runtime (llama.cpp, CTranslate2, torch) is asked about the GPU in a process of its
    own. Exits 1 when something is wrong, with the fix.
    """
    from fleet.cli.report import doctor_table
    from fleet.registry import registry
    from fleet.runtime.doctor import diagnose

    cfg = config(ctx)
    registry.load(cfg.op_modules, cfg.op_plugins)
    with console.status("asking each runtime about the GPU..."):
        report = diagnose(cfg, registry)
    if as_json:
        console.print_json(json.dumps(report.to_dict()))
    else:
        console.print(doctor_table(report))
    wrong = report.problems + [p for c in report.classes for p in c.problems]
    sys.exit(1 if wrong else 0)


@cli.command()
def schema() -> None:
    """Print the JSON Schema of workflow files (for editors and CI checks)."""
    from fleet.workflow.model import WorkflowSpec

    console.print_json(json.dumps(WorkflowSpec.model_json_schema()))


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
def validate(file: str) -> None:
    """Check a workflow file without sending anything."""
    _, spec = load_and_validate(file)
    console.print(f"[green]ok[/]: workflow '{spec.name}' with {len(spec.nodes)} node(s)")


@cli.command()
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
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait.")
@click.option("--no-wait", is_flag=True, help="Print the run id and return at once.")
@click.option("--priority", type=click.IntRange(0, 9), help="Message priority (0-9).")
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
    priority: int | None,
    sla_s: float | None,
    policy: str | None,
    as_json: bool,
    why: bool,
) -> None:
    """Validate, enqueue and (by default) wait for a workflow; print its result and trace."""
    client, spec = load_and_validate(file)
    inputs, lines = parse_inputs(pairs, inputs_json)
    to_upload = dict(key_path(item, "--upload") for item in uploads)
    to_save = dict(key_path(item, "--save") for item in saves)
    check_run_inputs(spec, {**inputs, **to_upload}, inputs_json, lines)
    try:
        for key, path in to_upload.items():
            inputs[key] = client.upload(path)
        handle = client.submit(spec, inputs, priority=priority, sla_s=sla_s, policy=policy)
    except (WorkflowValidationError, ValueError, FileNotFoundError) as exc:
        fail(str(exc), 2)
    except redis.RedisError as exc:
        where = redact(client.cfg.broker_url)
        fail(f"cannot reach the broker/backend at {where}: {exc} (try `fleet up`)")
    if no_wait:
        console.print(handle.id)
        return
    code = print_outcome(handle, timeout, as_json, why)
    if code == 0 and to_save:
        save_outputs(client, handle, to_save)
    sys.exit(code)


@cli.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print status, result and trace as JSON.")
@click.option("--why", is_flag=True, help="Say under the trace why each step went where it did.")
@click.pass_context
def trace(ctx: click.Context, run_id: str, as_json: bool, why: bool) -> None:
    """Show the status and trace of a run."""
    from fleet.runtime.client import Fleet
    from fleet.runtime.local import broker_reachable

    cfg = config(ctx)
    if not broker_reachable(cfg.backend_url):  # say so at once, not after retries
        fail(f"cannot reach the run store at {redact(cfg.backend_url)} (is the fleet up?)")
    handle = Fleet().handle(run_id)
    if handle.info() is None:
        fail(f"no run {run_id}: unknown, or its record expired (run_ttl {cfg.run_ttl} s)")
    sys.exit(print_outcome(handle, 0.0, as_json, why))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Workers per class and queue depths."""
    from fleet.cli.report import status_table
    from fleet.routing.state import StateReader

    cfg = config(ctx)
    try:
        state = StateReader(cfg).read()
    except redis.RedisError as exc:
        fail(f"cannot reach {cfg.backend_url}: {exc}")
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


@cli.command()
@click.pass_context
def ops(ctx: click.Context) -> None:
    """List the registered ops with their kind and hardware profile."""
    from fleet.cli.report import ops_table
    from fleet.registry import registry

    cfg = config(ctx)
    registry.load(cfg.op_modules, cfg.op_plugins)
    console.print(ops_table(registry))


@cli.command()
@click.option("--port", type=int, help="HTTP port for /metrics (default: metrics_port, 9808).")
@click.option("--address", default="127.0.0.1", show_default=True)
@click.pass_context
def metrics(ctx: click.Context, port: int | None, address: str) -> None:
    """Serve Prometheus metrics per class: queue depth, busy steps, workers, slots."""
    from prometheus_client import REGISTRY, start_http_server

    from fleet.runtime.metrics import FleetCollector

    cfg = config(ctx)
    port = port or cfg.metrics_port
    REGISTRY.register(FleetCollector(cfg))
    start_http_server(port, addr=address)
    console.print(f"metrics on http://{address}:{port}/metrics (Ctrl-C stops)")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("stopped.")


def add_plugin_commands(group: click.Group) -> None:
    """Add the commands of the ``agent_fleet.commands`` entry points (the tooling layer's
    demo, profile and bench; a third-party package can add its own the same way)."""
    for entry in entry_points(group=COMMANDS_GROUP):
        command = entry.load()
        if isinstance(command, click.Command) and command.name not in group.commands:
            group.add_command(command)


add_plugin_commands(cli)


def main() -> None:
    cli(prog_name="fleet")


if __name__ == "__main__":
    main()
