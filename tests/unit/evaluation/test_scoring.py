"""Scoring the voice agent's answers: each stage judged from what the run said and did."""

from __future__ import annotations

from fleet.evaluation.scoring import (
    Question,
    contradicts,
    load_questions,
    score,
    summary,
    word_error_rate,
)

ORDER = Question("o", "order", "Where is my order 1042?", "en-us", 165, True, 1042, "shipped")
KB = Question(
    "k",
    "kb",
    "What is your return policy?",
    "en-us",
    165,
    False,
    source="returns",
    expect=(("30 days",),),
)


def test_the_set_covers_every_status_and_every_document() -> None:
    questions = load_questions()
    assert len(questions) >= 40 and len({q.id for q in questions}) == len(questions)
    statuses = {q.status for q in questions if q.status}
    assert statuses == {"shipped", "processing", "delivered", "cancelled", "unknown"}
    assert {q.source for q in questions if q.kind == "kb"} == {
        "returns",
        "warranty",
        "shipping",
        "faq",
    }
    assert {q.kind for q in questions} == {"order", "kb", "both"}
    assert 8 <= len(load_questions(quick=True)) <= 12
    assert len({(q.voice, q.speed) for q in questions}) >= 4


def test_wer_ignores_case_punctuation_and_thousands_separators() -> None:
    assert word_error_rate("Where is my order 1042?", "where is my order 1,042") == 0.0
    assert word_error_rate("Where is my order 1042?", "Hello, where is Mordor 1,042?") == 0.6


def test_a_contradicted_status_is_wrong_even_if_the_true_one_is_named() -> None:
    steps = {"tools#1/order_id": {"match": "1042"}, "tools#1/lookup": {"status": 200}}
    right = score(
        ORDER,
        {"question": "Where is my order 1042?", "answer": "Your order 1042 (blender) is shipped."},
        steps,
        3.0,
    )
    assert right.answer_ok and right.tool_ok and right.order_ok and right.tool_rounds == 1
    wrong = score(
        ORDER,
        {"question": "x", "answer": "Order 1042 is shipped. Your order has been processed."},
        steps,
        3.0,
    )
    assert not wrong.answer_ok and wrong.contradictions == ["processing"]
    # a policy sentence naming statuses asserts nothing about this order
    assert contradicts('An order shows the status "processing" until it leaves.', "shipped") == []


def test_kb_answers_need_the_expected_fact_and_retrieval_is_scored() -> None:
    out = {
        "question": "what is your return policy",
        "answer": "You can return any item within 30 days of delivery.",
        "sources": ["returns#0", "faq#0"],
    }
    v = score(KB, out, {}, 2.0)
    assert v.answer_ok and v.retrieval_hit and v.tool_ok and v.order_ok is None
    miss = score(
        KB, {**out, "answer": "Thanks!", "sources": ["faq#0"]}, {"tools#1/lookup": {}}, 2.0
    )
    assert not miss.answer_ok and not miss.retrieval_hit and not miss.tool_ok
    figures = summary([v, miss])
    assert figures["answer_accuracy"] == 0.5 and figures["tool_decision_accuracy"] == 0.5
    assert figures["retrieval_hit"] == 0.5 and figures["questions"] == 2


def test_answer_fingerprints_ignore_blob_ids_and_count_disagreements() -> None:
    from fleet.bench.result import Result, answer_agreement, answer_digest

    a = answer_digest({"answer": "Order 1042 is shipped.", "audio": "fleet:blob:wav:1"})
    b = answer_digest({"answer": "Order 1042 is shipped.", "audio": "fleet:blob:wav:2"})
    c = answer_digest({"answer": "Order 1042 is processing.", "audio": "fleet:blob:wav:3"})
    assert a == b != c and answer_digest(None) is None
    one = Result("homogeneous", 0, runs=[{"job": "voice", "answer": a}])
    two = Result("cost-sla", 0, runs=[{"job": "voice", "answer": c}])
    assert answer_agreement([one, one])["voice"]["agree"]
    split = answer_agreement([one, two])["voice"]
    assert split["distinct"] == 2 and split["by_answer"][c] == ["cost-sla"]
