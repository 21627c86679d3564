"""What one LLM step may do to the process that runs it: real llama.cpp, the tiny GGUF.

A grammar no token can satisfy used to abort the whole process (llama.cpp's "Unexpected
empty grammar stack"), so those cases run in a child process: on the old code the child died
of SIGABRT and the test failed instead of taking pytest down with it.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path
from typing import Any

import pytest

from fleet.sdk import class_limits
from workers.ops import llm_models, models
from workers.ops.llm import _restore, decode, generate, prefill

ROOT = Path(__file__).resolve().parents[4]
NUL_LITERAL = 'root ::= "\\x00"'  # parses; no token can spell it
DEAD_LATER = 'root ::= "a" [\\x00]'  # "a" is fine, then nothing is


def _in_child(code: str) -> dict[str, Any]:
    """Run ``code`` in a fresh Python process; what it printed last, as JSON."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"the process died ({done.returncode}): {done.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_grammar_no_token_can_satisfy_is_refused_naming_the_param(tiny_gguf: str) -> None:
    out = _in_child(
        f"""
        import json
        from workers.ops.llm import generate

        def refused(grammar):
            try:
                generate("the order is late", max_tokens=4, model={tiny_gguf!r}, n_ctx=256,
                         grammar=grammar)
            except ValueError as exc:
                return str(exc)
            return "accepted"

        errors = [refused({NUL_LITERAL!r}), refused('root ::= "\\x00"'), refused("root ::= (")]
        after = generate("the order is late", max_tokens=4, model={tiny_gguf!r}, n_ctx=256)
        print(json.dumps({{"errors": errors, "after": after["tokens"]}}))
        """
    )
    escaped, nul, unparsed = out["errors"]
    assert escaped.startswith("grammar can never be satisfied"), escaped
    assert nul.startswith("grammar contains a NUL character"), nul
    assert unparsed.startswith("grammar does not parse"), unparsed
    assert out["after"] == 4  # the process lives on and serves the next step


def test_a_grammar_that_dead_ends_fails_only_its_own_request_in_the_batch(
    tiny_gguf: str,
) -> None:
    """Requests past the up-front check (a grammar that dead-ends after its first token, or
    one handed to the batch directly) fail alone; the others in the same batch get the
    tokens they get alone. So does llm.decode's generation on a restored context."""
    out = _in_child(
        f"""
        import json
        from workers.ops import llm_models
        from workers.ops.batcher import Batcher, Request
        from workers.ops.llm import _complete, gbnf_choices

        engine = llm_models.llm({tiny_gguf!r}, 256)
        tokens = lambda p: list(engine.tokenize(p.encode(), add_bos=True))
        good = [
            dict(max_tokens=12),
            dict(max_tokens=8, grammar=gbnf_choices(["yes", "no", "refund"])),
            dict(max_tokens=8, temperature=0.9, seed=7),
        ]
        bad = [
            dict(max_tokens=8, grammar={NUL_LITERAL!r}),
            dict(max_tokens=8, grammar={DEAD_LATER!r}),
            dict(max_tokens=8, grammar={DEAD_LATER!r}, temperature=0.9, seed=3),
        ]
        prompts = [f"the order {{i}} is late" for i in range(6)]

        def alone(prompt, kw):
            one = Batcher(engine._model.model, sequences=1, n_ctx=256, threads=1, owner=engine)
            return one.wait(one.submit(Request(tokens(prompt), **kw)), 60).generated

        expected = [alone(p, kw) for p, kw in zip(prompts, good)]
        batch = Batcher(engine._model.model, sequences=6, n_ctx=256, threads=1, owner=engine)
        requests = [batch.submit(Request(tokens(p), **kw)) for p, kw in zip(prompts, good + bad)]
        for r in requests:
            r.done.wait(60)
        decoded = []
        for grammar in ({NUL_LITERAL!r}, {DEAD_LATER!r}):
            try:
                _complete(engine, "the order is late", 8, 0.0, [], 0, grammar=grammar)
                decoded.append("accepted")
            except ValueError as exc:
                decoded.append(str(exc))
        print(json.dumps({{
            "good": [r.generated for r in requests[:3]],
            "expected": expected,
            "errors": [repr(r.error) for r in requests],
            "generated_before_dead_end": len(requests[4].generated),
            "decoded": decoded,
            "busy": batch.busy(),
        }}))
        """
    )
    assert out["good"] == out["expected"]
    assert out["errors"][:3] == ["None"] * 3
    for error in out["errors"][3:]:
        assert error.startswith("GrammarDeadEnd('grammar allows no token"), error
    assert out["generated_before_dead_end"] == 1  # "a", then no token could follow
    refused, dead_end = out["decoded"]  # llm.decode's path: checked first, then guarded
    assert refused.startswith("grammar can never be satisfied"), refused
    assert dead_end.startswith("grammar allows no token"), dead_end
    assert out["busy"] == 0


def test_n_ctx_past_the_class_bound_is_refused_before_anything_loads(tiny_gguf: str) -> None:
    most = class_limits().llm_max_ctx
    loads = models.LOADS[f"llm:{tiny_gguf}"]
    for n_ctx in (most + 1, 10**7, 0, True, "4096"):
        with pytest.raises(ValueError, match=rf"n_ctx must be an integer within 16..{most}"):
            generate("the order is late", max_tokens=4, model=tiny_gguf, n_ctx=n_ctx)
        with pytest.raises(ValueError, match="llm_max_ctx"):
            prefill("the order is late", model=tiny_gguf, n_ctx=n_ctx)
        with pytest.raises(ValueError, match="llm_max_ctx"):
            decode("blob:nothing", model=tiny_gguf, n_ctx=n_ctx)
    assert models.LOADS[f"llm:{tiny_gguf}"] == loads


def _live_models() -> list[Any]:
    from llama_cpp import Llama

    return [o for o in gc.get_objects() if isinstance(o, Llama) and o._model.model is not None]


def test_a_process_keeps_at_most_llm_models_and_closes_the_rest(tiny_gguf: str) -> None:
    """Steps with ever new n_ctx values (a `map:` over them) used to keep a model each."""
    most = class_limits().llm_models
    sizes = [2048, 4096, 4097, 4098, 4099, 4100]
    texts = [
        generate("the order is late", max_tokens=4, model=tiny_gguf, n_ctx=n)["text"] for n in sizes
    ]
    assert len(set(texts)) == 1  # the same greedy text from every context size
    gc.collect()
    assert len(_live_models()) <= most, [m.n_ctx() for m in _live_models()]
    assert len(llm_models.CACHE.entries) <= most
    # the one evicted first comes back when asked for again
    again = generate("the order is late", max_tokens=4, model=tiny_gguf, n_ctx=2048)
    assert again["text"] == texts[0]


def test_a_model_in_use_is_not_closed_under_its_step(tiny_gguf: str) -> None:
    most = class_limits().llm_models
    with llm_models.llm_lease(tiny_gguf, 400, batch=True) as held:
        for n in range(401, 401 + most + 1):  # more other sizes than the bound
            generate("the order is late", max_tokens=2, model=tiny_gguf, n_ctx=n)
        assert held.engine._model.model is not None  # still loaded, still usable
        assert held.engine.tokenize(b"the order", add_bos=True)
    # once its step is done it is the least recently used: the next size closes it
    generate("the order is late", max_tokens=2, model=tiny_gguf, n_ctx=500)
    assert len(llm_models.CACHE.entries) <= most
    assert held.engine._model.model is None and held.batch is not None and held.batch.closed


def test_a_model_path_outside_the_file_roots_is_refused(tiny_gguf: str, tmp_path: Path) -> None:
    outside = tmp_path / "any.gguf"
    shutil.copy(tiny_gguf, outside)
    for op in (
        lambda: generate("the order is late", max_tokens=2, model=str(outside), n_ctx=256),
        lambda: prefill("the order is late", model=str(outside), n_ctx=256),
    ):
        with pytest.raises(PermissionError, match=r"LLM model file .* is outside the folders"):
            op()
    assert models.LOADS[f"llm:{outside}"] == 0


def test_a_state_that_inflates_past_its_context_is_refused(tiny_gguf: str) -> None:
    engine = llm_models.llm(tiny_gguf, 256)
    header = {"format": 1, "model": tiny_gguf, "n_tokens": 3, "seed": 0, "input_ids": [1, 2, 3]}
    bomb = zlib.compress(bytes(64 * 2**20), 9)  # 64 MiB of zeros in about 64 KB
    with pytest.raises(ValueError, match="state inflates past"):
        _restore(engine, json.dumps(header).encode() + b"\n" + bomb, tiny_gguf)
