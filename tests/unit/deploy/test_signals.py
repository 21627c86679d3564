"""The shared mechanism by which a command stops what it started: SIGTERM and SIGINT raise
`Stopped` inside `stop_on_signals`, and a signal that lands inside a `deferred` section is
raised when the section ends, not halfway through it."""

from __future__ import annotations

import signal

import pytest

from fleet.deploy.signals import Stopped, deferred, stop_on_signals, stops_on_signals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_raises_stopped_and_the_handlers_are_put_back(signum: int) -> None:
    before = signal.getsignal(signum)
    with pytest.raises(Stopped) as info, stop_on_signals():
        signal.raise_signal(signum)
    assert info.value.signum == signum and isinstance(info.value, KeyboardInterrupt)
    assert signal.getsignal(signum) is before


def test_sigint_ignored_as_in_a_background_job_still_stops_the_command() -> None:
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:

        @stops_on_signals
        def command() -> None:
            signal.raise_signal(signal.SIGINT)

        with pytest.raises(Stopped):
            command()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_signal_inside_a_deferred_section_is_raised_as_it_ends() -> None:
    done = []
    with pytest.raises(Stopped) as info, stop_on_signals():
        with deferred():
            with deferred():  # nested: held until the outer section ends
                signal.raise_signal(signal.SIGTERM)
                done.append("inner")
            signal.raise_signal(signal.SIGINT)  # a second one: the first is raised
            done.append("outer")
        done.append("after")  # never: raised as the section ended
    assert done == ["inner", "outer"] and info.value.signum == signal.SIGTERM
    with stop_on_signals(), deferred():  # nothing held from before
        done.append("quiet")
    assert done[-1] == "quiet"
