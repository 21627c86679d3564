"""Scoring one answer of the voice agent against the evaluation set's ground truth.

Pure functions: what a run said and did (its outputs and each step's outputs) in, the
per-stage verdicts out. The set lives in fleet/examples/eval/questions.yaml.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fleet.paths import example

EVAL_SET = example("eval", "questions.yaml")

# How an answer states each order status; "unknown": the order does not exist.
STATUS_WORDS = {
    "shipped": ("shipped", "on its way", "in transit"),
    "processing": ("processing", "being processed", "processed", "not shipped yet"),
    "delivered": ("delivered",),
    "cancelled": ("cancelled", "canceled"),
    "unknown": ("no order", "could not find", "cannot find", "not found", "unknown order"),
}


CLAIM = r"(is|was|has been|had been)"


@dataclass(frozen=True)
class Question:
    id: str
    kind: str  # order, kb, both
    text: str
    voice: str
    speed: int
    tool: bool
    order: int | None = None
    status: str | None = None
    source: str | None = None
    expect: tuple[tuple[str, ...], ...] = ()
    quick: bool = False


def load_questions(path: Path = EVAL_SET, quick: bool = False) -> list[Question]:
    doc = yaml.safe_load(path.read_text())
    voices = doc["voices"]
    out = []
    for q in doc["questions"]:
        voice = voices[q["voice"]]
        out.append(
            Question(
                id=q["id"],
                kind=q["kind"],
                text=q["text"],
                voice=voice["voice"],
                speed=int(voice["speed"]),
                tool=bool(q["tool"]),
                order=q.get("order"),
                status=q.get("status"),
                source=q.get("source"),
                expect=tuple(tuple(group) for group in q.get("expect", ())),
                quick=bool(q.get("quick", False)),
            )
        )
    return [q for q in out if q.quick] if quick else out


def normalize(text: str) -> str:
    """Lower case, numbers without thousands separators, no punctuation: for WER."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text.lower())
    return " ".join(re.findall(r"[a-z0-9']+", text))


def word_error_rate(reference: str, heard: str) -> float:
    import jiwer

    return float(jiwer.wer(normalize(reference), normalize(heard) or "-"))


def states_status(answer: str, status: str) -> bool:
    """The answer states ``status``."""
    text = answer.lower()
    return any(word in text for word in STATUS_WORDS[status])


def contradicts(answer: str, status: str) -> list[str]:
    """Other statuses the answer asserts for the order ("your order has been processed")."""
    text = answer.lower()
    found = []
    for other, words in STATUS_WORDS.items():
        if other == status or other == "unknown":
            continue
        for word in words:
            claim = rf"\b(order|it)(\s+\d+)?\s+{CLAIM}\s+(now\s+|already\s+)?{re.escape(word)}"
            if re.search(claim, text):
                found.append(other)
                break
    return found


def has_expected(answer: str, expect: tuple[tuple[str, ...], ...]) -> bool:
    text = answer.lower()
    return all(any(p.lower() in text for p in group) for group in expect)


@dataclass
class Verdict:
    """One question's outcome, per stage."""

    id: str
    kind: str
    heard: str = ""
    wer: float = 1.0
    tool_used: bool = False
    tool_ok: bool = False
    order_ok: bool | None = None  # None: no order in this question
    retrieval_hit: bool | None = None
    answer: str = ""
    answer_ok: bool = False
    contradictions: list[str] = field(default_factory=list)
    tool_rounds: int = 0
    seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score(q: Question, outputs: dict[str, Any], steps: dict[str, Any], seconds: float) -> Verdict:
    """Judge a finished run: ``outputs`` are the workflow's, ``steps`` every step's outputs
    by node path (``tools#1/lookup``...)."""
    heard = str(outputs.get("question") or "")
    lookups = [p for p in steps if re.fullmatch(r"tools#\d+/lookup", p)]
    # the order id the agent looked up: a regex "match" or a tool call's extracted "value"
    ids = [
        str((steps[p] or {}).get("match", (steps[p] or {}).get("value")))
        for p in steps
        if p.endswith("/order_id")
    ]
    answer = str(outputs.get("answer") or "")
    v = Verdict(q.id, q.kind, heard=heard, wer=word_error_rate(q.text, heard), answer=answer)
    v.tool_used = bool(lookups)
    v.tool_ok = v.tool_used == q.tool
    v.tool_rounds = len(lookups)
    v.seconds = round(seconds, 2)
    if q.order is not None:
        v.order_ok = str(q.order) in ids
    if q.source is not None:
        v.retrieval_hit = any(
            str(s).startswith(f"{q.source}#") for s in outputs.get("sources") or []
        )
    ok = True
    if q.status is not None:
        v.contradictions = contradicts(answer, q.status)
        ok = states_status(answer, q.status) and not v.contradictions
    if q.expect:
        ok = ok and has_expected(answer, q.expect)
    v.answer_ok = ok
    return v


def summary(verdicts: list[Verdict]) -> dict[str, Any]:
    """Per-stage figures over all questions (answer_accuracy is the headline)."""

    def rate(values: list[bool]) -> float | None:
        return round(sum(values) / len(values), 3) if values else None

    orders = [v for v in verdicts if v.kind in ("order", "both")]
    done = [v for v in verdicts if v.error is None]
    return {
        "questions": len(verdicts),
        "failed_runs": len(verdicts) - len(done),
        "wer": round(statistics.mean(v.wer for v in verdicts), 3) if verdicts else None,
        "tool_decision_accuracy": rate([v.tool_ok for v in verdicts]),
        "order_id_accuracy": rate([bool(v.order_ok) for v in verdicts if v.order_ok is not None]),
        "retrieval_hit": rate(
            [bool(v.retrieval_hit) for v in verdicts if v.retrieval_hit is not None]
        ),
        "answer_accuracy": rate([v.answer_ok for v in verdicts]),
        "answer_accuracy_by_kind": {
            kind: rate([v.answer_ok for v in verdicts if v.kind == kind])
            for kind in ("order", "kb", "both")
        },
        "tool_rounds_per_order_question": (
            round(statistics.mean(v.tool_rounds for v in orders), 2) if orders else None
        ),
        "latency_p50_s": _pct([v.seconds for v in done], 50),
        "latency_p95_s": _pct([v.seconds for v in done], 95),
    }


def _pct(values: list[float], p: int) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]
