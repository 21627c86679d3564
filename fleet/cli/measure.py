"""Commands that measure: the main job (demo), the benchmark (bench) and answer quality (eval).

What a command needs beyond click is imported inside it: `fleet --help` loads none of it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fleet.cli.common import (
    config,
    console,
    dumps,
    err,
    fail,
    load_and_validate,
    print_outcome,
    split,
)
from fleet.config import FleetConfig
from fleet.deploy.signals import stops_on_signals
from fleet.errors import FleetError
from fleet.paths import EXAMPLES

if TYPE_CHECKING:
    from fleet.client.client import RunHandle

DEMO_FILE = EXAMPLES / "triage.yaml"
QUESTION = "Hello. Where is my order 1042? It has not arrived yet."
DEMO_INPUT = (
    "Hello, I was charged twice for order 1042 and the blender arrived broken. "
    "Please refund the second charge."
)


@click.command()
@click.option("--question", default=QUESTION, help="What the caller asks.")
@click.option("--triage", is_flag=True, help="Run the model-free ticket-triage sample instead.")
@click.option("--workdir", default=".fleet", help="Folder for logs, audio and databases.")
@click.option("--flower/--no-flower", default=False, help="Start Flower beside the fleet.")
@click.pass_context
@stops_on_signals
def demo(ctx: click.Context, question: str, triage: bool, workdir: str, flower: bool) -> None:
    """The main job: a local fleet answers a spoken question with real models.

    Speech-to-text, embeddings, FAISS retrieval, an LLM that decides to call the order-status
    API, the LLM's answer and text-to-speech -- each step on the class that suits it.
    """
    from fleet.demo.voice import run_voice_demo

    cfg = config(ctx)
    path = Path(workdir).resolve()
    (path / "logs").mkdir(parents=True, exist_ok=True)
    try:
        if triage:
            _triage_demo(cfg, path, flower)
        else:
            run_voice_demo(cfg, path, question, flower, console.print, _show)
    except FleetError as exc:  # WorkflowValidationError among them
        fail(str(exc))


def _show(handle: RunHandle, elapsed: float) -> None:
    code = print_outcome(handle, 600.0, False)
    if code:
        sys.exit(code)


def _triage_demo(cfg: FleetConfig, workdir: Path, flower: bool) -> None:
    from fleet.deploy.local import LocalFleet

    client, spec = load_and_validate(str(DEMO_FILE))
    fleet = LocalFleet(cfg, [], flower, workdir, "WARNING", say=console.print)
    try:  # a signal at any moment (stops_on_signals): stopped
        with console.status("starting the local fleet..."):
            fleet.start()
        _show(client.submit(spec, {"ticket": DEMO_INPUT}), 0.0)
    finally:
        fleet.stop()


@click.command()
@click.option("--quick", is_flag=True, help="A few-minute smoke run (CI): small mix, one round.")
@click.option("--rate", type=float, help="Open loop: Poisson arrivals per second.")
@click.option("--concurrency", type=int, help="Closed loop: workflows in flight.")
@click.option(
    "--count", type=int, show_default="quick: 8", help="Workflows per deployment and round."
)
@click.option(
    "--duration",
    type=float,
    show_default="60 at 0.3/s when no --rate or --concurrency",
    help="Seconds of arrivals per deployment and round.",
)
@click.option(
    "--rounds",
    type=int,
    show_default="2; quick: 1",
    help="Rounds; deployments are interleaved A B C D, D C B A, ...",
)
@click.option("--seed", default=7, help="Seed of the arrivals and the mix.")
@click.option(
    "--deployments",
    show_default="all four",
    help="Comma-separated: homogeneous, static, least-latency, cost-sla.",
)
@click.option(
    "--out",
    default="bench/results",
    type=click.Path(file_okay=False),
    help="Folder for bench.json, bench.csv, the plots and the fleets' logs.",
)
@stops_on_signals
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

    from fleet.cli.tables import bench_table
    from fleet.loadtest.arrivals import Arrivals, jobs
    from fleet.loadtest.deployments import deployments as all_deployments
    from fleet.loadtest.harness import run_bench
    from fleet.loadtest.report import ratios

    if quick:
        arrivals = Arrivals(
            rate=rate,
            concurrency=None if rate else (concurrency or 2),
            count=count or 8,
            duration_s=duration,
            seed=seed,
        )
    elif rate or concurrency:
        arrivals = Arrivals(
            rate=rate, concurrency=concurrency, count=count, duration_s=duration, seed=seed
        )
    else:
        arrivals = Arrivals(rate=0.3, count=count, duration_s=duration or 60.0, seed=seed)
    names = split(deployments) or [d.name for d in all_deployments()]
    n_rounds = rounds or (1 if quick else 2)
    per = len(arrivals.schedule(jobs("quick" if quick else "full")))
    with Progress(console=console) as bar:
        task = bar.add_task("workflows", total=per * len(names) * n_rounds)
        rows, paths, meta = run_bench(
            arrivals,
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


@click.command("eval")
@click.option(
    "--questions",
    "question_set",
    metavar="FILE|SET",
    default="shipped",
    show_default=True,
    help="The questions: a YAML file of your own (the schema of docs/quality.md) or a "
    "shipped set, 'shipped' (the agent was tuned on it) or 'held-out' (other voices and "
    "phrasings, never tuned on).",
)
@click.option("--quick", is_flag=True, help="Only the questions marked quick (for CI).")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the summary and every verdict as JSON."
)
@click.option(
    "--workflow",
    type=click.Path(dir_okay=False, exists=True),
    show_default="fleet/examples/voice_agent.yaml",
    help="The agent to evaluate.",
)
@click.option("--workdir", default=".fleet/eval", help="Folder for logs and audio.")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Questions in flight at a time (above 1, their LLM steps share a batch).",
)
@click.pass_context
@stops_on_signals
def evaluate(
    ctx: click.Context,
    question_set: str,
    quick: bool,
    as_json: bool,
    workflow: str | None,
    workdir: str,
    concurrency: int,
) -> None:
    """Measure the voice agent's answers: speech-to-text word error rate, tool decisions,
    order-id extraction, retrieval hit@k, answer correctness (each check), the three outcomes
    (right, asked back, wrong), tool rounds and latency, per kind of question and per voice.

    Each question is spoken with espeak-ng (its voice and speed), sent to a local fleet with
    real models, and scored against its ground truth. A question file is checked first:
    every problem is named (file, question, field) and nothing starts.
    """
    from rich.progress import Progress

    from fleet.evaluation.evaluate import run_eval
    from fleet.evaluation.questions import load_questions
    from fleet.evaluation.scoring import summary

    try:
        questions = load_questions(question_set, quick=quick)
    except FleetError as exc:
        fail(str(exc), 2)
    if not questions:
        fail(f"{question_set}: no question is marked quick", 2)
    cfg = config(ctx)
    agent = Path(workflow) if workflow else EXAMPLES / "voice_agent.yaml"
    path = Path(workdir).resolve()
    (path / "logs").mkdir(parents=True, exist_ok=True)
    out = err if as_json else console
    with Progress(console=out) as bar:
        task = bar.add_task(f"{len(questions)} questions", total=len(questions))
        try:
            verdicts, extra = run_eval(
                cfg,
                path,
                questions,
                agent,
                lambda s: None,
                lambda: bar.advance(task),
                concurrency,
            )
        except FleetError as exc:  # WorkflowValidationError among them
            fail(str(exc))
    result = {"set": question_set, **summary(verdicts), **extra}  # each rate is per set
    if as_json:
        console.print_json(dumps({**result, "verdicts": [v.to_dict() for v in verdicts]}))
        return
    from fleet.cli.tables import eval_tables

    for table in eval_tables(verdicts, result):
        console.print(table)
