"""One bad LLM request fails its own step only, on a real batching worker (the test gpu class:
threads x 8, one llama.cpp batch) with the tiny GGUF.

A grammar that no token can continue used to abort the gpu worker's process (llama.cpp's
"Unexpected empty grammar stack"): the runs sharing its batch were lost with it, and failed
as "its worker died running it 2 times".
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.deploy.local import LocalFleet
from fleet.errors import WorkflowFailed

pytestmark = pytest.mark.integration

DEAD_LATER = 'root ::= "a" [\\x00]'  # passes the up-front check; no token can follow "a"
NEVER = 'root ::= "\\x00"'  # no token can start it: refused before the batch


def _generate(name: str, **params: Any) -> Workflow:
    wf = Workflow(name, inputs=["p"])
    step = wf.step("gen", "llm.generate", prompt=wf.input("p"), classes=["gpu"], **params)
    wf.output("text", step["text"])
    wf.output("tokens", step["tokens"])
    return wf


def test_bad_llm_requests_fail_their_own_runs_and_the_batch_goes_on(
    client: Fleet, local_fleet: LocalFleet, tiny_gguf: str, tmp_path: Path
) -> None:
    outside = tmp_path / "any.gguf"  # outside the file roots
    shutil.copy(tiny_gguf, outside)
    base = {"model": tiny_gguf, "n_ctx": 256}
    good = {
        "long": _generate("long", max_tokens=64, **base),
        "choice": _generate("choice", max_tokens=4, choices=["yes", "no"], **base),
        "sampled": _generate("sampled", max_tokens=32, temperature=0.9, seed=5, **base),
    }
    bad = {
        "dead-end": _generate("dead-end", max_tokens=8, grammar=DEAD_LATER, **base),
        "never": _generate("never", max_tokens=8, grammar=NEVER, **base),
        "huge-ctx": _generate("huge-ctx", max_tokens=8, model=tiny_gguf, n_ctx=10**6),
        "any-path": _generate("any-path", max_tokens=8, model=str(outside), n_ctx=256),
    }
    messages = {
        "dead-end": "grammar allows no token of the model here",
        "never": "grammar can never be satisfied",
        "huge-ctx": r"n_ctx must be an integer within 16\.\.8192 \(llm_max_ctx of class gpu\)",
        "any-path": "LLM model file .* is outside the folders ops may use",
    }
    (worker,) = local_fleet.workers_of("gpu")
    pid = worker.proc.pid
    client.submit(good["long"], {"p": "warm up"}).get(timeout=120)  # the model loaded
    runs = {
        name: client.submit(wf, {"p": f"the order {name} is late"}) for name, wf in good.items()
    }
    failing = {name: client.submit(wf, {"p": "the order is late"}) for name, wf in bad.items()}
    for name, run in failing.items():
        with pytest.raises(WorkflowFailed, match=messages[name]) as info:
            run.get(timeout=120)
        assert info.value.node == "gen"
    outputs = {name: run.get(timeout=120) for name, run in runs.items()}
    # (random weights: an end token may come early, so only the bounds are certain)
    assert 0 < outputs["long"]["tokens"] <= 64 and 0 <= outputs["sampled"]["tokens"] <= 32
    assert outputs["choice"]["text"] in ("yes", "no")
    # The worker never died: the same process served every run, each step ran once
    assert worker.proc.poll() is None and worker.proc.pid == pid
    for run in [*runs.values(), *failing.values()]:
        assert {e.attempt for e in run.trace() if e.node == "gen"} == {0}, run.trace()
