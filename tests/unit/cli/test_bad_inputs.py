"""Bad input to the newer commands (`eval --questions`, `plan --check`, `up --plan`, `kube
--values`): a clear error naming the file or the field, exit 2, never a traceback -- and an
alias bomb is measured, not built, by the loader that refuses such workflow files."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.config import PlanPrediction
from fleet.evaluation.questions import QuestionSetError, load_questions
from fleet.planning.check import Observed, compare

NOT_UTF8 = b"voices: \xff\xfe\x00\x80\n"


def _fleet(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    return subprocess.run(
        [sys.executable, "-m", "fleet.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, "COLUMNS": "200", **env},
    )


def _refused(res: subprocess.CompletedProcess[str], *words: str) -> str:
    said = " ".join(res.stderr.split())
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 2, (res.returncode, res.stderr)
    for word in words:
        assert word in said, said
    return said


def _question_bomb(questions: int, groups: int) -> str:
    """A question set of ``questions`` aliases of one question whose ``expect`` is ``groups``
    aliases of one group of 9 phrases: questions x groups x 9 values from a few KB."""
    refs = lambda name, n: "[" + ", ".join([f"*{name}"] * n) + "]"  # noqa: E731
    return (
        "voices:\n  a: {voice: en-us, speed: 160}\n"
        "phrases: &p [" + ", ".join(['"lol"'] * 9) + "]\n"
        f"groups: &g {refs('p', groups)}\n"
        "one: &q {id: q1, kind: kb, voice: a, text: t, tool: false, source: s, expect: *g}\n"
        f"questions: {refs('q', questions)}\n"
    )


def test_a_question_file_of_aliases_is_measured_not_built(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_question_bomb(1000, 1000))  # 13 KB: 9 million values once expanded
    assert bomb.stat().st_size < 20_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(QuestionSetError, match="values once aliases are expanded"):
        load_questions(bomb)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 50
    _refused(_fleet("eval", "--questions", str(bomb)), str(bomb), "aliases are expanded")


def test_files_that_are_not_utf8_are_named_not_a_traceback(tmp_path: Path) -> None:
    questions = tmp_path / "questions.yaml"
    questions.write_bytes(NOT_UTF8)
    _refused(_fleet("eval", "--questions", str(questions)), str(questions), "cannot read")
    plan = tmp_path / "plan.toml"
    plan.write_bytes(b'policy = "\xff"\n')
    _refused(_fleet("plan", "--check", str(plan)), str(plan), "cannot read")
    workload = tmp_path / "workload.yaml"
    workload.write_bytes(NOT_UTF8)
    _refused(_fleet("plan", str(workload)), str(workload), "cannot read")
    values = tmp_path / "values.yaml"
    values.write_bytes(NOT_UTF8)
    _refused(_fleet("kube", "--values", str(values)), str(values), "cannot read")


def test_a_window_that_never_ends_is_refused() -> None:
    for window in ("nan", "inf", "-1", "0"):
        _refused(_fleet("plan", "--check", "plan.toml", "--window", window), "'--window'")


PREDICTED = "[predicted.workflows.ask]\nrate = {rate}\np95_s = 1.0\nsla_s = 2.0\n"


def test_a_plan_predicting_nan_is_refused_naming_the_field(tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text(PREDICTED.format(rate="nan"))
    _refused(_fleet("plan", "--check", str(plan)), str(plan), "workflows.ask.rate", "finite")


def test_a_nan_prediction_counts_as_drifted() -> None:
    # a prediction made past the file's check (model_construct): compare() itself holds
    nan = float("nan")
    predicted = PlanPrediction.model_construct(
        workflows={"ask": {"rate": nan, "p95_s": nan, "sla_s": nan}}, classes={"cpu": nan}
    )
    seen = Observed(10.0, {"ask": 10.0}, {"ask": 0.5}, {"cpu": 0.5})
    found = {(f.subject, f.what): f.drifted for f in compare(predicted, seen)}
    assert found == {
        ("workflow ask", "rate"): True,
        ("workflow ask", "p95"): True,
        ("class cpu", "utilisation"): True,
    }


def test_up_reads_a_yaml_plan_as_the_config_loader_does(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    saved = _fleet("plan", "--save", str(plan), "--json")
    assert saved.returncode == 0, saved.stderr
    assert (
        plan.read_text().startswith("# Written by `fleet plan`")
        and "classes:\n" in plan.read_text()
    )
    # the plan's classes read, the fleet goes as far as its broker (none here: a clear error)
    res = _fleet("up", "--plan", str(plan), "--no-flower", FLEET_BROKER_URL="redis://192.0.2.1:1/0")
    said = " ".join(res.stderr.split() + res.stdout.split())
    assert "Traceback" not in said and "TOML" not in said, said
    assert res.returncode == 1 and "is unreachable" in said, said
