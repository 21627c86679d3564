"""Evaluation question sets: the schema, loading and validation.

A set is a YAML file with ``voices`` (name -> espeak-ng voice and speed) and ``questions``
(each with its ground truth). Two ship with the package: ``shipped`` (the 42 questions the
agent was tuned on) and ``held-out`` (other voices and phrasings, never tuned on). Users
evaluate on their own with ``fleet eval --questions FILE``; a bad file is refused with every
problem named (file, question, field) before anything starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fleet.errors import FleetError
from fleet.paths import example
from fleet.workflow.loader import load_data_file

SETS = {
    "shipped": example("eval", "questions.yaml"),
    "held-out": example("eval", "held_out.yaml"),
}
EVAL_SET = SETS["shipped"]
STATUSES = ("shipped", "processing", "delivered", "cancelled", "unknown")


class QuestionSetError(FleetError):
    """A question set is not valid: names the file, the question and the field."""


@dataclass(frozen=True)
class Question:
    """One spoken question and its ground truth."""

    id: str
    kind: str  # order, kb, both
    text: str
    voice: str
    speed: int
    tool: bool
    order: int | None = None
    status: str | None = None  # the order's true status; "unknown": it does not exist
    source: str | None = None  # the knowledge-base document that answers it
    expect: tuple[tuple[str, ...], ...] = ()  # phrases the answer needs (any of each group)
    quick: bool = False
    voice_name: str = ""  # the set's name for the voice ("a", "f"...)


class _Voice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    voice: str = Field(min_length=1)
    speed: int = Field(ge=80, le=450)


class _Question(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    kind: Literal["order", "kb", "both"]
    voice: str
    text: str = Field(min_length=1)
    tool: bool
    order: int | None = Field(default=None, ge=1)
    status: Literal["shipped", "processing", "delivered", "cancelled", "unknown"] | None = None
    source: str | None = None
    expect: list[list[str]] = []
    quick: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> _Question:
        if self.kind in ("order", "both") and (self.order is None or self.status is None):
            raise ValueError(f"a question of kind '{self.kind}' needs 'order' and 'status'")
        if self.kind == "kb" and (self.order is not None or self.status is not None):
            raise ValueError("a question of kind 'kb' has no 'order' or 'status'")
        if self.tool != (self.order is not None):
            raise ValueError("'tool' must be true exactly when the question names an order")
        if self.kind in ("kb", "both") and not self.source:
            raise ValueError(f"a question of kind '{self.kind}' needs 'source' (a document)")
        if any(not group for group in self.expect):
            raise ValueError("'expect' holds an empty list of phrases")
        return self


class _QuestionSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    voices: dict[str, _Voice] = Field(min_length=1)
    questions: list[_Question] = Field(min_length=1)


def resolve(name_or_path: str | Path) -> Path:
    """A shipped set's name (``shipped``, ``held-out``) or a file's path."""
    if str(name_or_path) in SETS:
        return SETS[str(name_or_path)]
    path = Path(name_or_path)
    if not path.is_file():
        known = ", ".join(SETS)
        raise QuestionSetError(f"{path}: no such file (or a shipped set: {known})")
    return path


def load_questions(path: str | Path = EVAL_SET, quick: bool = False) -> list[Question]:
    """The questions of a set (only those marked ``quick`` if asked), validated."""
    path = resolve(path)
    # read as a workflow file is: bounded in size, UTF-8, an alias bomb measured, not built
    doc = load_data_file(path, QuestionSetError)
    try:
        spec = _QuestionSet.model_validate(doc)
    except ValidationError as exc:
        raise QuestionSetError(_problems(path, doc, exc)) from None
    problems = []
    seen: set[str] = set()
    for q in spec.questions:
        if q.voice not in spec.voices:
            problems.append(f"question '{q.id}': field 'voice': no voice '{q.voice}' in voices")
        if q.id in seen:
            problems.append(f"question '{q.id}': field 'id': used twice")
        seen.add(q.id)
    if problems:
        raise QuestionSetError(f"{path}: " + "; ".join(problems))
    out = [_question(q, spec.voices[q.voice], q.voice) for q in spec.questions]
    return [q for q in out if q.quick] if quick else out


def _question(q: _Question, voice: _Voice, name: str) -> Question:
    return Question(
        id=q.id,
        kind=q.kind,
        text=q.text,
        voice=voice.voice,
        speed=voice.speed,
        tool=q.tool,
        order=q.order,
        status=q.status,
        source=q.source,
        expect=tuple(tuple(group) for group in q.expect),
        quick=q.quick,
        voice_name=name,
    )


def _problems(path: Path, doc: object, exc: ValidationError) -> str:
    """Each validation error as ``question 'o01': field 'kind': ...``."""
    out = []
    questions = doc.get("questions") if isinstance(doc, dict) else None
    for e in exc.errors():
        loc = list(e["loc"])
        where = f"field '{'.'.join(str(p) for p in loc)}'" if loc else "(top level)"
        if loc[:1] == ["questions"] and len(loc) >= 2 and isinstance(questions, list):
            item = questions[int(loc[1])] if int(loc[1]) < len(questions) else None
            qid = item.get("id") if isinstance(item, dict) else None
            who = f"question '{qid}'" if qid else f"question #{int(loc[1]) + 1}"
            field = ".".join(str(p) for p in loc[2:])
            where = f"{who}: field '{field}'" if field else who
        out.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
    return f"{path}: " + "; ".join(out)
