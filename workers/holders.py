"""Is the holder of a lapsed start lease dead, or only stalled?

A lease lapses when its holder stops renewing it (:mod:`fleet.store.leases`): its process
died -- or it is paused (SIGSTOP), or a thread held the GIL past the lease. From outside a
paused process looks like a dead one, so each lapse used to count as a death: a copy ran
beside the stalled step, and two stalls failed a healthy run as "its worker died 2 times".
A holder token says where its process runs (:func:`token`), so a copy that finds a lapsed
lease asks what can be known instead of guessing:

- a holder on **this machine** (the same boot and PID namespace): its process is looked up
  by pid and start time. There (stopped or running, not a zombie): it stalled -- the copy
  does not run beside it. Gone, or the pid reused: it died;
- a holder on **another machine**: its worker's heartbeat (``fleet:worker-info``) says which
  processes it has. A worker that still beats with the holder's process among them: alive
  (a prefork child stalled while its main process beats). One that beats without it: dead
  (a pool child replaced, or the worker restarted). A worker that no longer beats: unknown --
  a whole worker paused on another host looks exactly like a dead one, and is taken for one
  (a copy must run the step of a worker that never comes back); when it does come back it
  takes its count back (``Leases.renew``).

``True``: alive (stalled); ``False``: dead; ``None``: cannot be told.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from typing import Any, cast

import redis

from fleet.constants import WORKER_INFO_KEY
from fleet.store.leases import IDLE, Judged

log = logging.getLogger("fleet.leases")


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def _machine() -> str:
    """This boot of this host and this PID namespace (containers on one host share a boot
    id, not their pids); empty where /proc cannot tell (no pid is looked up then)."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot}:{ns}" if boot else ""


MACHINE = _machine()


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) of process ``pid``, or None if there is none."""
    raw = _read(f"/proc/{pid}/stat")
    _, close, rest = raw.rpartition(")")  # the command name may hold spaces and parentheses
    fields = rest.split()
    if not close or len(fields) < 20:
        return None
    return fields[0], fields[19]


def process(pid: int) -> str:
    """``<machine>/<pid>.<start>``: a process, told apart from a later one given its pid."""
    found = _stat(pid)
    return f"{MACHINE}/{pid}.{found[1] if found else ''}"


_me: tuple[int, str] = (0, "")  # this process, as process() names it (read once per pid)


RECEIVED = "r"  # starts the unique part of a token taken as a worker received the message


def token(hostname: str | None, received: bool = False) -> str:
    """A new holder token for a step started by this process: its worker, where the process
    runs, and a unique part. ``|`` and ``/`` separate fields, so they are left out of the
    worker's name. ``received``: taken by a worker's main process as it received the step's
    message (workers.receipt), for the pool process that will run it."""
    global _me
    where = (hostname or "?").replace("|", "_").replace("/", "_")
    if _me[0] != os.getpid():  # a forked pool child is a process of its own
        _me = (os.getpid(), process(os.getpid()))
    return f"{where}/{_me[1]}/{RECEIVED if received else ''}{uuid.uuid4().hex[:12]}"


def local_alive(pid: int, start: str) -> bool:
    found = _stat(pid)
    if found is None or found[0] in ("Z", "X"):  # gone, or dead and not yet reaped
        return False
    return not start or found[1] == start


class Holders:
    """The judge :class:`fleet.store.leases.Leases` asks about a lapsed lease's holder."""

    def __init__(self, client: redis.Redis, worker_ttl: float) -> None:
        self.redis = client
        self.worker_ttl = worker_ttl

    def __call__(self, holder: str, step: tuple[str, str] | None = None) -> Judged:
        """Is ``holder`` alive (True), dead (False), or cannot it be told (None)? A holder
        that took the lease as its worker received the message (``RECEIVED``; ``step``: the
        run id and node path asked about) is alive only while its worker still holds the
        request it took it for -- received, waiting or running, as its heartbeat lists the
        leases of what it holds (or while it is alive and stopped beating: the whole worker
        stalled). A worker that lives on without it dropped the message unstarted (a lost
        connection, kombu putting it back): ``IDLE``. By the lease, not by the step: the
        worker may hold another copy of the same step, sent again for later."""
        parts = holder.split("/")
        if len(parts) != 4:
            return None  # a token of an older worker: it says nothing of its process
        worker, machine, proc, unique = parts
        pid_text, _, start = proc.partition(".")
        if not pid_text.isdigit():
            return None
        pid = int(pid_text)
        received = step is not None and unique.startswith(RECEIVED)
        if machine and machine == MACHINE:
            if not local_alive(pid, start):
                return False
            info = self._beating(worker) if received else None
            return IDLE if info is not None and not _holds(info, unique) else True
        info = self._beating(worker)
        if info is None:
            return None  # it stopped beating: dead, or the whole worker is paused
        try:
            pids = {int(info.get("pid") or 0), *(int(p) for p in info.get("pids") or [])}
        except (ValueError, TypeError):
            return None
        if pid not in pids:
            return False
        return IDLE if received and not _holds(info, unique) else True

    def _beating(self, worker: str) -> dict[str, Any] | None:
        """What ``worker``'s last heartbeat said, if it beats still (within ``worker_ttl``)."""
        raw = self.redis.hget(WORKER_INFO_KEY, worker)
        if raw is None:
            return None
        try:
            info = json.loads(cast(str, raw))
            if time.time() - float(info.get("last_seen", 0)) > self.worker_ttl:
                return None
        except (ValueError, TypeError, AttributeError):
            return None
        return info if isinstance(info, dict) else None


def _holds(info: dict[str, Any], unique: str) -> bool:
    """Whether a worker's heartbeat lists the lease ``unique`` (its token's last part) among
    those of the requests it holds."""
    received = info.get("received")
    return isinstance(received, list) and unique in received
