"""A client's step sends taken over by a test (a message lost, or sent somewhere on purpose)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from fleet.engine.dispatch import Dispatcher


@contextlib.contextmanager
def sends_through(dispatcher: Dispatcher, send: Callable[..., None]) -> Iterator[None]:
    """Inside, ``dispatcher`` sends every step with ``send(call, run, **options)``, as its
    :meth:`Dispatcher.send` would: also a submission's first steps, which otherwise go in
    the round trip that records the run (``sends_in_record``)."""
    real = dispatcher.send
    dispatcher.send = send  # type: ignore[method-assign]
    dispatcher.sends_in_record = False  # type: ignore[misc]
    try:
        yield
    finally:
        dispatcher.send = real  # type: ignore[method-assign]
        del dispatcher.sends_in_record  # (computed again from the configuration)
