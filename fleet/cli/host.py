"""Commands about this host and its live workers: doctor, ops, metrics, profile, gpu-check.

What a command needs beyond click is imported inside it: `fleet --help` loads none of it.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import click

from fleet.cli.common import config, console, fail, split
from fleet.deploy.signals import stops_on_signals
from fleet.errors import FleetError


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check this host for every class: device, runtimes, GPU builds, models, problems.

    Each runtime (llama.cpp, CTranslate2, torch) is asked about the GPU in a process of its
    own. Exits 1 when something is wrong, with the fix.
    """
    from fleet.cli.tables import doctor_table
    from fleet.diagnostics.doctor import diagnose
    from fleet.sdk.registry import registry

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


@click.command()
@click.pass_context
def ops(ctx: click.Context) -> None:
    """List the registered ops with their kind and hardware profile."""
    from fleet.cli.tables import ops_table
    from fleet.sdk.registry import registry

    cfg = config(ctx)
    registry.load(cfg.op_modules, cfg.op_plugins)
    console.print(ops_table(registry))


@click.command()
@click.option("--port", type=int, show_default="metrics_port: 9808", help="HTTP port for /metrics.")
@click.option("--address", default="127.0.0.1", help="Address to bind /metrics to.")
@click.pass_context
def metrics(ctx: click.Context, port: int | None, address: str) -> None:
    """Serve Prometheus metrics per class: queue depth, busy steps, workers, slots."""
    from prometheus_client import REGISTRY, start_http_server

    from fleet.measurement.metrics import FleetCollector

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


@click.command()
@click.option(
    "--ops", show_default="every op with sample inputs", help="Comma-separated ops to measure."
)
@click.option(
    "--classes",
    show_default="every class with live workers",
    help="Comma-separated classes to measure on.",
)
@click.option("--reps", default=3, help="Runs per input size.")
@click.option(
    "--save",
    type=click.Path(dir_okay=False),
    show_default="FLEET_PROFILES, else profiles.json in the data folder",
    help="The profile file to write.",
)
@click.option("--merge/--replace", default=True, help="Keep profiles not re-measured.")
def profile(ops: str | None, classes: str | None, reps: int, save: str | None, merge: bool) -> None:
    """Measure ops on the live workers of each class and write the profile store."""
    import redis
    from rich.progress import Progress

    from fleet.cli.tables import profiles_table
    from fleet.client.client import Fleet
    from fleet.measurement.profiling import plan_measurements, profile_fleet, steps_needed
    from fleet.routing.profiles import PACKAGED, ProfileStore, profiles_path, user_profiles

    client = Fleet()
    target = Path(save) if save else profiles_path()
    if not save and target.resolve() == PACKAGED.resolve():
        target = user_profiles()  # never write into the installed package
    try:
        pairs = plan_measurements(client, split(ops), split(classes))
    except (ValueError, redis.RedisError) as exc:
        fail(str(exc))
    if not pairs:
        fail("nothing to measure: no live worker can run the selected ops (try `fleet up`)")
    base = ProfileStore()
    if merge:  # keep what is in force (the packaged profiles, at first) for pairs not measured
        base = ProfileStore.load(target if target.is_file() else profiles_path())
    with Progress(console=console) as bar:
        batching = {c: s.concurrency for c, s in client.cfg.classes.items() if s.batches}
        total = steps_needed(pairs, reps, batching)
        task = bar.add_task(f"{len(pairs)} op/class pairs", total=total)
        store = profile_fleet(client, pairs, reps, lambda: bar.advance(task), base)
    store.save(target)
    console.print(profiles_table(store, pairs))
    console.print(f"wrote {target}")


@click.command("gpu-check")
@click.option("--skip-build", is_flag=True, help="Keep the installed llama-cpp-python build.")
@click.option("--model", default="gemma3-270m", help="LLM (or a .gguf).")
@click.option("--tokens", default=32, help="Greedy tokens to generate.")
@click.option("--profile/--no-profile", default=True, help="Run fleet profile for the LLM ops.")
@click.option(
    "--out",
    default=".fleet/gpu-check",
    type=click.Path(file_okay=False),
    help="Folder for gpu-check.json, the profiles measured and the logs.",
)
@click.pass_context
@stops_on_signals
def gpu_check(
    ctx: click.Context, skip_build: bool, model: str, tokens: int, profile: bool, out: str
) -> None:
    """The GPU path end to end: CUDA build, P/D both ways, tokens/s per class.

    Builds llama-cpp-python with CUDA for this GPU (unless already a GPU build), starts
    gpu, cpu and io workers on a Redis of its own, runs prefill on gpu -> decode on cpu and
    back, checks the text equals a single-class llm.generate, and measures tokens/s per
    class. Runs on a CPU host too (everything on the CPU). Exits 1 when a check fails.
    """
    from fleet.diagnostics.gpucheck import run_check, write

    workdir = Path(out).resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    profile_out = workdir / "profiles-gpu-check.json" if profile else None
    try:
        report = run_check(
            config(ctx),
            workdir,
            console.print,
            skip_build=skip_build,
            model=model,
            tokens=tokens,
            profile_out=profile_out,
        )
    except FleetError as exc:  # WorkflowValidationError among them
        fail(str(exc))
    write(report, workdir / "gpu-check.json")
    console.print(
        f"GPUs: {', '.join(report.gpus) or 'none'}; llama.cpp GPU build: "
        f"{report.llama_gpu_build}; build: {report.built}"
    )
    for direction, same in report.pd.items():
        console.print(f"P/D {direction}: {'same text' if same else '[red]DIFFERENT text[/]'}")
    for cls, text in report.stt.items():
        console.print(f"speech-to-text on {cls}: {text!r}", highlight=False)
    if report.stt and not report.stt_ok:
        console.print("[red]speech-to-text did not hear the number on every class[/]")
    for cls, rates in report.tokens_per_s.items():
        shown = ", ".join(f"{k.removesuffix('_tok_s')} {v} tok/s" for k, v in rates.items())
        console.print(f"{cls:<4} {shown}")
    console.print(f"report: {workdir / 'gpu-check.json'} ({report.seconds} s)")
    sys.exit(0 if report.ok else 1)
