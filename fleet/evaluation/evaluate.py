"""``fleet eval``: the voice agent (and the RAG example) on the evaluation set, on a local
fleet with real models, scored per stage (see :mod:`fleet.evaluation.scoring`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from fleet.client.client import Fleet
from fleet.config import FleetConfig
from fleet.demo.order_api import OrderAPI
from fleet.demo.speech import speak_to_file
from fleet.deploy.local import LocalFleet
from fleet.errors import FleetError
from fleet.evaluation.questions import Question
from fleet.evaluation.scoring import Verdict, has_expected, score
from fleet.paths import EXAMPLES

INDEX = "eval-kb"


def run_eval(
    cfg: FleetConfig,
    workdir: Path,
    questions: list[Question],
    workflow: Path,
    say: Callable[[str], None],
    advance: Callable[[], None],
    concurrency: int = 1,
) -> tuple[list[Verdict], dict[str, float | None]]:
    """Every question through ``workflow``, ``concurrency`` runs in flight at a time (their
    LLM steps share the gpu worker's batch); the knowledge-base ones also through rag.yaml
    as text. Returns the verdicts, in question order, and the RAG example's accuracy."""

    client = Fleet()
    client.validate(workflow)
    with ExitStack() as started:  # stopped, the fleet first, however this ends
        api = OrderAPI(workdir)
        started.callback(api.stop)
        env = {"FLEET_HTTP_ALLOW": f"127.0.0.1:{api.port}"}
        fleet = LocalFleet(cfg, [], False, workdir, "WARNING", say=say, env=env)
        started.callback(fleet.stop)
        fleet.start()
        docs = client.upload(EXAMPLES / "kb")
        client.submit(EXAMPLES / "kb_build.yaml", {"docs": docs, "index": INDEX}).get(600)
        pool = ThreadPoolExecutor(max(1, concurrency))
        # stopped (a signal): the questions in flight are not waited for
        started.callback(pool.shutdown, wait=False, cancel_futures=True)
        verdicts = list(
            pool.map(lambda q: _ask(client, q, workflow, api.url, workdir, advance), questions)
        )
        rag = list(pool.map(lambda q: _rag(client, q), [q for q in questions if q.kind == "kb"]))
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
        verdict = Verdict(q.id, q.kind, q.voice_name, error=str(exc))
        verdict.seconds = round(time.monotonic() - start, 2)
    else:
        verdict = score(q, outputs, client.store.state(run.id), time.monotonic() - start)
    advance()
    return verdict


def _rag(client: Fleet, q: Question) -> bool:
    run = client.submit(EXAMPLES / "rag.yaml", {"question": q.text, "index": INDEX})
    try:
        answer = str(run.get(timeout=300).get("answer") or "")
    except FleetError:
        return False
    return has_expected(answer, q.expect)
