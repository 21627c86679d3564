"""An LLM generation's text passed on while the batch writes it (``llm.generate`` with
``stream: true``, while somebody follows the run): the step's own thread polls its request
and sends what is new, so the batch's thread never waits on the network."""

from __future__ import annotations

import time

from fleet.sdk import stream_text
from workers.ops.batcher import Batcher, Request

POLL_S = 0.02  # how often new text is looked for: well under a token's time on a CPU


def wait_streaming(batch: Batcher, request: Request, timeout: float | None, prefix: str) -> None:
    """Wait for ``request`` as ``batch.wait`` does, sending its text as it grows. Text that
    may be the start of a stop string is held back until it is known not to be one, so the
    pieces sent make the generated text exactly (after ``prefix``, sent first)."""
    if prefix:
        stream_text(prefix)
    hold = max((len(s) for s in request.stop if s), default=1) - 1
    sent = 0
    end = None if timeout is None else time.monotonic() + timeout
    while not request.done.wait(POLL_S):
        if end is not None and time.monotonic() > end:
            break  # batch.wait below cancels it and raises
        sent = _send(request.result_text(), sent, hold)
    batch.wait(request, 0)  # its error, or (past the deadline) its cancellation
    _send(request.result_text(), sent, 0)


def _send(text: str, sent: int, hold: int) -> int:
    ready = len(text) - hold
    if ready > sent:
        stream_text(text[sent:ready])
        return ready
    return sent
