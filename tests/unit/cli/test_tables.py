"""The trace table fits a 100-column terminal without cutting node names or statuses."""

from __future__ import annotations

import re

from rich.console import Console

from fleet.cli.tables import trace_table
from fleet.store.records import TraceEntry

LONG_REASON = "least-latency: cpu 41.2 ms (queue 3, busy 2/2) beats gpu 55.0 ms, npu-lite 61.3 ms"


def _entry(node: str, op: str, cls: str, status: str, error: str | None = None) -> TraceEntry:
    return TraceEntry(
        node=node,
        op=op,
        kind="step",
        cls=cls,
        queue=f"fleet.{cls}",
        worker=f"{cls}-0@worker-host-with-a-long-name.example.internal",
        status=status,
        sent_at=100.0,
        started_at=100.01,
        ended_at=101.234,
        route={"reason": LONG_REASON, "estimates": {cls: {"total_s": 0.0412}}},
        error=error,
    )


TRACE = [
    _entry("transcribe", "speech.stt", "npu-lite", "succeeded"),
    _entry("lookup_order_status_from_api", "http.request", "io", "succeeded"),
    _entry("answer.iter[3].decide_tool", "llm.generate", "gpu", "failed", "boom " * 40),
    _entry("speak", "speech.tts", "cpu", "skipped"),
]


def _render(why: bool, width: int = 100) -> list[str]:
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    console.print(trace_table(TRACE, why=why))
    return console.export_text().splitlines()


def test_rows_fit_100_columns_and_keep_node_names_and_statuses_whole() -> None:
    lines = _render(why=False)
    assert max(len(line) for line in lines) <= 100
    text = "\n".join(lines)
    for e in TRACE:
        assert any(e.node in line and e.op in line and e.status in line for line in lines), e.node
    assert "[1]" in text and "answer.iter[3].decide_tool: boom" in text  # error under the table
    assert LONG_REASON not in text  # the routing reason only with --why


def test_why_puts_each_routing_reason_under_the_table() -> None:
    lines = _render(why=True)
    assert max(len(line) for line in lines) <= 100
    text = " ".join(line.strip() for line in lines)
    assert "why transcribe -> npu-lite: least-latency" in text


def test_an_empty_trace_draws_an_empty_table() -> None:
    """A queued run, or a failed one that left no step behind, has no trace entries."""
    console = Console(width=100, record=True)
    console.print(trace_table([]))
    assert "node" in console.export_text()


def test_a_gpu_class_step_that_ran_on_the_cpu_is_marked() -> None:
    from dataclasses import replace

    fell_back = replace(TRACE[2], device="cpu (no GPU usable here)")
    console = Console(width=100, record=True, force_terminal=False, color_system=None)
    console.print(trace_table([TRACE[0], fell_back], why=False))
    text = console.export_text()
    assert "gpu*" in text and "npu-lite*" not in text
    assert "* class gpu ran on cpu (no GPU usable here)" in text
    assert TraceEntry.from_dict(fell_back.to_dict()) == fell_back
    assert "device" not in TRACE[0].to_dict()  # said only when it happened


def test_eval_tables_show_failed_checks_and_one_summary_row_per_voice_and_check() -> None:
    from fleet.cli.tables import eval_tables
    from fleet.evaluation.scoring import Verdict, summary

    right = Verdict("o1", "order", "a", heard="where is order 1042", wer=0.0, answer_ok=True)
    right.checks = {"status": True, "quotes_relevant": True}
    wrong = Verdict("k1", "kb", "f", heard="returns", wer=0.5, answer="Once shipped, return it.")
    wrong.checks = {"status": None, "quotes_relevant": False}
    asked = Verdict("o2", "order", "a", answer="Could you say your question again?")
    asked.outcome, asked.asked = "asked_back", "repeat"
    console = Console(width=160, record=True)
    for table in eval_tables([right, wrong, asked], summary([right, wrong, asked])):
        console.print(table)
    out = console.export_text()
    assert "x quotes_relevant" in out and "by_voice f" in out and "by_voice a" in out
    assert "asked repeat" in out and re.search(r"outcomes asked_back +0\.333", out)
    assert "checks quotes_relevant" in out and "wrong k1" in out and "{" not in out


def test_the_doctor_says_what_each_runtime_can_do_with_the_gpu() -> None:
    from fleet.cli.tables import _gpu_word
    from fleet.diagnostics.doctor import RuntimeReport

    assert _gpu_word(RuntimeReport("llama.cpp", True, "0.3.36", gpu=False)) == "CPU build"
    assert _gpu_word(RuntimeReport("torch", True, "2.13", gpu=False, devices=0)) == "sees no GPU"
    missing = RuntimeReport("ctranslate2", True, "4.8", gpu=False, devices=1, needs="no cuBLAS")
    assert _gpu_word(missing) == "no GPU: no cuBLAS"
    assert _gpu_word(RuntimeReport("ctranslate2", True, "4.8", gpu=True, devices=2)) == (
        "GPU (2 seen)"
    )
    assert _gpu_word(RuntimeReport("llama.cpp", True, "0.3.36", gpu=True)) == "GPU build"
