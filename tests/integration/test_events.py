"""A run's events as they happen (RunHandle.events, fleet submit --follow), on the test fleet:
written only while somebody follows the run."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import redis

from fleet import Workflow
from fleet.client.client import Fleet
from fleet.constants import LISTEN_FIELD, RUN_EVENTS_KEY, RUN_KEY
from fleet.paths import EXAMPLES


def _three_steps() -> Workflow:
    wf = Workflow("three-steps", inputs=["t"])
    a = wf.step("a", "text.upper", text=wf.input("t"), classes=["cpu"])
    b = wf.step("b", "test.sleep", seconds=0.2, value=a["text"], classes=["io"])
    c = wf.step("c", "text.upper", text=b["value"], classes=["cpu"])
    wf.output("out", c["text"])
    return wf


def test_a_followed_run_tells_each_step_as_it_starts_and_ends(client: Fleet) -> None:
    run = client.submit(_three_steps(), {"t": "hi"}, follow=True)
    events = list(run.events(timeout=30))
    said = [(e["event"] if e["event"] != "step" else e["status"], e.get("node")) for e in events]
    expected = [x for n in "abc" for x in (("started", n), ("succeeded", n))]
    assert said == [*expected, ("end", None)]
    assert events[-1]["status"] == "succeeded"
    started = {e["node"]: e for e in events if e["event"] == "started"}
    assert started["b"]["worker"].startswith("io") and started["a"]["worker"].startswith("cpu")
    assert run.get(timeout=1) == {"out": "HI"}


def test_nothing_is_written_when_nobody_follows(client: Fleet, broker: redis.Redis) -> None:
    run = client.submit(_three_steps(), {"t": "quiet"})
    run.get(timeout=30)
    assert broker.exists(RUN_EVENTS_KEY.format(id=run.id)) == 0
    assert broker.hget(RUN_KEY.format(id=run.id), LISTEN_FIELD) is None
    # followed after it ended: its steps from the trace, then its end
    late = list(run.events(timeout=10))
    assert [e.get("status") for e in late] == ["succeeded"] * 3 + ["succeeded"]
    assert late[-1]["event"] == "end"


def test_a_wait_and_its_signal_are_events(client: Fleet) -> None:
    run = client.submit(EXAMPLES / "refund_approval.yaml", {"order": "F-1", "amount": 500},
                        follow=True)  # fmt: skip
    seen: list[dict[str, object]] = []

    def follow() -> None:
        seen.extend(run.events(timeout=30))

    follower = threading.Thread(target=follow)
    follower.start()
    deadline = time.monotonic() + 20
    while not any(e.get("status") == "waiting" for e in seen) and time.monotonic() < deadline:
        time.sleep(0.05)
    (waiting,) = [e for e in seen if e.get("status") == "waiting"]
    assert waiting["node"] == "approval" and waiting["signal"] == "approval"
    run.signal("approval", {"approved": True, "by": "ana"})
    follower.join(30)
    steps = [(e.get("node"), e.get("status")) for e in seen if e["event"] == "step"]
    assert ("approval", "succeeded") in steps and ("granted", "succeeded") in steps
    assert seen[-1]["event"] == "end" and seen[-1]["status"] == "succeeded"


def test_submit_follow_prints_each_step_then_the_result(client: Fleet) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fleet.cli.main", "submit", str(EXAMPLES / "triage.yaml"),
         "-i", "ticket=My blender arrived broken, refund please", "--follow"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    started = [i for i, line in enumerate(lines) if " started " in f" {line} "]
    ended = [i for i, line in enumerate(lines) if " succeeded " in f" {line} "]
    assert len(started) >= 5 and len(ended) >= 5
    assert any("started    clean" in line for line in lines)
    assert any("run succeeded" in line for line in lines)
    assert "ESCALATE" in done.stdout  # the result, printed after the events


def test_an_llm_step_streams_its_text_while_it_writes_it(client: Fleet) -> None:
    """llm.generate with stream: true, followed: the text comes in pieces between the step's
    start and end, and the pieces make the step's output."""
    wf = Workflow("streamed", inputs=["p"])
    g = wf.step("g", "llm.generate", prompt=wf.input("p"), max_tokens=40, prefix="A:",
                stream=True)  # fmt: skip
    wf.output("text", g["text"])
    prompt = "Question: Name three colours of the rainbow.\nAnswer:"
    run = client.submit(wf, {"p": prompt}, follow=True)
    events = list(run.events(timeout=120))
    out = run.get(timeout=5)["text"]
    pieces = [e for e in events if e["event"] == "text"]
    assert pieces and pieces[0]["text"] == "A:" and all(e["node"] == "g" for e in pieces)
    assert "".join(str(e["text"]) for e in pieces).strip() == out
    assert len(pieces) >= 3, pieces  # written over about a second, read every 20 ms
    kinds = [e["event"] if e["event"] != "step" else e["status"] for e in events]
    first, last = kinds.index("text"), len(kinds) - 1 - kinds[::-1].index("text")
    assert kinds.index("started") < first and last < kinds.index("succeeded")
    spread = float(str(pieces[-1]["at"])) - float(str(pieces[0]["at"]))
    print(f"{len(pieces)} pieces over {spread:.3f} s")
    # the same prompt unfollowed: the same text (greedy), and nothing written
    quiet = client.submit(wf, {"p": prompt})
    assert quiet.get(timeout=120)["text"] == out
