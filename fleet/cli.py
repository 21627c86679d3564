"""The ``fleet`` command line: up, worker, submit, validate, status, ops, trace, demo."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click
import redis
from rich.console import Console

from fleet.config import FleetConfig, load_config
from fleet.errors import ConfigError, FleetError, WorkflowFailed, WorkflowValidationError

# Piped output (CI logs, `| less`) gets a wide table instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
DEMO_FILE = Path(__file__).resolve().parents[1] / "examples" / "triage.yaml"
QUESTION = "Hello. Where is my order 1042? It has not arrived yet."
DEMO_INPUT = (
    "Hello, I was charged twice for order 1042 and the blender arrived broken. "
    "Please refund the second charge."
)


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(code)


def _config(ctx: click.Context) -> FleetConfig:
    cfg: FleetConfig = ctx.obj["cfg"]
    return cfg


def _parse_inputs(pairs: tuple[str, ...], inputs_json: str | None) -> dict[str, Any]:
    """``key=value`` pairs: JSON values when they parse, ``@path`` reads a file, else text."""
    values: dict[str, Any] = json.loads(Path(inputs_json).read_text()) if inputs_json else {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"'{pair}' is not key=value", param_hint="--input")
        if raw.startswith("@"):
            values[key] = Path(raw[1:]).read_text()
            continue
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


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
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, broker: str | None) -> None:
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
    try:
        ctx.obj = {"cfg": load_config()}
    except ConfigError as exc:
        _fail(str(exc), 2)


@cli.command()
@click.option("--classes", help="Comma-separated classes to start (default: all configured).")
@click.option("--flower/--no-flower", default=True, show_default=True, help="Start Flower.")
@click.option("--workdir", default=".fleet", show_default=True, help="Logs and Redis data.")
@click.option("--loglevel", default="INFO", show_default=True)
@click.pass_context
def up(ctx: click.Context, classes: str | None, flower: bool, workdir: str, loglevel: str) -> None:
    """Start a local fleet: Redis (if none is reachable), one worker per class, Flower.

    Runs until Ctrl-C, then stops everything it started.
    """
    from fleet.local import LocalFleet

    cfg = _config(ctx)
    wanted = [c.strip() for c in classes.split(",")] if classes else []
    try:
        fleet = LocalFleet(cfg, wanted, flower, Path(workdir), loglevel, say=console.print)
        with console.status("starting workers..."):
            fleet.start()
    except FleetError as exc:
        _fail(str(exc))
    console.print(f"[green]fleet is up[/]: {len(fleet.classes)} class(es). Ctrl-C stops it.")
    console.print(f"submit with: fleet --broker {cfg.broker_url} submit FILE --input key=value")
    # Ctrl-C and SIGTERM both stop the fleet (a shell starts background jobs with SIGINT
    # ignored, so the handler is installed rather than inherited).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while all(c.proc.poll() is None for c in fleet.children):
            time.sleep(0.5)
        dead = [c for c in fleet.children if c.proc.poll() is not None]
        err.print(f"[red]{dead[0].name} exited[/] (code {dead[0].proc.returncode}); stopping")
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
@click.option("--dry-run", is_flag=True, help="Print the celery command instead of running it.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def worker(
    ctx: click.Context,
    cls: str,
    concurrency: int | None,
    name: str | None,
    loglevel: str,
    dry_run: bool,
    celery_args: tuple[str, ...],
) -> None:
    """Start one worker for hardware class CLASS with its preset.

    Extra arguments after `--` go to `celery worker` unchanged.
    """
    from workers.launch import worker_argv, worker_env

    cfg = _config(ctx)
    if cls not in cfg.classes:
        _fail(f"unknown class '{cls}' (configured: {', '.join(cfg.classes)})", 2)
    argv = worker_argv(
        cfg.classes[cls],
        concurrency=concurrency,
        name=name,
        loglevel=loglevel,
        extra=list(celery_args),
    )
    if dry_run:
        console.print(" ".join(argv), highlight=False)
        return
    os.execve(argv[0], argv, worker_env(cfg, cls))


def _load_and_validate(file: str) -> Any:
    from fleet.client import Fleet

    client = Fleet()
    try:
        spec = client.validate(file)
    except WorkflowValidationError as exc:
        _fail(str(exc), 2)
    return client, spec


@cli.command()
def schema() -> None:
    """Print the JSON Schema of workflow files (for editors and CI checks)."""
    from fleet.model import WorkflowSpec

    console.print_json(json.dumps(WorkflowSpec.model_json_schema()))


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
def validate(file: str) -> None:
    """Check a workflow file without sending anything."""
    _, spec = _load_and_validate(file)
    console.print(f"[green]ok[/]: workflow '{spec.name}' with {len(spec.nodes)} node(s)")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-i", "--input", "pairs", multiple=True, help="key=value (JSON, or @file for text).")
@click.option("--inputs-json", type=click.Path(dir_okay=False), help="A JSON file of inputs.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait.")
@click.option("--no-wait", is_flag=True, help="Print the run id and return at once.")
@click.option("--priority", type=click.IntRange(0, 9), help="Message priority (0-9).")
@click.option("--sla", "sla_s", type=float, help="End-to-end latency target in seconds.")
@click.option(
    "--policy", help="Routing policy for this run (static, preferred, least-latency, cost-sla)."
)
@click.option("--json", "as_json", is_flag=True, help="Print result and trace as JSON.")
def submit(
    file: str,
    pairs: tuple[str, ...],
    inputs_json: str | None,
    timeout: float,
    no_wait: bool,
    priority: int | None,
    sla_s: float | None,
    policy: str | None,
    as_json: bool,
) -> None:
    """Validate, enqueue and (by default) wait for a workflow; print its result and trace."""
    client, spec = _load_and_validate(file)
    inputs = _parse_inputs(pairs, inputs_json)
    try:
        handle = client.submit(spec, inputs, priority=priority, sla_s=sla_s, policy=policy)
    except (WorkflowValidationError, ValueError) as exc:
        _fail(str(exc), 2)
    except redis.RedisError as exc:
        _fail(f"cannot reach the broker/backend at {client.cfg.broker_url}: {exc} (try `fleet up`)")
    if no_wait:
        console.print(handle.id)
        return
    sys.exit(_print_outcome(handle, timeout, as_json))


def _print_outcome(handle: Any, timeout: float, as_json: bool) -> int:
    """Wait for a run, print its trace and result (or error); the exit code to use."""
    from fleet.report import dumps, trace_json, trace_table

    start = time.monotonic()
    code, outputs, error = 0, None, None
    try:
        with console.status(f"run {handle.id} ..."):
            outputs = handle.get(timeout=timeout)
    except WorkflowFailed as exc:
        code, error = 1, str(exc)
    except FleetError as exc:
        code, error = 1, str(exc)
    elapsed = time.monotonic() - start
    trace = handle.trace()
    if as_json:
        doc = {"run": handle.id, "status": handle.status(), "outputs": outputs, "error": error}
        console.print_json(dumps({**doc, "elapsed_s": elapsed, "trace": trace_json(trace)}))
    else:
        console.print(trace_table(trace))
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


@cli.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
def trace(run_id: str, as_json: bool) -> None:
    """Show the status and trace of a run."""
    from fleet.client import Fleet

    sys.exit(_print_outcome(Fleet().handle(run_id), 0.0, as_json))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Workers per class and queue depths."""
    from fleet.report import status_table
    from fleet.state import StateReader

    cfg = _config(ctx)
    try:
        state = StateReader(cfg).read()
    except redis.RedisError as exc:
        _fail(f"cannot reach {cfg.backend_url}: {exc}")
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
    from fleet.ops import registry
    from fleet.report import ops_table

    registry.load_modules(_config(ctx).op_modules)
    console.print(ops_table(registry))


@cli.command()
@click.option("--question", default=QUESTION, show_default=True, help="What the caller asks.")
@click.option("--triage", is_flag=True, help="Run the model-free ticket-triage sample instead.")
@click.option("--workdir", default=".fleet", show_default=True, help="Logs, audio, databases.")
@click.option("--flower/--no-flower", default=False, show_default=True)
@click.pass_context
def demo(ctx: click.Context, question: str, triage: bool, workdir: str, flower: bool) -> None:
    """The main job: a local fleet answers a spoken question with real models.

    Speech-to-text, embeddings, FAISS retrieval, an LLM that decides to call the order-status
    API, the LLM's answer and text-to-speech -- each step on the class that suits it.
    """
    from fleet.demo import run_voice_demo

    cfg = _config(ctx)
    path = Path(workdir).resolve()
    (path / "logs").mkdir(parents=True, exist_ok=True)
    try:
        if triage:
            _triage_demo(cfg, path, flower)
        else:
            run_voice_demo(cfg, path, question, flower, console.print, _show)
    except (FleetError, WorkflowValidationError) as exc:
        _fail(str(exc))


def _show(handle: Any, elapsed: float) -> None:
    code = _print_outcome(handle, 600.0, False)
    if code:
        sys.exit(code)


def _triage_demo(cfg: FleetConfig, workdir: Path, flower: bool) -> None:
    from fleet.local import LocalFleet

    client, spec = _load_and_validate(str(DEMO_FILE))
    fleet = LocalFleet(cfg, [], flower, workdir, "WARNING", say=console.print)
    with console.status("starting the local fleet..."):
        fleet.start()
    try:
        _show(client.submit(spec, {"ticket": DEMO_INPUT}), 0.0)
    finally:
        fleet.stop()


@cli.command()
@click.option("--ops", help="Comma-separated ops (default: every op with sample inputs).")
@click.option("--classes", help="Comma-separated classes (default: every class with live workers).")
@click.option("--reps", default=3, show_default=True, help="Runs per input size.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="Profile file (default: FLEET_PROFILES or the packaged one).",
)
@click.option(
    "--merge/--replace", default=True, show_default=True, help="Keep profiles not re-measured."
)
def profile(ops: str | None, classes: str | None, reps: int, out: str | None, merge: bool) -> None:
    """Measure ops on the live workers of each class and write the profile store."""
    from rich.progress import Progress

    from fleet.client import Fleet
    from fleet.profiles import ProfileStore, profiles_path
    from fleet.profiling import plan_measurements, profile_fleet, steps_needed

    client = Fleet()
    target = Path(out) if out else profiles_path()
    try:
        pairs = plan_measurements(client, _split(ops), _split(classes))
    except (ValueError, redis.RedisError) as exc:
        _fail(str(exc))
    if not pairs:
        _fail("nothing to measure: no live worker can run the selected ops (try `fleet up`)")
    base = ProfileStore.load(target) if merge else ProfileStore()
    with Progress(console=console) as bar:
        task = bar.add_task(f"{len(pairs)} op/class pairs", total=steps_needed(pairs, reps))
        store = profile_fleet(client, pairs, reps, lambda: bar.advance(task), base)
    store.save(target)
    from fleet.report import profiles_table

    console.print(profiles_table(store, pairs))
    console.print(f"wrote {target}")


@cli.command()
@click.option("--quick", is_flag=True, help="A few-minute smoke run (CI): small mix, one round.")
@click.option("--rate", type=float, help="Open loop: Poisson arrivals per second.")
@click.option("--concurrency", type=int, help="Closed loop: workflows in flight.")
@click.option("--count", type=int, help="Workflows per deployment and round.")
@click.option(
    "--duration", type=float, help="Seconds of arrivals per deployment and round (with --rate)."
)
@click.option(
    "--rounds", type=int, help="Rounds; deployments are interleaved A B C D, D C B A, ..."
)
@click.option("--seed", default=7, show_default=True)
@click.option(
    "--deployments", help="Comma-separated: homogeneous, static, least-latency, cost-sla."
)
@click.option("--out", default="bench/results", show_default=True, type=click.Path(file_okay=False))
def bench(
    quick: bool,
    rate: float | None,
    concurrency: int | None,
    count: int | None,
    duration: float | None,
    rounds: int | None,
    seed: int,
    deployments: str | None,
    out: str,
) -> None:
    """Heterogeneous routing against homogeneous and static deployments, same workload.

    Full mode (default): the voice agent, RAG and triage workflows arriving at 0.3/s for
    60 s per deployment, two rounds. Writes bench.json, bench.csv and PNG plots to --out.
    """
    from rich.progress import Progress

    from fleet.bench import Workload, run_bench
    from fleet.bench import deployments as all_deployments
    from fleet.benchreport import bench_table, ratios

    if quick:
        workload = Workload(
            rate=rate,
            concurrency=None if rate else (concurrency or 2),
            count=count or 8,
            duration_s=duration,
            seed=seed,
        )
    elif rate or concurrency:
        workload = Workload(
            rate=rate, concurrency=concurrency, count=count, duration_s=duration, seed=seed
        )
    else:
        workload = Workload(rate=0.3, count=count, duration_s=duration or 60.0, seed=seed)
    names = _split(deployments) or [d.name for d in all_deployments()]
    n_rounds = rounds or (1 if quick else 2)
    from fleet.bench import jobs

    per = len(workload.plan(jobs(quick)))
    with Progress(console=console) as bar:
        task = bar.add_task("workflows", total=per * len(names) * n_rounds)
        rows, paths, meta = run_bench(
            workload,
            quick,
            n_rounds,
            names,
            Path(out),
            bar.console.print,
            lambda: bar.advance(task),
        )
    console.print(bench_table(rows))
    fleet_rows = [r for r in rows if r["deployment"] in ("least-latency", "cost-sla")]
    if fleet_rows and len(rows) > 1:
        best = min(fleet_rows, key=lambda r: r["p95_s"])["deployment"]
        for other, ratio in ratios(rows, best).items():
            console.print(f"{best} vs {other}: " + ", ".join(f"{k} x{v}" for k, v in ratio.items()))
    console.print(f"{meta['seconds']} s; wrote " + ", ".join(str(p) for p in paths))


def _split(value: str | None) -> list[str] | None:
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


def main() -> None:
    cli(prog_name="fleet")


if __name__ == "__main__":
    main()
