"""Scoring one answer of the voice agent against the evaluation set's ground truth.

Pure functions: what a run said and did (its outputs and each step's outputs) in, the
per-check verdicts out. docs/quality.md states each check; the sets and their schema are in
:mod:`fleet.evaluation.questions`.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

from fleet.evaluation.outcomes import OUTCOMES, asks_back, asks_order_number, outcome
from fleet.evaluation.questions import Question
from fleet.paths import EXAMPLES

# How an answer states each order status; "unknown": the order does not exist.
STATUS_WORDS = {
    "shipped": ("shipped", "on its way", "in transit"),
    "processing": ("processing", "being processed", "processed", "not shipped yet"),
    "delivered": ("delivered",),
    "cancelled": ("cancelled", "canceled"),
    "unknown": ("no order", "could not find", "cannot find", "not found", "unknown order"),
}


CLAIM = r"(is|was|has been|had been)"


def normalize(text: str) -> str:
    """Lower case, numbers without thousands separators, no punctuation: for WER."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text.lower())
    return " ".join(re.findall(r"[a-z0-9']+", text))


def word_error_rate(reference: str, heard: str) -> float:
    import jiwer

    return float(jiwer.wer(normalize(reference), normalize(heard) or "-"))


# where a sentence ends: as the agent's `text.sentences` splits the documents it quotes
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"])")


def sentences_of(text: str) -> list[str]:
    """A text's sentences (split after . ! ? before a capital, a digit or a quote, keeping
    "9.90" and "support@example.shop" whole), without Markdown headings."""
    lines = [x.strip() for x in text.splitlines() if not x.lstrip().startswith("#")]
    return [s.strip() for s in _SENTENCE_END.split(" ".join(lines)) if s.strip()]


def states_status(answer: str, status: str, order: int | None = None) -> bool:
    """The answer asserts ``status`` about ``order``: in a sentence that names the order
    (by its number, as spoken). A status word elsewhere (in a quoted policy sentence:
    "... 7 working days after it shipped ...") states nothing about this order."""
    for sentence in sentences_of(answer):
        text = sentence.lower()
        if order is not None and not re.search(rf"\border\s+{order}\b", text):
            continue
        if any(word in text for word in STATUS_WORDS[status]):
            return True
    return False


def contradicts(answer: str, status: str) -> list[str]:
    """Other statuses the answer asserts for the order ("your order has been processed")."""
    text = answer.lower()
    found = []
    for other, words in STATUS_WORDS.items():
        if other == status or other == "unknown":
            continue
        for word in words:
            claim = rf"\b(order|it)(\s+\d+)?\s+(\([^)]*\)\s+)?{CLAIM}\s+(now\s+|already\s+)?"
            if re.search(claim + re.escape(word), text):
                found.append(other)
                break
    return found


def has_expected(answer: str, expect: tuple[tuple[str, ...], ...]) -> bool:
    text = answer.lower()
    return all(any(p.lower() in text for p in group) for group in expect)


def _key(sentence: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", sentence.lower()))


@cache
def knowledge_base() -> Mapping[str, str]:
    """Every sentence of the example knowledge base (fleet/examples/kb), normalized, ->
    the document it is in: how the scorer tells a quote and where it came from."""
    out: dict[str, str] = {}
    for path in sorted((EXAMPLES / "kb").glob("*.md")):
        for sentence in sentences_of(path.read_text()):
            out[_key(sentence)] = path.stem
    return out


def quoted_documents(answer: str, kb: Mapping[str, str]) -> list[str]:
    """The document of each sentence of the answer quoted from the knowledge base."""
    return [kb[_key(s)] for s in sentences_of(answer) if _key(s) in kb]


@dataclass
class Verdict:
    """One question's outcome: per check (``checks``; None where it does not apply), and
    the figures each stage is measured by."""

    id: str
    kind: str
    voice: str = ""
    heard: str = ""
    wer: float = 1.0
    tool_used: bool = False
    tool_ok: bool = False
    order_ok: bool | None = None  # None: no order in this question
    retrieval_hit: bool | None = None
    answer: str = ""
    answer_ok: bool = False
    checks: dict[str, bool | None] = field(default_factory=dict)
    quoted: list[str] = field(default_factory=list)  # the document of each quoted sentence
    contradictions: list[str] = field(default_factory=list)
    tool_rounds: int = 0
    seconds: float = 0.0
    error: str | None = None
    outcome: str = "wrong"  # right, asked_back or wrong (fleet.evaluation.outcomes)
    asked: str | None = None  # how the answer asks back: repeat, order_number, hand_over
    stt: dict[str, Any] = field(default_factory=dict)  # the transcript's confidence figures

    @property
    def failed(self) -> list[str]:
        """The checks that failed (a run that failed: "run")."""
        return ["run"] if self.error else [k for k, ok in self.checks.items() if ok is False]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failed": self.failed}


# The checks the answer must pass to be right; the others measure a stage on its own.
ANSWER_CHECKS = (
    "status",
    "no_other_status",
    "expected",
    "quotes_relevant",
    "no_invented_lookup",
    "no_needless_question",
)
# what speech.stt says of its transcript, kept in each verdict (docs/quality.md, round 5)
STT_FIGURES = ("avg_logprob", "no_speech_prob", "compression_ratio", "trusted", "model")


def score(
    q: Question,
    outputs: dict[str, Any],
    steps: dict[str, Any],
    seconds: float,
    kb: Mapping[str, str] | None = None,
) -> Verdict:
    """Judge a finished run: ``outputs`` are the workflow's, ``steps`` every step's outputs
    by node path (``tools#1/lookup``...); ``kb`` maps knowledge-base sentences to documents
    (default: the example knowledge base)."""
    heard = str(outputs.get("question") or "")
    lookups = [p for p in steps if re.fullmatch(r"tools#\d+/lookup", p)]
    # the order id the agent looked up: a regex "match" or a tool call's extracted "value"
    ids = [
        str((steps[p] or {}).get("match", (steps[p] or {}).get("value")))
        for p in steps
        if p.endswith("/order_id")
    ]
    answer = str(outputs.get("answer") or "")
    v = Verdict(q.id, q.kind, q.voice_name or q.voice, heard=heard, answer=answer)
    v.wer = word_error_rate(q.text, heard)
    v.tool_used = bool(lookups)
    v.tool_ok = v.tool_used == q.tool
    v.tool_rounds = len(lookups)
    v.seconds = round(seconds, 2)
    if q.order is not None:
        v.order_ok = lookups != [] and str(q.order) in ids
    if q.source is not None:
        v.retrieval_hit = any(
            str(s).startswith(f"{q.source}#") for s in outputs.get("sources") or []
        )
    v.quoted = quoted_documents(answer, knowledge_base() if kb is None else kb)
    v.contradictions = contradicts(answer, q.status) if q.status else []
    v.checks = {
        "tool_decision": v.tool_ok,
        "order_id": v.order_ok,
        "retrieval": v.retrieval_hit,
        "status": states_status(answer, q.status, q.order) if q.status else None,
        "no_other_status": not v.contradictions if q.status else None,
        "expected": has_expected(answer, q.expect) if q.expect else None,
        # every quote from the document that answers the question; none when none does
        "quotes_relevant": all(doc == q.source for doc in v.quoted),
        # a lookup for a question that names no order is an invented one
        "no_invented_lookup": q.tool or not v.tool_used,
        # an order number is asked for only on a question about an order
        "no_needless_question": q.tool or not asks_order_number(answer),
    }
    transcribed = steps.get("transcribe") or {}
    v.stt = {k: transcribed[k] for k in STT_FIGURES if k in transcribed}
    return judge(v, q)


def judge(v: Verdict, q: Question) -> Verdict:
    """Set the verdict's ``answer_ok``, ``outcome`` and ``asked`` from its checks."""
    v.answer_ok = v.error is None and all(v.checks.get(c) is not False for c in ANSWER_CHECKS)
    v.asked = asks_back(v.answer) if v.error is None else None
    v.outcome = outcome(v, q)
    return v


def summary(verdicts: list[Verdict]) -> dict[str, Any]:
    """Per-stage figures over all questions (answer_accuracy is the headline), per kind and
    per voice, and the questions whose answer was wrong with the checks they failed."""

    def rate(values: list[bool]) -> float | None:
        return round(sum(values) / len(values), 3) if values else None

    orders = [v for v in verdicts if v.kind in ("order", "both")]
    done = [v for v in verdicts if v.error is None]
    names = sorted({k for v in verdicts for k in v.checks})
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
        # right / asked back / wrong: rates over all questions, per kind, per voice
        "outcomes": outcome_rates(verdicts),
        "outcome_counts": {o: sum(v.outcome == o for v in verdicts) for o in OUTCOMES},
        "outcomes_by_kind": {
            kind: outcome_rates([v for v in verdicts if v.kind == kind])
            for kind in ("order", "kb", "both")
        },
        "by_voice": {
            voice: {
                "answer_accuracy": rate([v.answer_ok for v in verdicts if v.voice == voice]),
                "wer": round(statistics.mean(v.wer for v in verdicts if v.voice == voice), 3),
                "outcomes": outcome_rates([v for v in verdicts if v.voice == voice]),
            }
            for voice in sorted({v.voice for v in verdicts})
        },
        "checks": {
            name: rate([bool(v.checks[name]) for v in done if v.checks.get(name) is not None])
            for name in names
        },
        # the wrong answers with the checks they failed; the asked-back ones, and how
        "wrong": {v.id: v.failed for v in verdicts if v.outcome == "wrong"},
        "asked_back": {v.id: v.asked for v in verdicts if v.outcome == "asked_back"},
        # the speech-to-text model each run used (speech.stt's, as the worker host configured)
        "stt_models": sorted({str(v.stt["model"]) for v in verdicts if v.stt.get("model")}),
        "tool_rounds_per_order_question": (
            round(statistics.mean(v.tool_rounds for v in orders), 2) if orders else None
        ),
        "latency_p50_s": _pct([v.seconds for v in done], 50),
        "latency_p95_s": _pct([v.seconds for v in done], 95),
    }


def outcome_rates(verdicts: list[Verdict]) -> dict[str, float | None]:
    """The share of each outcome (right, asked_back, wrong) among ``verdicts``."""
    n = len(verdicts)
    return {o: round(sum(v.outcome == o for v in verdicts) / n, 3) if n else None for o in OUTCOMES}


def _pct(values: list[float], p: int) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]
