"""Move a run forward: decide what is ready, claim it, send it, or finish the run.

The same code runs in the client (the first steps of a submitted run) and in every step task
once its outputs are recorded -- a step sends its own successors, so a sequence of steps
costs one broker hop per step and no control task. When parallel branches join, each
finishing branch makes the decision from the state it read back after writing its own
outputs; the last one sees every input of the join, and the claim (one Redis hash per run)
lets exactly one task send each ready step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from functools import cached_property
from typing import Any

from celery import Celery, Signature

from fleet.config import FleetConfig
from fleet.constants import (
    BEGIN_HEADER,
    CELERY_DONE_TASK,
    CELERY_FAILED_TASK,
    CELERY_LEVEL_HEADER,
    CELERY_OP_PREFIX,
    CELERY_RUN_HEADER,
    CELERY_STEP_HEADER,
    INPUTS,
    STEP_TASK,
    WAIT_OP_PREFIX,
)
from fleet.engine.compiler import CompiledWorkflow, compile_workflow, may_end, sends_alone
from fleet.engine.publishing import Held, HeldEvent, Prepared, Publisher
from fleet.engine.readiness import Decision, Outputs, StepCall, decide
from fleet.errors import FleetError, ReadinessError, Unroutable
from fleet.sdk.registry import Registry
from fleet.sdk.waits import FOR_OP, SIGNAL_OP
from fleet.store.events import notify
from fleet.store.records import Claim, NewRun, TraceEntry
from fleet.store.runs import RunStore
from fleet.store.waits import Wait, WaitStore
from fleet.workflow.model import WorkflowSpec
from fleet.workflow.waits import moment, seconds

log = logging.getLogger("fleet.dispatch")
CACHE_SIZE = 256  # compiled workflows kept per process


RUN_OPTIONS = ("priority", "sla_s", "policy")  # what a submitter may set for one run


def broker_is_store(app: Celery, cfg: FleetConfig) -> bool:
    """Whether the run store is the broker's Redis server and database (the same
    ``redis://`` URL), whose keys kombu does not prefix: a step's messages may then go in
    the script that records it, and its start lease in the round trip that records its
    message's receipt (:mod:`workers.receipt`)."""
    broker = str(app.conf.broker_url or "")
    if broker != cfg.backend_url or not broker.startswith("redis://"):
        return False
    return not (app.conf.broker_transport_options or {}).get("global_keyprefix")


def new_run(workflow: CompiledWorkflow, run_id: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """A new run as its step messages carry it: id, workflow, spec digest, submission time,
    and the run options given (those not None)."""
    run: dict[str, Any] = {
        "id": run_id,
        "workflow": workflow.spec.name,
        "spec": workflow.digest,
        "submitted_at": time.time(),
    }
    run.update({k: v for k, v in options.items() if k in RUN_OPTIONS and v is not None})
    return run


class Dispatcher:
    def __init__(self, app: Celery, cfg: FleetConfig, store: RunStore, registry: Registry) -> None:
        self.app, self.cfg, self.store, self.registry = app, cfg, store, registry
        self._compiled: OrderedDict[str, CompiledWorkflow] = OrderedDict()
        self._put_at: dict[str, float] = {}  # when this process last stored each spec
        self.publisher = Publisher(app, self._unroutable)

    def register(self, workflow: CompiledWorkflow, force: bool = False) -> None:
        """Remember a compiled workflow and store its spec for the workers: once per digest
        and half its lifetime, or again with ``force`` (a restarted broker may have lost it)."""
        now = time.monotonic()
        stale = now - self._put_at.get(workflow.digest, -math.inf) > self.store.ttl / 2
        if force or stale:
            self.store.put_spec(workflow.digest, workflow.spec_json)
            self._put_at[workflow.digest] = now
        self._remember(workflow.digest, workflow)

    def _remember(self, digest: str, workflow: CompiledWorkflow) -> None:
        self._compiled[digest] = workflow
        self._compiled.move_to_end(digest)
        while len(self._compiled) > CACHE_SIZE:
            old, _ = self._compiled.popitem(last=False)
            self._put_at.pop(old, None)

    def workflow(self, digest: str) -> CompiledWorkflow:
        cached = self._compiled.get(digest)
        if cached is not None:
            self._compiled.move_to_end(digest)
            return cached
        text = self.store.get_spec(digest)
        if text is None:
            raise FleetError(f"workflow {digest} is unknown here (its spec expired?)")
        compiled = compile_workflow(WorkflowSpec.model_validate_json(text), self.cfg, self.registry)
        self._remember(digest, compiled)
        return compiled

    def start(
        self,
        workflow: CompiledWorkflow,
        run: dict[str, Any],
        values: dict[str, Any],
        *,
        force: bool = False,
        reply: dict[str, Any] | None = None,
        follow: bool = False,
    ) -> None:
        """Record a new run and send its first ready steps. Idempotent for one run id (the
        claims let each step out once), so a caller may try again after a broker error;
        ``reply``: the Celery task whose result the run's outcome is (see RunStore.create);
        ``follow``: somebody will follow its events (they are kept from the start)."""
        self.start_runs(workflow, [(run, values, reply)], force=force, follow=follow)

    def start_runs(
        self,
        workflow: CompiledWorkflow,
        runs: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]],
        *,
        force: bool = False,
        follow: bool = False,
    ) -> None:
        """:meth:`start` for each (run, values, reply) of ``runs``: their records (with the
        claims of their first steps) in one round trip, and every first step with its
        task-sent event in one more (:meth:`sending_together`)."""
        self.register(workflow, force=force)
        records: list[NewRun] = []
        starts: list[tuple[dict[str, Any], Outputs, str, Claim | None, Prepared | None]] = []
        name, digest = workflow.spec.name, workflow.digest
        for run, values, reply in runs:
            meta = {k: run.get(k) for k in RUN_OPTIONS}
            owner, state = f"submit:{run['id']}", {INPUTS: values}
            claim, prepared = None, None
            with contextlib.suppress(FleetError):  # else advance fails the run, naming why
                first = decide(workflow, state)
                claim = Claim(owner, [c["path"] for c in first.ready] + first.skipped)
                # sent by the round trip that records the run, where that can be done
                prepared = self.prepare_sends(run, state, claim.paths, first, False)
                claim.sends = prepared.commands if prepared is not None else None
            records.append(NewRun(run["id"], name, meta, values, reply, digest, follow, claim))
            starts.append((run, state, owner, claim, prepared))
        self.store.create_runs(records)
        events: list[HeldEvent] = []
        with self.sending_together():
            for started, outputs, by, claimed, ready in starts:
                if claimed is None or ready is None:
                    self.advance(started, outputs, owner=by, claimed=claimed)
                else:
                    events += _events_of_won(claimed, ready)
        self.publisher.announce(events)

    def sending_together(self) -> contextlib.AbstractContextManager[None]:
        """The steps this thread sends inside are published together at its end
        (:class:`fleet.engine.publishing.Publisher`)."""
        return self.publisher.together()

    def _unroutable(self, run_id: str, path: str, error: Unroutable) -> None:
        self.store.fail(run_id, path, str(error))

    def advance(
        self, run: dict[str, Any], state: Outputs, owner: str, claimed: Claim | None = None
    ) -> Decision | None:
        """Send the steps that ``state`` makes ready (those ``owner`` wins), trace the nodes it
        rules out, and record the outputs once the workflow is complete. ``claimed``: claims
        ``owner`` took already (as it recorded its outputs): only the other paths are claimed
        now -- in a chain of steps, none, and no round trip."""
        try:
            decision = decide(self.workflow(run["spec"]), state)
        except ReadinessError as exc:
            log.warning("run %s: %s", run["id"], exc)
            self.store.fail(run["id"], exc.path, str(exc))
            return None
        except FleetError as exc:
            self.store.fail(run["id"], None, f"planning failed: {exc}")
            return None
        within = run.get("within")  # a canvas runs this node through the engine: only it
        ready = {
            c["path"]: c for c in decision.ready if within is None or _under(c["path"], within)
        }
        skipped = [p for p in decision.skipped if within is None or _under(p, within)]
        taken = set(claimed.paths) if claimed is not None else set()
        won = [p for p in (claimed.won or []) if p in ready or p in skipped] if claimed else []
        rest = [p for p in [*ready, *skipped] if p not in taken]
        won += self.store.claim(run["id"], owner, rest)
        self.store.add_skips(run["id"], [p for p in won if p not in ready])
        self.send_all([ready[path] for path in won if path in ready], run)
        if within is not None:
            if within in decision.settled:  # the canvas task waiting for it may go on
                self.store.settle_part(run["id"], within, dict(decision.settled[within] or {}))
        elif decision.finished:
            self.store.succeed(run["id"], decision.outputs)
        return decision

    def send_all(self, calls: list[StepCall], run: dict[str, Any]) -> None:
        """:meth:`send` each step, their messages published together
        (:meth:`sending_together`)."""
        with self.sending_together():
            for call in calls:
                self.send(call, run)

    def prepare_sends(
        self,
        run: dict[str, Any],
        state: Outputs,
        paths: list[str],
        decision: Decision | None = None,
        events_after: bool = True,
    ) -> Prepared | None:
        """The broker commands that send steps ``paths`` -- the steps a step alone makes
        ready (``only_after``), each made ready by ``state`` (its outputs, and the run's as
        it began) -- for it to run in the round trip that records it (``Claim.sends``); None
        where they must be sent as always, after the record (:meth:`advance`): a broker that
        is not the store's Redis, a step that is not a plain message (a wait, a `celery:`
        step, no class), one ruled out, or anything that would fail as it is sent.
        ``decision``: already made from ``state`` (a submission's first steps);
        ``events_after``: their ``task-sent`` events are published after the record
        (:meth:`sent`), else with it (a submission: its messages' way is not a chain's)."""
        if not paths or not self.sends_in_record or run.get("within") is not None:
            return None  # (a canvas's node: only what is under it, sent by advance)
        if decision is None:
            try:
                decision = decide(self.workflow(run["spec"]), state)
            except FleetError:
                return None
        ready = {c["path"]: c for c in decision.ready}
        calls = [ready.get(path) for path in paths]
        if any(c is None or not _plain(c) for c in calls) or (
            decision.skipped and any(p in decision.skipped for p in paths)
        ):
            return None
        held = [_step_message(c, run, self._options(c, run)) for c in calls if c is not None]
        try:
            prepared = self.publisher.prepare(held, events_after)
        except Exception as exc:  # (sent as always, which fails the run naming the node)
            log.debug("run %s: steps %s not prepared: %s", run["id"], paths, exc)
            return None
        return prepared

    def sent(self, claim: Claim, prepared: Prepared | None) -> None:
        """The round trip that recorded ``claim`` sent the steps it won (``prepared`` for
        ``claim.paths``): publish their ``task-sent`` events."""
        self.publisher.announce(_events_of_won(claim, prepared))

    def _options(self, call: StepCall, run: dict[str, Any]) -> dict[str, Any]:
        """Celery's options for a step's message: its priority and time limits."""
        options: dict[str, Any] = {"priority": self.cfg.message_priority(run.get("priority"))}
        options["headers"] = {BEGIN_HEADER: self._begin_ask(call, run)}
        if call["timeout"]:
            options["soft_time_limit"] = call["timeout"]
            options["time_limit"] = call["timeout"] + 5
        return options

    def _begin_ask(self, call: StepCall, run: dict[str, Any]) -> list[str | int]:
        """What the worker that receives the step needs to take its start lease as it
        receives it (``BEGIN_HEADER``, :mod:`workers.receipt`): the run, the node, whether
        it is a map's item, and whether the step wants the run's state as it begins -- one
        the run may end with, or whose successors it sends in its record (``fleet.step``)."""
        path, group = call["path"], bool(call.get("group"))
        state, spec = False, run.get("spec")
        if spec:
            with contextlib.suppress(FleetError):  # (its worker reads it if it must)
                state = any(self.begins_with(self.workflow(spec), call, run))
        return [run["id"], path, int(group), int(state)]

    def begins_with(
        self, workflow: CompiledWorkflow, call: StepCall, run: dict[str, Any]
    ) -> tuple[bool, bool]:
        """What step ``call`` reads the run's state for as it begins: (it may end the run --
        to end it as it records; every reader of it reads it alone -- to send them in that
        round trip). Neither for a map's item or a canvas's node. Its sender asks for the
        state on its behalf (``_begin_ask``), its worker uses it (``fleet.step``)."""
        if run.get("within") is not None or call.get("group"):
            return False, False
        path = call["path"]
        return may_end(workflow, path), self.sends_in_record and sends_alone(workflow, path)

    @cached_property
    def sends_in_record(self) -> bool:
        """Whether a step's messages may go in the script that records it
        (:func:`broker_is_store`)."""
        return broker_is_store(self.app, self.cfg)

    def send(
        self,
        call: StepCall,
        run: dict[str, Any],
        *,
        countdown: float | None = None,
        task_id: str | None = None,
        retries: int = 0,
    ) -> None:
        """Publish one step; the router picks its queue now, from the live fleet.
        ``countdown``/``task_id``: a copy sent again for later, under its first id;
        ``retries``: the attempt it carries on (a step routed again mid-retry). Inside
        :meth:`sending_together`, its message is held and published with the others."""
        options = self._options(call, run)
        if countdown is not None:
            options["countdown"] = countdown
        if task_id is not None:
            options["task_id"] = task_id
        if retries:
            options["retries"] = retries
        if call["op"].startswith(WAIT_OP_PREFIX):  # no message: the run parks on it
            self.park(call, run)
            return
        try:
            if not call["classes"]:  # this process's configuration leaves it none
                raise Unroutable(no_class(call))
            if call["op"].startswith(CELERY_OP_PREFIX):
                self._send_celery(call, run, options)
                return
            self.publisher.publish(_step_message(call, run, options))
        except Unroutable as exc:  # the run fails naming the node, instead of hanging
            log.warning("run %s: %s", run["id"], exc)
            self.store.fail(run["id"], call["path"], str(exc))

    @property
    def waits(self) -> WaitStore:
        return WaitStore(self.store.redis, self.store.ttl)

    def park(self, call: StepCall, run: dict[str, Any]) -> None:
        """Park ``run`` on wait node ``call``: no message, no worker slot; a signal (kept
        for it, or sent later) or its time moves it on (see :mod:`fleet.engine.waits`)."""
        now = time.time()
        op, args, path = call["op"], call["args"], call["path"]
        try:
            if op == SIGNAL_OP:
                limit = args.get("timeout_s")
                until = None if limit is None else now + seconds(limit, "timeout_s")
            elif op == FOR_OP:
                until = now + seconds(args.get("seconds"), "seconds")
            else:
                until = moment(args.get("at"), "at")
        except ValueError as exc:  # a value from an input: the validator saw only params
            self.fail_wait(run["id"], path, op, now, f"node '{path}' ({op}): {exc}")
            return
        name = str(args["name"]) if op == SIGNAL_OP else None
        wait = Wait(path, op, name, now, until, call.get("on_timeout", "fail"))
        if self.waits.park(run["id"], wait) == 2:  # a signal kept for it: on at once
            self.resume(run["id"], path, op, now)
        else:
            log.info("run %s: %s waits for %s", run["id"], path, name or f"time {until}")
            entry = TraceEntry(path, op, "wait", None, None, None, "waiting", None, now, now,
                               signal=name, until=until)  # fmt: skip
            pipe = self.store.redis.pipeline(transaction=False)
            event = json.dumps({"event": "step", **entry.to_dict()})
            notify(pipe, run["id"], self.store.ttl, [event])
            pipe.execute()

    def resume(self, run_id: str, path: str, op: str, since: float) -> None:
        """A wait ended and its outputs are written: trace it and move the run on."""
        entry = TraceEntry(path, op, "wait", None, None, None, "succeeded", None, since,
                           time.time())  # fmt: skip
        self.store.add_trace(run_id, entry)
        run = self.store.run_message(run_id)
        if run is not None:  # (else it ended meanwhile: another branch failed it)
            self.advance(run, self.store.state(run_id), owner=f"wait:{path}")

    def fail_wait(self, run_id: str, path: str, op: str, since: float, why: str) -> None:
        """A wait that cannot go on fails its run, naming the node."""
        entry = TraceEntry(path, op, "wait", None, None, None, "failed", None, since,
                           time.time(), error=why)  # fmt: skip
        self.store.add_trace(run_id, entry)
        self.store.fail(run_id, path, why)
        log.warning("run %s: %s", run_id, why)

    def _send_celery(self, call: StepCall, run: dict[str, Any], options: dict[str, Any]) -> None:
        """A ``celery:`` step: send that task by name, the node's inputs as its keyword
        arguments, to the queue the app's router picks for this step as for any other; its
        link and link_error (on the control class) record its end and move the run on."""
        task = call["op"][len(CELERY_OP_PREFIX) :]
        route = self.app.amqp.router.route({}, STEP_TASK, (), {"call": call, "run": run})
        queue = route.get("queue")
        end = {
            "call": call,
            "run": run,
            "sent_at": time.time(),
            "queue": getattr(queue, "name", queue),
        }
        control = {"queue": self.cfg.classes[self.cfg.control_class].queue_name}
        # Which step, for the orphan check and the start lease; the data's sensitivity, for
        # the trust check of the worker that runs it (workers.celery_steps).
        headers = {CELERY_STEP_HEADER: call["path"], CELERY_RUN_HEADER: run["id"]}
        if call.get("sensitivity"):
            headers[CELERY_LEVEL_HEADER] = str(call.get("sensitivity"))
        options.setdefault("task_id", celery_task_id(run["id"], call["path"]))
        options["link"] = Signature(CELERY_DONE_TASK, kwargs=end, options=control, app=self.app)
        options["link_error"] = Signature(
            CELERY_FAILED_TASK, kwargs=end, options=control, app=self.app
        )
        options = {**options, "headers": headers, **route}
        self.publisher.publish(Held(task, call["args"], options, run["id"], call["path"]))


CELERY_IDS = uuid.UUID("5f3c1e0a-41f2-4c5e-9d0b-6a2e7c1d4b10")  # namespace of the ids below


def celery_task_id(run_id: str, path: str) -> str:
    """A `celery:` step's task id: the same each time the step is sent (the orphan check's
    copy too), so the task may use its ``request.id`` as an idempotency key."""
    return str(uuid.uuid5(CELERY_IDS, f"{run_id}:{path}"))


def no_class(call: StepCall) -> str:
    """Why a step whose node this configuration leaves no eligible class cannot be sent."""
    rule = call.get("rule")
    why = f" ({rule})" if rule else ""
    return (
        f"node '{call['path']}' (op {call['op']}): no class of this process's configuration "
        f"may run it{why}; the configuration the run was checked against allowed one"
    )


def _under(path: str, node: str) -> bool:
    """Whether step ``path`` belongs to top-level ``node`` (its items, its body's steps)."""
    return path == node or path.startswith((f"{node}#", f"{node}["))


def _step_message(call: StepCall, run: dict[str, Any], options: dict[str, Any]) -> Held:
    """The ``fleet.step`` message of ``call`` (``options``: Celery's, for send_task)."""
    # What Flower and `celery inspect` show instead of a wall of fleet.step.
    options["shadow"] = f"{run.get('workflow', '?')}:{call['path']} [{call['op']}]"
    # What Flower and the task events show of the arguments: the run and the node, not a
    # repr of the whole call (Celery's saferepr of it cost more than routing).
    options["argsrepr"] = "()"
    options["kwargsrepr"] = repr({"run": run["id"], "node": call["path"]})
    return Held(STEP_TASK, {"call": call, "run": run}, options, run["id"], call["path"])


def _plain(call: StepCall) -> bool:
    """A step sent as one ``fleet.step`` message (not a wait, not a `celery:` step)."""
    op = call["op"]
    return bool(call["classes"]) and not op.startswith((WAIT_OP_PREFIX, CELERY_OP_PREFIX))


def _events_of_won(claim: Claim, prepared: Prepared | None) -> list[HeldEvent]:
    """The ``task-sent`` events of the steps of ``prepared`` (for ``claim.paths``) that the
    claim won: those its round trip sent."""
    if prepared is None or not claim.won:
        return []
    won = set(claim.won)
    pairs = zip(claim.paths, prepared.events, strict=True)
    return [event for path, events in pairs if path in won for event in events]
