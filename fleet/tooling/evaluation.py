"""``fleet eval``: the voice agent (and the RAG example) on the evaluation set, on a local
fleet with real models, scored per stage (see :mod:`fleet.tooling.scoring`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from fleet.config import FleetConfig
from fleet.errors import FleetError
from fleet.runtime.local import LocalFleet
from fleet.tooling.demo import EXAMPLES, OrderAPI, speak_to_file
from fleet.tooling.scoring import Question, Verdict, has_expected, score

INDEX = "eval-kb"


def run_eval(
    cfg: FleetConfig,
    workdir: Path,
    questions: list[Question],
    workflow: Path,
    say: Callable[[str], None],
    advance: Callable[[], None],
) -> tuple[list[Verdict], dict[str, float | None]]:
    """Every question through ``workflow``; the knowledge-base ones also through rag.yaml
    as text. Returns the verdicts and the RAG example's answer accuracy."""
    from fleet.runtime.client import Fleet

    client = Fleet()
    client.validate(workflow)
    api = OrderAPI(workdir)
    env = {"FLEET_HTTP_ALLOW": f"127.0.0.1:{api.port}"}
    fleet = LocalFleet(cfg, [], False, workdir, "WARNING", say=say, env=env)
    try:
        fleet.start()
        docs = client.upload(EXAMPLES / "kb")
        client.submit(EXAMPLES / "kb_build.yaml", {"docs": docs, "index": INDEX}).get(600)
        verdicts = [_ask(client, q, workflow, api.url, workdir, advance) for q in questions]
        rag = [_rag(client, q) for q in questions if q.kind == "kb"]
    finally:
        api.stop()
        fleet.stop()
    return verdicts, {"rag_answer_accuracy": round(sum(rag) / len(rag), 3) if rag else None}


def _ask(
    client: Any, q: Question, workflow: Path, api: str, workdir: Path, advance: Callable[[], None]
) -> Verdict:
    wav = speak_to_file(q.text, workdir / f"{q.id}.wav", q.voice, q.speed)
    start = time.monotonic()
    run = client.submit(workflow, {"audio": client.upload(wav), "api": api, "index": INDEX})
    try:
        outputs = run.get(timeout=300)
    except FleetError as exc:
        verdict = Verdict(q.id, q.kind, error=str(exc), seconds=time.monotonic() - start)
    else:
        verdict = score(q, outputs, client.store.state(run.id), time.monotonic() - start)
    advance()
    return verdict


def _rag(client: Any, q: Question) -> bool:
    run = client.submit(EXAMPLES / "rag.yaml", {"question": q.text, "index": INDEX})
    try:
        answer = str(run.get(timeout=300).get("answer") or "")
    except FleetError:
        return False
    return has_expected(answer, q.expect)


def _mark(value: bool | None) -> str:
    return "-" if value is None else ("ok" if value else "[red]x[/]")


def eval_tables(verdicts: list[Verdict], result: dict[str, Any]) -> list[Table]:
    """``fleet eval``: one row per question, then the per-stage summary."""
    rows = Table(title="questions", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("id", "heard", "wer", "tool", "order", "hit", "answer", "ok", "s"):
        rows.add_column(col, overflow="fold", justify="right" if col in ("wer", "s") else "left")
    for v in verdicts:
        rows.add_row(
            v.id,
            escape(v.heard),
            f"{v.wer:.2f}",
            _mark(v.tool_ok) + (f" {v.tool_rounds}x" if v.tool_rounds else ""),
            _mark(v.order_ok),
            _mark(v.retrieval_hit),
            escape(v.error or v.answer),
            _mark(v.answer_ok),
            f"{v.seconds:.1f}",
        )
    stages = Table(title="per stage", title_justify="left", box=box.SIMPLE_HEAD)
    stages.add_column("measure")
    stages.add_column("value", justify="right")
    for key, value in result.items():
        shown = json.dumps(value) if isinstance(value, dict) else str(value)
        stages.add_row(key, shown)
    return [rows, stages]
