"""The step an op is running for: its run, node path, attempt and deadline.

The worker sets it around each op call (:func:`running`); an op reads it with
:func:`current_step` -- None when the op is called outside a fleet step (a test, a script).
It follows the op into the helper threads :func:`fleet.sdk.process.run_within` starts.

``idempotency_key`` is the same for every retry and every redelivery of one step (the run
id and the node path, which names the loop iteration and the map item): a tool with side
effects sends it so that the service it calls can do the work once (``http.request`` sends
it as ``Idempotency-Key`` on every method that is not safe).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StepContext:
    run_id: str
    path: str  # node path: "tools#2/lookup", "summaries[3]"
    attempt: int  # 0 for the first, 1 for the first retry, ...
    deadline: float | None = None  # wall-clock time (time.time()) the step must end by
    # seconds this step spent loading models into its process (note_load): a cold start
    loads: list[float] = field(default_factory=list, compare=False)
    # what the step spent beyond its class's time (note_spend): dollars, and tokens
    spent: list[tuple[float, int]] = field(default_factory=list, compare=False)
    # publishes a text chunk to whoever follows the run (None: nobody did when it started)
    publish: Callable[[str], None] | None = field(default=None, compare=False)

    @property
    def idempotency_key(self) -> str:
        """Stable across retries and redeliveries of this step, different for any other."""
        return f"{self.run_id}:{self.path}"

    def remaining(self) -> float | None:
        """Seconds left before the step's deadline (never below 0); None without one."""
        return None if self.deadline is None else max(0.0, self.deadline - time.time())

    def cap(self, seconds: float) -> float:
        """``seconds``, or less when the step's deadline comes sooner: an op's own timeout
        must not outlive the step it runs for."""
        left = self.remaining()
        return seconds if left is None else min(seconds, left)


_CURRENT: ContextVar[StepContext | None] = ContextVar("fleet_step", default=None)


def current_step() -> StepContext | None:
    return _CURRENT.get()


def time_left(seconds: float) -> float:
    """``seconds``, cut to what is left of the current step's deadline (as is outside a
    step): an op's own timeout must not outlive the step it runs for. 0: no time left."""
    step = _CURRENT.get()
    return seconds if step is None else step.cap(seconds)


def note_load(seconds: float) -> None:
    """Say that the current step spent ``seconds`` loading a model into this process (the
    worker reports it as the step's cold start, and routing counts it where a class's
    processes do not hold the model yet). Outside a step: nothing."""
    step = _CURRENT.get()
    if step is not None:
        step.loads.append(seconds)


def stream_text(chunk: str) -> bool:
    """Send ``chunk`` of the text the current step is writing to whoever follows its run
    (``RunHandle.events``, ``fleet submit --follow``) as it is written. False, and nothing
    sent, when nobody followed the run as the step started, or outside a step: an op may
    skip its streaming work then."""
    step = _CURRENT.get()
    if step is None or step.publish is None:
        return False
    step.publish(chunk)
    return True


def streaming() -> bool:
    """Whether somebody follows the current step's run (its text chunks would be sent)."""
    step = _CURRENT.get()
    return step is not None and step.publish is not None


def note_spend(dollars: float, tokens: int = 0) -> None:
    """Say that the current step spent ``dollars`` (and ``tokens``) on a priced service --
    an LLM endpoint's tokens: the worker adds it to the step's trace and to its run's cost,
    besides the class's time. Outside a step: nothing."""
    step = _CURRENT.get()
    if step is not None:
        step.spent.append((float(dollars), int(tokens)))


@contextmanager
def running(step: StepContext) -> Iterator[StepContext]:
    """Make ``step`` the current step while the block runs."""
    token = _CURRENT.set(step)
    try:
        yield step
    finally:
        _CURRENT.reset(token)
