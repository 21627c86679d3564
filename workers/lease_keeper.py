"""The start leases this worker process holds, renewed while their ops run.

A step that took its lease (:mod:`fleet.store.leases`) is held here from its start to its
end; a thread of this process renews every held lease each third of ``start_lease_s``, in one
round trip (a step shorter than that is never renewed: its recorded outputs turn later copies
away). If this process dies the renewals stop, the lease lapses, and a later copy of the step
takes it over -- which is how a worker's death is told from a duplicate.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

from celery.exceptions import Ignore, Retry

from fleet.store.leases import Leases
from workers import holders

log = logging.getLogger("fleet.leases")
Held = tuple[str, str, str]  # (run id, lease field, holder token)


class Keeper:
    """One per process (on its :class:`workers.runtime.WorkerRuntime`): the leases held here
    and the thread renewing them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (run id, field) -> (token, its leases, when it was last known to hold: monotonic)
        self._held: dict[tuple[str, str], tuple[str, Leases, float]] = {}
        # Leases of steps that ended by an error, not yet marked ``lost`` (Redis refused the
        # mark): marked by the renewing thread as soon as Redis answers.
        self._unmarked: list[tuple[Leases, Held]] = []
        self._thread: threading.Thread | None = None

    def token(self, hostname: str | None) -> str:
        """A new holder token: unique, and saying where the holder runs -- its worker, its
        machine and process -- so a copy that finds its lease lapsed can tell whether it
        died or stalled (:mod:`workers.holders`)."""
        return holders.token(hostname)

    def hold(self, leases: Leases, run_id: str, field: str, token: str) -> None:
        with self._lock:
            self._held[(run_id, field)] = (token, leases, time.monotonic())
            self._start(leases)

    def _start(self, leases: Leases) -> None:  # (with the lock held)
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._renew_forever, args=(leases.lease_s / 3,), daemon=True
            )
            self._thread.name = "fleet-leases"
            self._thread.start()

    def release(self, run_id: str, field: str) -> None:
        """The step ended. One that went unrenewed for longer than its lease (this process
        stalled: it was paused, or a thread held the GIL) asks once whether another copy
        took its lease over meanwhile, so that the takeover is not counted as its death
        (:meth:`Leases.renew`). One that ends by an error (called while it propagates)
        marks its lease ``lost``: this process lives on, so a later copy would find its
        holder alive (:mod:`workers.holders`) and wait on a step nobody runs; it takes it at
        once, uncounted, instead. A mark Redis refuses (the error was Redis's) is made
        again by the renewing thread until it is taken: unmarked, the lease would keep
        every later copy waiting on this live process for good. Any other release costs
        nothing."""
        with self._lock:
            found = self._held.pop((run_id, field), None)
        if found is None:
            return
        error = sys.exc_info()[1]
        if error is not None and not isinstance(error, Retry | Ignore):  # (those mark it)
            try:
                found[1].mark(run_id, field, "lost", found[0])  # if it is still its own
            except Exception as exc:  # Redis away or busy: marked again from the thread
                log.warning(
                    "run %s: step %s: could not let its lease go yet (tried again each "
                    "renewal): %s",
                    run_id,
                    field,
                    exc,
                )
                with self._lock:
                    self._unmarked.append((found[1], (run_id, field, found[0])))
                    self._start(found[1])
        if time.monotonic() - found[2] <= found[1].lease_s:
            return
        try:
            found[1].renew([(run_id, field, found[0])])
        except Exception as exc:  # Redis away: the takeover stays counted
            log.warning("run %s: step %s: could not check its start lease: %s", run_id, field, exc)

    def held(self) -> list[Held]:
        with self._lock:
            return [(run, field, token) for (run, field), (token, _, _) in self._held.items()]

    def renew_once(self) -> None:
        """Renew every lease held now (one round trip per store); log the ones lost; mark
        ``lost`` the leases of steps that ended by an error and could not be marked then.
        The round trips are made outside the lock: a step starting or ending meanwhile does
        not wait for Redis (a lease renewed just after its step ended only lingers until it
        lapses -- the step's recorded outputs turn copies away). The renewals go first: a
        mark that waits on Redis does not hold them back."""
        with self._lock:
            by_store: dict[int, tuple[Leases, list[Held]]] = {}
            for (run_id, field), (token, leases, _) in self._held.items():
                by_store.setdefault(id(leases), (leases, []))[1].append((run_id, field, token))
        for leases, held in by_store.values():
            asked = time.monotonic()
            try:
                lost = leases.renew(held)
            except Exception as exc:  # Redis away: try again next time, never die
                log.warning("could not renew %d start lease(s): %s", len(held), exc)
                continue
            with self._lock:
                for run_id, field, token in held:
                    now = self._held.get((run_id, field))
                    if now is not None and now[0] == token:
                        self._held[(run_id, field)] = (token, leases, asked)
                for run_id, field, token in lost:
                    now = self._held.get((run_id, field))
                    if now is None or now[0] != token:
                        continue  # it ended meanwhile (a retry marks its lease done)
                    log.warning(
                        "run %s: step %s: another copy took over its start lease from %s "
                        "(this process stalled and was taken for dead; not counted as a "
                        "death); it goes on, and may run twice",
                        run_id,
                        field,
                        token,
                    )
                    del self._held[(run_id, field)]
        self._mark_unmarked()

    def _mark_unmarked(self) -> None:
        with self._lock:
            todo, self._unmarked = self._unmarked, []
        for n, (leases, (run_id, field, token)) in enumerate(todo):
            try:
                marked = leases.mark(run_id, field, "lost", token)
            except Exception:  # still refused (Redis away: the rest would be too): next time
                with self._lock:
                    self._unmarked.extend(todo[n:])
                return
            if marked:  # (else another copy had taken it over meanwhile: nothing to let go)
                log.warning("run %s: step %s: its lease let go (marked lost)", run_id, field)

    def _renew_forever(self, interval: float) -> None:
        while True:
            time.sleep(interval)
            self.renew_once()
