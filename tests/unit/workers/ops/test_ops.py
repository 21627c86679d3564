from __future__ import annotations

import time

import pytest

from fleet.errors import FleetError, UnknownOpError
from fleet.sdk.registry import Registry, op
from fleet.sdk.step import StepContext, running
from workers.ops import general, testing


def test_registry_records_signature_and_profile() -> None:
    reg = Registry()

    @op("t.demo", kind="model", classes=("gpu", "cpu"), outputs=("a",), registry_=reg)
    def demo(x: int, y: int = 2) -> dict[str, int]:
        """Add things."""
        return {"a": x + y}

    spec = reg.get("t.demo")
    assert spec.params == ("x", "y") and spec.required == ("x",)
    assert spec.prefers == "gpu" and spec.description == "Add things."
    assert spec.eligible(["cpu", "io", "gpu"]) == ["gpu", "cpu"]
    with pytest.raises(UnknownOpError):
        reg.get("t.none")


def test_bad_declarations_fail_at_import() -> None:
    reg = Registry()
    with pytest.raises(FleetError, match="kind must be one of"):
        op("x", kind="magic", registry_=reg)  # type: ignore[arg-type]
    with pytest.raises(FleetError, match="preferred class 'io'"):
        op("x", classes=("gpu",), prefers="io", registry_=reg)


def test_general_ops() -> None:
    assert general.template("${a}-${b}", a=1, b="x") == {"text": "1-x"}
    with pytest.raises(ValueError, match="needs a value for 'b'"):
        general.template("${a}-${b}", a=1)
    assert general.normalize("  A \n b ", lower=True) == {"text": "a b"}
    assert general.stats("one two\nthree") == {"chars": 13, "words": 3, "lines": 2}
    assert general.keywords("refund refund the order order order late", top=2) == {
        "keywords": ["order", "refund"]
    }
    assert general.contains("Please REFUND me", ["refund", "late"]) == {
        "matched": ["refund"],
        "found": True,
    }
    assert general.extract('{"a": {"b": [1, {"c": 5}]}}', "a.b.1.c") == {"value": 5, "found": True}
    assert general.extract({"a": 1}, "a.z", default=0) == {"value": 0, "found": False}
    with pytest.raises(ValueError, match="not valid JSON"):
        general.parse("{nope")
    assert general.add(2, 3) == {"result": 5}


def test_test_ops() -> None:
    assert testing.echo([1]) == {"value": [1]}
    assert testing.sleep(0.01, "v")["value"] == "v"
    with pytest.raises(ValueError, match="seconds"):
        testing.sleep(-1)
    with pytest.raises(testing.InjectedFailure, match="boom"):
        testing.fail("boom")


def test_llm_prompt_and_choose() -> None:
    from workers.ops.llm import build_prompt, choose

    out = build_prompt(
        "Where is order 7?",
        instruction="Be brief.",
        context=["doc one", "doc two"],
        facts="Order 7 shipped.",
        examples=[{"input": "Is order 3 late?", "output": "No, it is on time."}],
        question_label="Customer",
        answer_label="Agent",
        answer_prefix="Sure,",
    )
    prompt = out["prompt"]
    # what the model needs, not one spelling of it: every part once, in the order a reader
    # meets it (instruction, documents, facts, the worked example, then the question), and
    # the prompt ends on the answer's cue, so that the model's next words are the answer
    parts = ["Be brief.", "doc one", "doc two", "Order 7 shipped.", "Is order 3 late?"]
    parts += ["No, it is on time."]
    parts += ["Where is order 7?"]
    places = [prompt.find(p) for p in parts]
    assert all(prompt.count(p) == 1 for p in parts), prompt
    assert places == sorted(places) and places[0] == 0, prompt
    assert prompt.endswith("Customer: Where is order 7?\nAgent: Sure,"), prompt
    # the example in the turns' own labels
    assert "Customer: Is order 3 late?\nAgent: No, it is on time." in prompt
    assert out["prefix"] == "Sure,"
    assert choose(" Yes, it does", ["yes", "no"]) == {"choice": "yes", "matched": True}
    assert choose(" maybe", ["yes", "no"], default="no") == {"choice": "no", "matched": False}


def test_template_fields_and_regex() -> None:
    out = general.template("${o.id} is ${o.state}", o={"id": 7, "state": "late"})
    assert out == {"text": "7 is late"}
    with pytest.raises(ValueError, match=r"'o\.nope'"):
        general.template("${o.nope}", o={})
    assert general.regex("order 1,042 please", r"(\d{1,3}(?:,\d{3})+)", 1, remove=",") == {
        "match": "1042",
        "found": True,
    }
    with pytest.raises(ValueError, match="bad pattern"):
        general.regex("x", "(")


def test_sentences_are_the_candidates_an_answer_may_quote() -> None:
    from workers.ops.general import sentences, template

    text = [
        "# Returns\n\nYou can return any item within 30 days. Refunds take 5 working days.",
        "How do I reach support? By e-mail at support@example.shop or by phone.",
    ]
    out = sentences(text)
    assert out["sentences"] == [
        "You can return any item within 30 days.",
        "Refunds take 5 working days.",
        "By e-mail at support@example.shop or by phone.",
    ]
    assert out["origins"] == [0, 0, 1]
    assert "How do I reach support?" in sentences(text, questions=True)["sentences"]
    assert template("${a} ${b}", strip=True, a="", b="x") == {"text": "x"}


def test_rank_quotes_what_is_relevant_or_nothing() -> None:
    """What every question of a kind says is taken out of the query; a floor; one group."""
    from workers.ops.memory import rank

    items = ["generic", "relevant", "other passage"]
    vectors = [[1.0, 1.0, 0.0], [0.2, 1.0, 0.0], [0.0, 1.0, 1.5]]
    query = [[0.8, 1.0, 0.0]]
    assert rank(query, vectors, items, k=1)["items"] == ["generic"]  # the closest
    away = [[1.0, 0.0, 0.0]]  # what every question says
    out = rank(query, vectors, items, k=3, away_from=away)
    assert out["items"][0] == "relevant" and out["scores"] == sorted(out["scores"], reverse=True)
    assert out["items"] == ["relevant", "generic", "other passage"]
    kept = rank(query, vectors, items, k=3, away_from=away, min_score=0.6)["items"]
    assert kept == ["relevant", "generic"]
    assert rank(query, vectors, items, k=3, away_from=away, min_score=2.0)["text"] == ""
    grouped = rank(query, vectors, items, k=3, away_from=away, groups=[0, 0, 1])
    assert grouped["items"] == ["relevant", "generic"] and grouped["text"] == "generic relevant"
    with pytest.raises(ValueError, match="one group per item"):
        rank(query, vectors, items, groups=[0])


def test_contains_takes_one_word_or_number() -> None:
    from workers.ops.general import contains

    assert contains("Where is my order 1,042?", 1042) == {"matched": [1042], "found": True}
    assert contains("Where is my order?", 1042)["found"] is False
    assert contains("a refund please", ["refund", "x"])["matched"] == ["refund"]


def test_constrained_decode_returns_one_of_the_choices(tiny_gguf: str) -> None:
    import pytest

    from workers.ops.llm import gbnf_choices, generate

    choices = ['He said "yes".', "Returns are free within 30 days.", "no"]
    for prompt in ("Customer: hi\nAgent:", "Question: refunds?\nAnswer:"):
        out = generate(prompt, model=tiny_gguf, n_ctx=256, choices=choices, max_tokens=1)
        assert out["text"] in choices  # a random-weight model, constrained
    grammar = 'root ::= "{\\"id\\": " [0-9] [0-9]? "}"'
    out = generate("x", model=tiny_gguf, n_ctx=256, grammar=grammar, max_tokens=24)
    assert out["text"].startswith('{"id": ') and out["text"].endswith("}")
    assert gbnf_choices(['a "b"\n']) == 'root ::= " "? ("a \\"b\\"\\n")'
    with pytest.raises(ValueError, match="grammar or choices, not both"):
        generate("x", model=tiny_gguf, n_ctx=256, grammar=grammar, choices=["a"])
    with pytest.raises(ValueError, match="non-empty string"):
        generate("x", model=tiny_gguf, n_ctx=256, choices=["a", ""])


def test_spoken_numbers_become_digits() -> None:
    from workers.ops.general import numbers

    assert numbers("status of order one thousand forty-three?")["text"] == "status of order 1043?"
    assert numbers("order two thousand fifty-one")["text"] == "order 2051"
    assert numbers("where is my order 1,042")["text"] == "where is my order 1,042"


def test_a_template_that_would_grow_past_a_steps_outputs_is_refused() -> None:
    """A 1.2 MB template repeating a 1 KB value would fill 200 MB; it is stopped as it grows."""
    from workers.ops.general import template

    with pytest.raises(ValueError, match="filled template would be over"):
        template("${x}" * 200_000, x="y" * 1000)
    assert template("${x}-${x}", x="ok") == {"text": "ok-ok"}


def test_a_catastrophic_pattern_gives_up_and_lets_other_threads_run() -> None:
    """(a|a)*$ on 40 a's and a "!" backtracks for ages: it ends with a clear error at the
    step's regex limit, and while it matches the GIL is free (a thread pool's heartbeat
    thread went silent for 42 s behind one such step)."""
    import threading

    ticks = 0
    stop = threading.Event()

    def tick() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.01)

    beat = threading.Thread(target=tick)
    beat.start()
    try:
        with (
            running(StepContext("r", "re", 0, deadline=time.time() + 0.5)),
            pytest.raises(ValueError, match="did not finish within"),
        ):
            general.regex("a" * 40 + "!", r"(a|a)*$")
    finally:
        stop.set()
        beat.join()
    assert ticks >= 5  # the other thread ran (with the GIL held it would not run at all)
