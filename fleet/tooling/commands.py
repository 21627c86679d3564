"""The long-running CLI commands: demo (the main job), profile and bench."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import redis

from fleet.cli.common import (
    config,
    console,
    err,
    fail,
    load_and_validate,
    print_outcome,
    split,
)
from fleet.cli.report import dumps
from fleet.config import FleetConfig
from fleet.errors import FleetError, WorkflowValidationError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEMO_FILE = EXAMPLES / "triage.yaml"
QUESTION = "Hello. Where is my order 1042? It has not arrived yet."
DEMO_INPUT = (
    "Hello, I was charged twice for order 1042 and the blender arrived broken. "
    "Please refund the second charge."
)


@click.command()
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
    from fleet.tooling.demo import run_voice_demo

    cfg = config(ctx)
    path = Path(workdir).resolve()
    (path / "logs").mkdir(parents=True, exist_ok=True)
    try:
        if triage:
            _triage_demo(cfg, path, flower)
        else:
            run_voice_demo(cfg, path, question, flower, console.print, _show)
    except (FleetError, WorkflowValidationError) as exc:
        fail(str(exc))


def _show(handle: Any, elapsed: float) -> None:
    code = print_outcome(handle, 600.0, False)
    if code:
        sys.exit(code)


def _triage_demo(cfg: FleetConfig, workdir: Path, flower: bool) -> None:
    from fleet.runtime.local import LocalFleet

    client, spec = load_and_validate(str(DEMO_FILE))
    fleet = LocalFleet(cfg, [], flower, workdir, "WARNING", say=console.print)
    with console.status("starting the local fleet..."):
        fleet.start()
    try:
        _show(client.submit(spec, {"ticket": DEMO_INPUT}), 0.0)
    finally:
        fleet.stop()


@click.command()
@click.option("--ops", help="Comma-separated ops (default: every op with sample inputs).")
@click.option("--classes", help="Comma-separated classes (default: every class with live workers).")
@click.option("--reps", default=3, show_default=True, help="Runs per input size.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="Profile file (default: FLEET_PROFILES, else profiles.json in the data folder).",
)
@click.option(
    "--merge/--replace", default=True, show_default=True, help="Keep profiles not re-measured."
)
def profile(ops: str | None, classes: str | None, reps: int, out: str | None, merge: bool) -> None:
    """Measure ops on the live workers of each class and write the profile store."""
    from rich.progress import Progress

    from fleet.routing.profiles import PACKAGED, ProfileStore, profiles_path, user_profiles
    from fleet.runtime.client import Fleet
    from fleet.tooling.profiling import plan_measurements, profile_fleet, steps_needed

    client = Fleet()
    target = Path(out) if out else profiles_path()
    if not out and target.resolve() == PACKAGED.resolve():
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
        task = bar.add_task(f"{len(pairs)} op/class pairs", total=steps_needed(pairs, reps))
        store = profile_fleet(client, pairs, reps, lambda: bar.advance(task), base)
    store.save(target)
    from fleet.cli.report import profiles_table

    console.print(profiles_table(store, pairs))
    console.print(f"wrote {target}")


@click.command()
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

    from fleet.tooling.bench import Workload, run_bench
    from fleet.tooling.bench import deployments as all_deployments
    from fleet.tooling.benchreport import bench_table, ratios

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
    names = split(deployments) or [d.name for d in all_deployments()]
    n_rounds = rounds or (1 if quick else 2)
    from fleet.tooling.bench import jobs

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
    agree = meta["answers"]
    same = all(a["agree"] for a in agree.values())
    console.print(
        ("answers agree across deployments: " if same else "[red]answers differ[/]: ")
        + ", ".join(f"{job} {a['distinct']} distinct" for job, a in sorted(agree.items()))
    )
    console.print(f"{meta['seconds']} s; wrote " + ", ".join(str(p) for p in paths))


@click.command("gpu-check")
@click.option("--skip-build", is_flag=True, help="Keep the installed llama-cpp-python build.")
@click.option("--model", default="gemma3-270m", show_default=True, help="LLM (or a .gguf).")
@click.option("--tokens", default=32, show_default=True, help="Greedy tokens to generate.")
@click.option("--profile/--no-profile", default=True, show_default=True, help="Run fleet profile.")
@click.option("--out", default=".fleet/gpu-check", show_default=True, help="Report and logs.")
@click.pass_context
def gpu_check(
    ctx: click.Context, skip_build: bool, model: str, tokens: int, profile: bool, out: str
) -> None:
    """The GPU path end to end: CUDA build, P/D both ways, tokens/s per class.

    Builds llama-cpp-python with CUDA for this GPU (unless already a GPU build), starts
    gpu, cpu and io workers on a Redis of its own, runs prefill on gpu -> decode on cpu and
    back, checks the text equals a single-class llm.generate, and measures tokens/s per
    class. Runs on a CPU host too (everything on the CPU). Exits 1 when a check fails.
    """
    from fleet.tooling.gpucheck import run_check, write

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
    except (FleetError, WorkflowValidationError) as exc:
        fail(str(exc))
    write(report, workdir / "gpu-check.json")
    console.print(
        f"GPUs: {', '.join(report.gpus) or 'none'}; llama.cpp GPU build: "
        f"{report.llama_gpu_build}; build: {report.built}"
    )
    for direction, same in report.pd.items():
        console.print(f"P/D {direction}: {'same text' if same else '[red]DIFFERENT text[/]'}")
    for cls, rates in report.tokens_per_s.items():
        shown = ", ".join(f"{k.removesuffix('_tok_s')} {v} tok/s" for k, v in rates.items())
        console.print(f"{cls:<4} {shown}")
    console.print(f"report: {workdir / 'gpu-check.json'} ({report.seconds} s)")
    sys.exit(0 if report.ok else 1)


@click.command("eval")
@click.option("--quick", is_flag=True, help="The fixed ~10-question subset (for CI).")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the summary and every verdict as JSON."
)
@click.option(
    "--workflow",
    type=click.Path(dir_okay=False, exists=True),
    help="The agent to evaluate (default: fleet/examples/voice_agent.yaml).",
)
@click.option("--workdir", default=".fleet/eval", show_default=True, help="Logs and audio.")
@click.pass_context
def evaluate(
    ctx: click.Context, quick: bool, as_json: bool, workflow: str | None, workdir: str
) -> None:
    """Measure the voice agent's answers: speech-to-text word error rate, tool decisions,
    order-id extraction, retrieval hit@2, answer correctness, tool rounds and latency.

    Each question of fleet/examples/eval/questions.yaml is spoken with espeak-ng (its voice
    and speed), sent to a local fleet with real models, and scored against its ground truth.
    """
    from rich.progress import Progress

    from fleet.tooling.evaluation import run_eval
    from fleet.tooling.scoring import load_questions, summary

    cfg = config(ctx)
    questions = load_questions(quick=quick)
    agent = Path(workflow) if workflow else EXAMPLES / "voice_agent.yaml"
    path = Path(workdir).resolve()
    (path / "logs").mkdir(parents=True, exist_ok=True)
    out = err if as_json else console
    with Progress(console=out) as bar:
        task = bar.add_task(f"{len(questions)} questions", total=len(questions))
        try:
            verdicts, extra = run_eval(
                cfg, path, questions, agent, lambda s: None, lambda: bar.advance(task)
            )
        except (FleetError, WorkflowValidationError) as exc:
            fail(str(exc))
    result = {**summary(verdicts), **extra}
    if as_json:
        console.print_json(dumps({**result, "verdicts": [v.to_dict() for v in verdicts]}))
        return
    from fleet.tooling.evaluation import eval_tables

    for table in eval_tables(verdicts, result):
        console.print(table)
