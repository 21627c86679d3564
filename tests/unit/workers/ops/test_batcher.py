"""Continuous batching on real llama.cpp (the tiny generated GGUF)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workers.ops import llm_models, models
from workers.ops.batcher import Batcher, Request, kv_cache_mb
from workers.ops.llm import gbnf_choices

PROMPTS = [f"the order {i} is late" + " yes" * i for i in range(6)]


@pytest.fixture(scope="module")
def engine(tiny_gguf: str) -> Any:
    return llm_models.llm(tiny_gguf, 256)


@pytest.fixture
def batch(engine: Any) -> Iterator[Batcher]:
    yield Batcher(engine._model.model, sequences=4, n_ctx=256, threads=1, owner=engine, min_reuse=1)


def _tokens(engine: Any, prompt: str) -> list[int]:
    return list(engine.tokenize(prompt.encode(), add_bos=True))


def _alone(engine: Any, prompt: str, **kw: Any) -> Request:
    """The request served by a batch of one sequence with nothing cached."""
    single = Batcher(engine._model.model, sequences=1, n_ctx=256, threads=1, owner=engine)
    return single.wait(single.submit(Request(tokens=_tokens(engine, prompt), **kw)))


def test_concurrent_requests_share_one_batch_and_each_gets_its_own_output(
    engine: Any, batch: Batcher
) -> None:
    alone = [_alone(engine, p, max_tokens=12).generated for p in PROMPTS]
    requests = [batch.submit(Request(tokens=_tokens(engine, p), max_tokens=12)) for p in PROMPTS]
    done = [batch.wait(r, timeout=60) for r in requests]
    assert [r.generated for r in done] == alone
    assert all(r.finish_reason == "length" and len(r.generated) == 12 for r in done)
    # Six requests of 12 tokens on 4 sequences: far fewer decodes than 72 one at a time.
    assert batch.decodes < 40, batch.decodes
    assert batch.busy() == 0


def test_grammar_and_sampling_are_per_sequence_inside_a_batch(engine: Any, batch: Batcher) -> None:
    grammar = gbnf_choices(["yes", "no", "refund"])
    free = [Request(tokens=_tokens(engine, p), max_tokens=8) for p in PROMPTS[:2]]
    constrained = [
        Request(tokens=_tokens(engine, p), max_tokens=8, grammar=grammar) for p in PROMPTS[2:4]
    ]
    sampled = Request(tokens=_tokens(engine, PROMPTS[4]), max_tokens=8, temperature=0.9, seed=7)
    for r in [*free, *constrained, sampled]:
        batch.submit(r)
    for r in [*free, *constrained, sampled]:
        batch.wait(r, timeout=60)
    for r in constrained:
        assert r.result_text().strip() in ("yes", "no", "refund") and r.finish_reason == "stop"
    # Gibberish from random weights: without the grammar the text is none of the choices.
    assert all(r.result_text().strip() not in ("yes", "no", "refund") for r in free)
    again = _alone(engine, PROMPTS[4], max_tokens=8, temperature=0.9, seed=7)
    assert sampled.generated == again.generated  # the seed holds inside a batch


def test_a_full_batch_makes_requests_wait_not_fail(engine: Any) -> None:
    one = Batcher(engine._model.model, sequences=1, n_ctx=256, threads=1, owner=engine)
    results: list[Request] = []

    def step(prompt: str) -> None:
        results.append(one.wait(one.submit(Request(_tokens(engine, prompt), 6)), timeout=60))

    threads = [threading.Thread(target=step, args=(p,)) for p in PROMPTS[:4]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 4 and all(len(r.generated) == 6 for r in results)


def test_prefix_reuse_gives_the_cold_text_and_prefills_only_new_tokens(
    engine: Any, batch: Batcher
) -> None:
    first = PROMPTS[5] + " the refund is late"
    round1 = batch.wait(batch.submit(Request(_tokens(engine, first), 10)), timeout=60)
    second = first + round1.result_text() + " Answer: yes the order"
    round2 = batch.wait(batch.submit(Request(_tokens(engine, second), 10)), timeout=60)
    cold = _alone(engine, second, max_tokens=10)
    assert round2.generated == cold.generated
    assert cold.reused == 0 and round2.reused >= len(_tokens(engine, first))


def test_a_prompt_longer_than_a_batch_is_prefilled_in_chunks(engine: Any) -> None:
    small = Batcher(engine._model.model, sequences=2, n_ctx=256, threads=1, n_batch=16)
    long_prompt = _tokens(engine, "the order is late and the refund is late " * 3)
    assert len(long_prompt) > 40
    other = small.submit(Request(_tokens(engine, PROMPTS[2]), 30))
    chunked = small.wait(small.submit(Request(long_prompt, 8)), timeout=60)
    assert (
        chunked.generated
        == _alone(engine, "the order is late and the refund is late " * 3, max_tokens=8).generated
    )
    assert (
        small.wait(other, timeout=60).generated
        == _alone(engine, PROMPTS[2], max_tokens=30).generated
    )


def test_an_identical_prompt_reuses_all_but_its_last_token(engine: Any, batch: Batcher) -> None:
    tokens = _tokens(engine, PROMPTS[3])
    a = batch.wait(batch.submit(Request(list(tokens), 5)), timeout=60)
    b = batch.wait(batch.submit(Request(list(tokens), 5)), timeout=60)
    assert a.generated == b.generated and b.reused == len(tokens) - 1


def test_stop_strings_cut_the_text(engine: Any, batch: Batcher) -> None:
    full = batch.wait(batch.submit(Request(_tokens(engine, PROMPTS[1]), 12)), timeout=60)
    text = full.result_text()
    stop = text[3:5]
    assert stop.strip(), text
    cut = batch.wait(
        batch.submit(Request(_tokens(engine, PROMPTS[1]), 12, stop=[stop])), timeout=60
    )
    assert cut.finish_reason == "stop" and cut.result_text() == text[: text.find(stop)]


def test_a_prompt_longer_than_its_sequence_fails_before_the_batch(
    engine: Any, batch: Batcher
) -> None:
    with pytest.raises(ValueError, match="exceeds the context window of 256 tokens per seq"):
        batch.submit(Request(_tokens(engine, "the order is late " * 40), 16))


def test_a_deadline_frees_the_sequence(engine: Any, batch: Batcher) -> None:
    request = batch.submit(Request(_tokens(engine, PROMPTS[0]), 200))
    with pytest.raises(TimeoutError):
        batch.wait(request, timeout=0.0)
    request.done.wait(30)
    assert request.finish_reason in ("cancelled", "length") and batch.busy() == 0


def test_a_bad_grammar_fails_its_own_request_only(engine: Any, batch: Batcher) -> None:
    bad = batch.submit(Request(_tokens(engine, PROMPTS[0]), 4, grammar="root ::= ("))
    good = batch.submit(Request(_tokens(engine, PROMPTS[1]), 4))
    with pytest.raises(ValueError, match="grammar"):
        batch.wait(bad, timeout=60)
    assert len(batch.wait(good, timeout=60).generated) == 4


def test_the_kv_cache_must_fit_before_the_batch_is_made(
    tiny_gguf: str, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert kv_cache_mb(engine._model.model, 1024) == pytest.approx(2 * 4 * 32 * 2 * 1024 / 2**20)
    monkeypatch.setattr(llm_models, "concurrent_steps", lambda: 10**6)
    with pytest.raises(MemoryError, match=r"1000000 sequences x 256 tokens.*concurrency"):
        llm_models._make_batcher(tiny_gguf, 256, engine)


def test_the_op_runs_in_the_batch_and_reports_the_reused_prefix(tiny_gguf: str) -> None:
    from workers.ops.llm import generate

    prompt = "the order is late yes " * 2  # ~65 tokens: past the least prefix worth reusing
    first = generate(prompt, max_tokens=6, model=tiny_gguf, n_ctx=256)
    again = generate(prompt, max_tokens=6, model=tiny_gguf, n_ctx=256)
    assert again["text"] == first["text"] and again["cached_tokens"] == first["prompt_tokens"] - 1
    short = generate("the order is late no", max_tokens=6, model=tiny_gguf, n_ctx=256)
    assert short["cached_tokens"] == 0  # a short common prefix is prefilled again
    assert first["prompt_tokens"] == again["prompt_tokens"]
    picked = generate(
        "the order is late", max_tokens=2, model=tiny_gguf, n_ctx=256, choices=["yes", "no"]
    )
    assert picked["text"] in ("yes", "no")


def test_one_step_alone_gets_the_tokens_of_a_plain_llama_context(tiny_gguf: str) -> None:
    """llm.generate in the batch and llm.decode's generation on llama-cpp-python's own
    context (what a restored prefill state uses) agree token for token."""
    from workers.ops.llm import _complete, generate

    prompt = "the order is late yes no refund"
    batched = generate(prompt, max_tokens=12, model=tiny_gguf, n_ctx=256)
    engine = llm_models.llm(tiny_gguf, 256)
    with models.device_lock():
        engine.reset()
        plain = _complete(engine, prompt, 12, 0.0, [], 0)
    assert plain["text"] == batched["text"] and plain["tokens"] == batched["tokens"] == 12


def test_a_request_that_can_reuse_nothing_takes_the_least_recently_used_slot(
    engine: Any,
) -> None:
    """Run A's round left its prefix in a slot; run B's first round shares only its first
    words with it (below min_reuse). B takes an unused slot, so A's next round still finds
    its prefix (B used to take A's slot for those few words and evict it)."""
    batch = Batcher(engine._model.model, sequences=2, n_ctx=256, threads=1, owner=engine)
    common = "Session one. "
    a1 = common + "the refund is late and the parcel never came " * 2
    batch.wait(batch.submit(Request(_tokens(engine, a1), 4)), timeout=60)
    b1 = common + "where is my blender"
    assert batch.wait(batch.submit(Request(_tokens(engine, b1), 4)), timeout=60).reused == 0
    a2 = a1 + " and now?"
    again = batch.wait(batch.submit(Request(_tokens(engine, a2), 4)), timeout=60)
    assert again.reused >= len(_tokens(engine, a1)) - 1


def test_threads_taking_their_first_step_at_once_share_one_model_and_batch(
    tiny_gguf: str,
) -> None:
    """An 8-thread gpu worker's first steps all arrive together: one load, one batch."""
    model = str(Path(tiny_gguf).with_name("fresh.gguf"))  # a model not loaded yet
    shutil.copy(tiny_gguf, model)
    got: list[Any] = []
    start = threading.Barrier(8)

    def first_step() -> None:
        start.wait()
        got.append(llm_models.batcher(model, 192))

    threads = [threading.Thread(target=first_step) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and all(b is got[0] for b in got)
    assert models.LOADS[f"llm:{model}"] == 1
    assert llm_models.llm(model, 192) is got[0].owner
