"""Question sets: a user's own file is checked, and every problem is named where it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.evaluation.questions import QuestionSetError, load_questions

GOOD = """
voices:
  a: {voice: en-us, speed: 160}
questions:
  - {id: q1, kind: order, voice: a, text: "Where is 1042?", tool: true, order: 1042,
     status: shipped}
  - {id: q2, kind: kb, voice: a, text: "Returns?", tool: false, source: returns,
     expect: [["30 days"]]}
"""
ORDER_NEEDS = "question 'q1': a question of kind 'order' needs"
TOOL_MEANS = "question 'q2': 'tool' must be true exactly when"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return path


def test_a_users_file_loads_with_its_voices(tmp_path: Path) -> None:
    q1, q2 = load_questions(_write(tmp_path, GOOD))
    assert (q1.id, q1.voice, q1.speed, q1.voice_name, q1.order) == ("q1", "en-us", 160, "a", 1042)
    assert q2.expect == (("30 days",),) and q2.source == "returns"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("status: shipped", "status: lost"), "question 'q1': field 'status': Input should be"),
        (('voice: a, text: "Ret', 'voice: z, text: "Ret'), "question 'q2': field 'voice': no"),
        (("order: 1042,", ""), ORDER_NEEDS),
        (("tool: false, source", "tool: true, source"), TOOL_MEANS),
        (("{id: q2, kind: kb,", "{id: q1, kind: kb,"), "question 'q1': field 'id': used twice"),
        (("speed: 160", "speed: fast"), "field 'voices.a.speed'"),
        (('text: "Returns?", ', ""), "question 'q2': field 'text': Field required"),
        (("expect:", "expects:"), "question 'q2': field 'expects': Extra inputs"),
    ],
)
def test_each_problem_is_named_with_its_question_and_field(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    path = _write(tmp_path, GOOD.replace(*change))
    with pytest.raises(QuestionSetError) as info:
        load_questions(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_a_missing_file_or_bad_yaml_is_named(tmp_path: Path) -> None:
    with pytest.raises(QuestionSetError, match=r"no such file \(or a shipped set: shipped, "):
        load_questions(tmp_path / "nope.yaml")
    with pytest.raises(QuestionSetError, match="invalid YAML"):
        load_questions(_write(tmp_path, "voices: [a\n"))


def test_the_question_file_docs_quality_shows_loads(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[3] / "docs" / "quality.md").read_text()
    block = doc.split("<!-- a question file -->\n```yaml\n", 1)[1].split("```", 1)[0]
    questions = load_questions(_write(tmp_path, block))
    assert {q.kind for q in questions} == {"order", "kb", "both"}
