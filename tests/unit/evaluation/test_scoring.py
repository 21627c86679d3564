"""Scoring the voice agent's answers: each stage judged from what the run said and did."""

from __future__ import annotations

from fleet.evaluation.questions import Question, load_questions
from fleet.evaluation.scoring import (
    contradicts,
    knowledge_base,
    quoted_documents,
    score,
    states_status,
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
LOOKED_UP = {"tools#1/order_id": {"value": 1042}, "tools#1/lookup": {"status": 200}}
# sentences of the example knowledge base, as the agent quotes them
SHIPPING = "If an order has not arrived 7 working days after it shipped, contact support with the order number: we trace the parcel with the carrier and, if it is lost, send a replacement at no cost."  # noqa: E501
CANCEL = "Once shipped, return the parcel instead."
RETURNS = "You can return any item within 30 days of delivery, for any reason, as long as it is unused and in its original packaging."  # noqa: E501


def test_both_shipped_sets_cover_every_status_and_every_document() -> None:
    for name in ("shipped", "held-out"):
        questions = load_questions(name)
        assert len({q.id for q in questions}) == len(questions) >= 24
        statuses = {q.status for q in questions if q.status}
        assert statuses == {"shipped", "processing", "delivered", "cancelled", "unknown"}
        assert {q.source for q in questions if q.kind == "kb"} == {
            "returns",
            "warranty",
            "shipping",
            "faq",
        }
        assert {q.kind for q in questions} == {"order", "kb", "both"}
        assert 6 <= len(load_questions(name, quick=True)) <= 12
        assert len({(q.voice, q.speed) for q in questions}) >= 5
    # held out: no voice and no question text of the set the agent was tuned on
    tuned, held = load_questions("shipped"), load_questions("held-out")
    assert not {q.voice for q in tuned} & {q.voice for q in held}
    assert not {q.text for q in tuned} & {q.text for q in held}


def test_wer_ignores_case_punctuation_and_thousands_separators() -> None:
    assert word_error_rate("Where is my order 1042?", "where is my order 1,042") == 0.0
    assert word_error_rate("Where is my order 1042?", "Hello, where is Mordor 1,042?") == 0.6


def test_a_contradicted_status_is_wrong_even_if_the_true_one_is_named() -> None:
    right = score(
        ORDER,
        {"question": "Where is my order 1042?", "answer": "Your order 1042 (blender) is shipped."},
        LOOKED_UP,
        3.0,
    )
    assert right.answer_ok and right.tool_ok and right.order_ok and right.tool_rounds == 1
    assert right.failed == [] and right.checks["status"] is True
    wrong = score(
        ORDER,
        {"question": "x", "answer": "Order 1042 is shipped. Your order has been processed."},
        LOOKED_UP,
        3.0,
    )
    assert not wrong.answer_ok and wrong.contradictions == ["processing"]
    assert wrong.failed == ["no_other_status"]
    # a policy sentence naming statuses asserts nothing about this order
    assert contradicts('An order shows the status "processing" until it leaves.', "shipped") == []
    assert contradicts("Your order 1042 (kettle) is processing.", "shipped") == ["processing"]


def test_the_status_counts_only_when_stated_about_that_order() -> None:
    """The issue's case: no sentence says the order is shipped, but a quoted policy sentence
    contains the word; and a status read back for another number (misheard) is not it."""
    assert not states_status(f"I can help with that. {SHIPPING}", "shipped", 1042)
    assert states_status("Your order 1042 (blender) is shipped.", "shipped", 1042)
    assert not states_status("Your order 10042 (blender) is shipped.", "shipped", 1042)
    assert states_status("I could not find order 1099 in our system.", "unknown", 1099)
    v = score(ORDER, {"question": "where is it", "answer": SHIPPING}, LOOKED_UP, 1.0)
    assert not v.answer_ok and v.failed == ["status", "quotes_relevant"]


def test_a_quote_from_a_document_that_does_not_answer_the_question_is_wrong() -> None:
    kb = knowledge_base()
    assert quoted_documents(f"Your order 1042 (blender) is shipped. {CANCEL}", kb) == ["faq"]
    assert quoted_documents(SHIPPING, kb) == ["shipping"]
    # the main job's answer before this check: true status, then a misleading instruction
    answer = f"Your order 1042 (blender) is shipped. {CANCEL} Please have your order number ready."
    v = score(ORDER, {"question": "Where is my order 1042?", "answer": answer}, LOOKED_UP, 1.0)
    assert not v.answer_ok and v.failed == ["quotes_relevant"] and v.quoted == ["faq", "faq"]
    # a question with a source may quote it, and only it
    ok = score(KB, {"question": "", "answer": RETURNS, "sources": ["returns#0"]}, {}, 1.0)
    assert ok.answer_ok and ok.quoted == ["returns"]
    mixed = score(KB, {"question": "", "answer": f"{RETURNS} {CANCEL}"}, {}, 1.0)
    assert mixed.failed == ["retrieval", "quotes_relevant"]


def test_a_lookup_for_a_question_without_an_order_is_wrong() -> None:
    out = {"question": "what is your return policy", "answer": RETURNS, "sources": ["returns#0"]}
    v = score(KB, out, LOOKED_UP, 1.0)
    assert not v.answer_ok and v.failed == ["tool_decision", "no_invented_lookup"]


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
    failed = ["tool_decision", "retrieval", "expected", "no_invented_lookup"]
    assert figures["wrong"] == {"k": failed}
    assert figures["checks"]["expected"] == 0.5 and figures["by_voice"]["en-us"]["wer"] == 0.0


def test_answer_fingerprints_ignore_blob_ids_and_count_disagreements() -> None:
    from fleet.loadtest.result import Result, answer_agreement, answer_digest

    a = answer_digest({"answer": "Order 1042 is shipped.", "audio": "fleet:blob:wav:1"})
    b = answer_digest({"answer": "Order 1042 is shipped.", "audio": "fleet:blob:wav:2"})
    c = answer_digest({"answer": "Order 1042 is processing.", "audio": "fleet:blob:wav:3"})
    assert a == b != c and answer_digest(None) is None
    one = Result("homogeneous", 0, runs=[{"job": "voice", "answer": a}])
    two = Result("cost-sla", 0, runs=[{"job": "voice", "answer": c}])
    assert answer_agreement([one, one])["voice"]["agree"]
    split = answer_agreement([one, two])["voice"]
    assert split["distinct"] == 2 and split["by_answer"][c] == ["cost-sla"]


ASK_NUMBER = "I did not catch your order number. Could you tell me the number again?"
REPEAT = "Sorry, I did not catch that. Could you say your question again?"
HAND_OVER = (
    "I could not find an answer to that in our help pages. A colleague will get back to you."
)


def test_three_outcomes_right_asked_back_and_wrong() -> None:
    """Right; asked back (acceptable, not right); wrong: a false fact, a wrong status, an
    irrelevant quote, an unnecessary question."""
    right = score(ORDER, {"answer": "Your order 1042 (blender) is shipped."}, LOOKED_UP, 1.0)
    assert (right.outcome, right.asked) == ("right", None)
    # asking back on an order question: not right, acceptable
    for answer, how in ((REPEAT, "repeat"), (ASK_NUMBER, "order_number")):
        v = score(ORDER, {"answer": answer}, {}, 1.0)
        assert not v.answer_ok and (v.outcome, v.asked) == ("asked_back", how), v
    v = score(KB, {"answer": HAND_OVER, "sources": ["returns#0"]}, {}, 1.0)
    assert (v.outcome, v.asked) == ("asked_back", "hand_over")
    # the case: an order number asked for on a warranty question is wrong
    needless = score(KB, {"answer": f"{ASK_NUMBER} {RETURNS}", "sources": ["returns#0"]}, {}, 1.0)
    assert needless.failed == ["no_needless_question"] and needless.outcome == "wrong"
    # asking back does not excuse what is false or irrelevant
    for answer in (f"{REPEAT} {CANCEL}", f"Your order 1042 (blender) is processing. {REPEAT}"):
        assert score(ORDER, {"answer": answer}, LOOKED_UP, 1.0).outcome == "wrong", answer
    other = {"tools#1/order_id": {"value": 1045}, "tools#1/lookup": {"status": 200}}
    v = score(ORDER, {"answer": f"Your order 1045 (kettle) is shipped. {REPEAT}"}, other, 1.0)
    assert v.outcome == "wrong"  # the facts of an order the customer did not name
    # neither right nor asking back: wrong
    assert score(KB, {"answer": "Thanks!"}, {}, 1.0).outcome == "wrong"


def test_the_summary_reports_each_outcome_per_set_kind_and_voice() -> None:
    verdicts = [
        score(ORDER, {"answer": "Your order 1042 (blender) is shipped."}, LOOKED_UP, 1.0),
        score(ORDER, {"answer": REPEAT}, {}, 1.0),
        score(KB, {"answer": f"{ASK_NUMBER} {RETURNS}", "sources": ["returns#0"]}, {}, 1.0),
        score(KB, {"answer": RETURNS, "sources": ["returns#0"]}, {"transcribe": {"x": 1}}, 1.0),
    ]
    figures = summary(verdicts)
    assert figures["outcomes"] == {"right": 0.5, "asked_back": 0.25, "wrong": 0.25}
    assert figures["outcome_counts"] == {"right": 2, "asked_back": 1, "wrong": 1}
    assert figures["outcomes_by_kind"]["order"] == {"right": 0.5, "asked_back": 0.5, "wrong": 0.0}
    assert figures["outcomes_by_kind"]["kb"] == {"right": 0.5, "asked_back": 0.0, "wrong": 0.5}
    assert figures["outcomes_by_kind"]["both"] == dict.fromkeys(("right", "asked_back", "wrong"))
    assert figures["by_voice"]["en-us"]["outcomes"] == figures["outcomes"]
    assert figures["wrong"] == {"k": ["no_needless_question"]}
    assert figures["asked_back"] == {"o": "repeat"}


def test_a_verdict_keeps_what_speech_to_text_said_of_its_transcript() -> None:
    stt = {"avg_logprob": -0.9, "no_speech_prob": 0.1, "compression_ratio": 0.8}
    steps = {"transcribe": {**stt, "trusted": False, "model": "/m", "text": "x"}}
    v = score(ORDER, {"answer": REPEAT}, steps, 1.0)
    assert v.stt == {**stt, "trusted": False, "model": "/m"} and v.outcome == "asked_back"
    assert summary([v])["stt_models"] == ["/m"]
