"""Run a worker's lanes: one ``celery worker`` process per runtime of a GPU class, together.

On a CUDA host two native GPU runtimes in one process can crash it (torch and a CUDA
llama.cpp do; CTranslate2 beside llama.cpp was never measured), so a GPU class that lists
several runtimes runs a process per runtime on the same GPU, each consuming its lane's queue
(:meth:`fleet.config.ClassSpec.queue_for`). ``fleet worker CLASS`` starts them as one
worker: a signal reaches every lane, and when one lane exits the others are stopped, so that
whatever supervises the worker (a container runtime, systemd, ``fleet up``) restarts it whole.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger("fleet.lanes")

Launch = tuple[list[str], dict[str, str]]  # a lane's argv and environment


def run_lanes(lanes: Sequence[Launch], grace: float = 60.0, poll: float = 0.5) -> int:
    """Start every lane, forward SIGTERM/SIGINT/SIGQUIT to them, and return the exit code of
    the first lane that ends (after a warm stop of the others, killed past ``grace`` s);
    128 + N for one killed by signal N."""
    procs = [subprocess.Popen(argv, env=env) for argv, env in lanes]
    got: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        got.append(signum)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, forward)
    while all(proc.poll() is None for proc in procs):
        time.sleep(poll)
    ended = next(proc for proc in procs if proc.poll() is not None)
    if not got:
        log.warning(
            "lane %s exited with code %s; stopping the others", ended.args, ended.returncode
        )
    stop(procs, grace)
    code = int(ended.returncode or 0)
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell says


def stop(procs: Sequence[subprocess.Popen[bytes]], grace: float) -> None:
    """Warm shutdown (SIGTERM) of the lanes still running; SIGKILL past ``grace`` s."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
