"""A command that starts processes stops them when it is told to stop: SIGTERM or SIGINT.

The processes a local fleet starts (its Redis, each worker, Flower) run in sessions of their
own, so a signal meant for the command never reaches them, and Python's default answer to
SIGTERM ends the command without running a ``finally``: ``timeout 15 fleet eval`` left a
Redis and eight workers running. Every command that starts a fleet (``up``, ``eval``,
``demo``, ``bench``, ``calibrate``, ``profile``, ``gpu-check``) runs inside
:func:`stop_on_signals`: either signal raises :class:`Stopped` (a ``KeyboardInterrupt``) in
the main thread, wherever it is, and the ``finally`` that stops the fleet runs.

A signal must not land between starting a process and recording it (the process would be
nobody's to stop), nor halfway through stopping them: :func:`deferred` holds a signal that
arrives inside it until the section ends (``LocalFleet`` starts and stops its processes in
one, the order API too).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from types import FrameType
from typing import ParamSpec, TypeVar

SIGNALS = (signal.SIGTERM, signal.SIGINT)
P = ParamSpec("P")
R = TypeVar("R")


class Stopped(KeyboardInterrupt):
    """The command was told to stop (SIGTERM or SIGINT)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class _State:
    depth = 0  # deferred sections the main thread is in
    held: int | None = None  # a signal that arrived inside one


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _State.depth:
        _State.held = _State.held or signum
        return
    raise Stopped(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Inside: SIGTERM and SIGINT raise :class:`Stopped` in the main thread (also where a
    shell started the command with SIGINT ignored, as it does a background job); the
    handlers before are put back after. Outside the main thread it changes nothing."""
    if not _main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def stops_on_signals(command: Callable[P, R]) -> Callable[P, R]:
    """``command`` (a click command's function) run inside :func:`stop_on_signals`."""

    @wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with stop_on_signals():
            return command(*args, **kwargs)

    return run


@contextmanager
def deferred() -> Iterator[None]:
    """A section no signal interrupts: one that arrives inside is raised as it ends."""
    if not _main_thread():
        yield
        return
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        held, _State.held = _State.held, None
        if held is not None and not _State.depth:
            raise Stopped(held)
        _State.held = held  # an outer section raises it
