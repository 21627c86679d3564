"""A step that may be a copy, or whose worker died: who runs it, and when to give up.

``begin`` is what ``fleet.step`` does before its op: every copy checks the run and the
step's start lease (:mod:`fleet.store.leases`) in one round trip and runs only if it takes the
lease; the lease is renewed while the op runs (:mod:`workers.lease_keeper`). ``StepRequest``
is the step's request in the worker's main process, where a dead pool child is noticed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from billiard.einfo import ExceptionInfo
from celery import Task
from celery.exceptions import Ignore, WorkerLostError
from celery.worker.request import Request

from fleet.constants import BEGUN_HEADER, STEP_TASK
from fleet.engine.dispatch import Dispatcher
from fleet.engine.readiness import StepCall
from fleet.errors import StepFailed
from fleet.messaging.app import fleet_config
from fleet.messaging.transport import QoS
from fleet.store.leases import Begin, Leases, lease_field, read_begin
from workers.lease_keeper import Keeper
from workers.runtime import WorkerRuntime, runtime

log = logging.getLogger("fleet.tasks")


@dataclass(frozen=True)
class Lease:
    """The start lease a running copy of a step holds (renewed until ``release``)."""

    leases: Leases
    keeper: Keeper
    run_id: str
    field: str
    listened: bool = False  # somebody listens to the run's events (fleet.store.events)
    state: dict[str, str] | None = None  # the run's outputs as it began, when asked (JSON)
    # the message's delivery tag, when its worker recorded it as unacknowledged in the run
    # store's Redis as it took the lease (workers.receipt): the step's record may
    # acknowledge it (fleet.messaging.transport.ack_commands)
    tag: str | None = None

    def end_by_retry(self) -> None:
        self.leases.mark(self.run_id, self.field, "done")

    def release(self) -> None:
        self.keeper.release(self.run_id, self.field)

    def hand_over(self) -> None:
        """Let go of the lease for a copy sent elsewhere: it takes it at once, uncounted."""
        self.release()
        self.leases.mark(self.run_id, self.field, "lost")


REROUTES = 3  # a step whose runtime was refused this often fails its run


def reroute(
    task: Task, engine: Dispatcher, call: StepCall, run: dict[str, Any], lease: Lease, why: str
) -> NoReturn:
    """A process refused the step's runtime (:class:`fleet.errors.RuntimeRefused`) before
    loading anything: send the step again through the router -- which sends it to the lane
    of its class that serves the runtime, or another process -- instead of failing the run;
    after ``REROUTES`` refusals, fail it naming the fix. Raises Ignore (or StepFailed)."""
    refused = int(call.get("refused", 0)) + 1
    path = call["path"]
    if refused > REROUTES:
        fix = f"node '{path}' (op {call['op']}): refused {refused - 1} times: {why}"
        engine.store.fail(run["id"], path, fix)
        raise StepFailed(path, call["op"], why)
    log.warning("run %s: node %s routed again: %s", run["id"], path, why)
    lease.hand_over()
    again: StepCall = {**call, "refused": refused}
    engine.send(again, run, task_id=task.request.id, retries=task.request.retries or 0)
    raise Ignore()


def begin(
    task: Task,
    rt: WorkerRuntime,
    call: StepCall,
    run: dict[str, Any],
    canvas: bool = False,
    state: bool = False,
) -> Lease:
    """Hold the step's start lease while its op runs; raise Ignore when this copy must not
    run it. Taken in one round trip, which also reads the run's status (a copy that sat in
    a queue does no work for a run that failed meanwhile) -- as the worker received the
    message, where it could (:mod:`workers.receipt`), else here. ``canvas``: the step is a
    canvas's node (``fleet.node``), whose canvas sends what follows it: a copy does neither.
    ``state``: the same round trip reads the run's outputs so far (``Lease.state``)."""
    leases = rt.leases
    path, attempt = call["path"], task.request.retries or 0
    field = lease_field(path, attempt)
    token, found, tag = _received(task, rt)
    if found is None:
        worker, group = task.request.hostname or "", bool(call.get("group"))
        found = leases.begin(run["id"], path, attempt, token, group, worker, state)
    _check_begin(task, rt.engine, call, run, found, canvas)
    if state and found.state is None:  # (its sender did not ask for it)
        found = replace(found, state=rt.store.state_json(run["id"]))
    rt.keeper.hold(leases, run["id"], field, token)
    return Lease(leases, rt.keeper, run["id"], field, found.listened, found.state, tag)


def _received(task: Task, rt: WorkerRuntime) -> tuple[str, Begin | None, str | None]:
    """(the holder token, what the round trip that took the lease as the worker received
    the message found, the message's delivery tag if that round trip recorded it); None for
    what it found where the lease must be taken here: it was not taken then, its holder
    lapsed (judged here), or the message waited past a third of the lease -- taken again
    here, as the holder it already is, for a lease that may have lapsed."""
    req = task.request
    begun = getattr(req, BEGUN_HEADER, None)
    tag = (getattr(req, "properties", None) or {}).get("delivery_tag")
    if not isinstance(begun, list) or len(begun) != 4 or begun[2] != tag:
        return rt.keeper.token(req.hostname), None, None
    token, at, _, reply = begun
    if time.time() - float(at) > rt.leases.lease_s / 3:
        return str(token), None, str(tag)
    found = read_begin(reply)
    if found is None:  # lapsed: nothing was taken; its holder is judged here
        return rt.keeper.token(req.hostname), None, str(tag)
    return str(token), found, str(tag)


def _check_begin(
    task: Task,
    engine: Dispatcher,
    call: StepCall,
    run: dict[str, Any],
    found: Begin,
    canvas: bool = False,
) -> None:
    """Raise Ignore when the run failed, or when this copy must not run the step (``found``):
    it recorded its outputs already (swept back, or redelivered after its worker died past
    the record) -- the op does not run again, but what it made ready is sent (the claims let
    each successor out once); another live copy runs it now -- this one is sent again, under
    its id, for when that copy's lease would lapse (a holder that dies later is covered); or
    that attempt ended in a retry. A step whose lease was taken over from dead holders
    ``max_worker_losses`` times fails its run: its worker died each time (any pool: a
    thread-pool worker's whole process dies with it)."""
    path = call["path"]
    if found.status == "failed" or found.verdict == "ended":
        raise Ignore()  # another branch failed the run, or a retry carries the step on
    if found.verdict == "skip":  # its outputs are recorded
        if found.status == "running" and not canvas:
            engine.advance(run, engine.store.state(run["id"]), owner=task.request.id or path)
        raise Ignore()
    if found.verdict == "held":
        wait = found.wait_s
        how = f" (its holder {found.stalled} stalled: alive, not renewing)" if found.stalled else ""
        log.info(
            "run %s: node %s runs in another copy%s; again in %.1fs", run["id"], path, how, wait
        )
        if not canvas:  # (a canvas's copy is dropped: the running one carries the canvas on,
            # and its message comes back if its worker dies -- a copy that went on too
            # would send what follows twice)
            engine.send(call, run, countdown=wait + 0.5, task_id=task.request.id)
        raise Ignore()
    if found.takeovers >= engine.cfg.max_worker_losses:
        why = (
            f"node '{path}' (op {call['op']}): its worker died running it {found.takeovers} "
            f"times (its start lease lapsed each time); not run again"
        )
        engine.store.fail(run["id"], path, why)
        raise Ignore()


ACKED = "acked"  # the key of a step's result that says its record acknowledged its message
_ACKED_TAIL = f", '{ACKED}': True}}"  # how that result's repr ends (as Celery hands it back)


class StepRequest(Request):
    """A step's request in the worker's main process, where a dead pool child is noticed.

    acks_late + reject_on_worker_lost requeue a step whose process died -- forever, for a step
    that kills its worker every time. Each loss is counted with the run (atomically, so any
    host's worker counts the same step); at ``max_worker_losses`` the run fails naming the node
    and how its worker died, the message is acknowledged, and the worker serves other runs.

    A ``fleet.step`` whose record acknowledged its message (its result: ``{"node": path,
    ACKED: True}``) is acknowledged here for the prefetch count alone: no second round trip
    to Redis.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Celery makes each task's request class a subclass of this one, with an
        ``on_success`` of its own (``create_request_cls``): it is wrapped, so that the
        result is read before the message is acknowledged."""
        super().__init_subclass__(**kwargs)
        made = cls.__dict__.get("on_success")
        if made is not None:

            def on_success(self: StepRequest, failed__retval__runtime: Any, **kw: Any) -> Any:
                qos = self._acked_by_record(failed__retval__runtime)
                if qos is not None:
                    qos.acked_elsewhere(self._message.delivery_tag)
                return made(self, failed__retval__runtime, **kw)

            cls.on_success = on_success

    def _acked_by_record(self, failed__retval__runtime: Any) -> QoS | None:
        """The channel's QoS, when this is a ``fleet.step`` whose result says its record
        acknowledged its message (as Celery hands it back: its repr; one cut short is
        acknowledged as always, as is any other task's, whatever it returned)."""
        if self.task.name != STEP_TASK:
            return None
        try:
            failed, retval, _ = failed__retval__runtime
        except (TypeError, ValueError):
            return None
        if failed or not isinstance(retval, str) or not retval.endswith(_ACKED_TAIL):
            return None
        qos = getattr(getattr(self._message, "channel", None), "qos", None)
        return qos if isinstance(qos, QoS) else None

    def on_failure(
        self, exc_info: ExceptionInfo, send_failed_event: bool = True, return_ok: bool = False
    ) -> None:
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)  # ExceptionWithTraceback
        cancelled = self._already_cancelled or self._already_revoked  # killed on purpose
        lost = isinstance(exc, WorkerLostError) or (isinstance(exc, SystemExit) and not cancelled)
        if lost and self._gave_up(str(exc) or type(exc).__name__):
            self.acknowledge()
            return
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        """A hard time limit: the pool kills the step's process. Counted as a loss of its
        worker, as a death is (a step that always runs past it fails its run at
        ``max_worker_losses``), and its lease let go for the next copy, uncounted."""
        if not soft:
            try:
                self._gave_up(f"killed at its hard time limit ({timeout:g} s)")
            except Exception as exc:  # (Redis away: Celery's own handling goes on)
                log.warning("could not count a hard time limit's kill: %s", exc)
        super().on_timeout(soft, timeout)

    def _gave_up(self, how: str) -> bool:
        call, run = self.kwargs.get("call") or {}, self.kwargs.get("run") or {}
        if not call.get("path") or not run.get("id"):
            return False
        store = runtime(self.task.app).store
        cfg = fleet_config(self.task.app)
        losses = store.count_loss(run["id"], call["path"])
        log.warning(
            "run %s: node %s lost its worker (%d): %s", run["id"], call["path"], losses, how
        )
        if losses < cfg.max_worker_losses:
            # The death is counted: the requeued copy takes the lease at once, uncounted.
            field = lease_field(call["path"], int(self.request_dict.get("retries") or 0))
            runtime(self.task.app).leases.mark(run["id"], field, "lost")
            return False
        why = (
            f"node '{call['path']}' (op {call.get('op')}): its worker died {losses} times "
            f"running it ({how}); not delivered again"
        )
        store.fail(run["id"], call["path"], why)
        return True
