"""The fleet's Celery task: ``fleet.step`` runs one op node, records it, and sends what it
made ready (see :mod:`fleet.engine.dispatch`). ``fleet.ping`` is a plain task for health
checks and baselines.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Retry

from fleet.config import FleetConfig
from fleet.constants import (
    PING_TASK,
    ROUTE_HEADER,
    RUN_KEY,
    SENT_AT_HEADER,
    STEP_TASK,
    WARM_KEY,
)
from fleet.engine.compiler import CompiledWorkflow, only_after
from fleet.engine.publishing import Prepared
from fleet.engine.readiness import StepCall, decide
from fleet.errors import RuntimeRefused, StepFailed, UnknownOpError
from fleet.messaging.app import app, fleet_config
from fleet.messaging.transport import ack_commands
from fleet.routing import affinity
from fleet.routing.affinity import DIRECT_QUEUE
from fleet.routing.online import observed
from fleet.routing.profiles import current_store
from fleet.sdk.devices import cuda_available
from fleet.sdk.process import cpu_fallback, run_within
from fleet.sdk.registry import OpSpec, registry
from fleet.sdk.step import StepContext, running
from fleet.store.events import Publisher
from fleet.store.records import Acknowledgement, Claim, Ending, TraceEntry
from fleet.store.runs import RunStore, decode_state
from workers.recovery import ACKED, Lease, StepRequest, begin, reroute
from workers.runtime import WorkerRuntime, runtime

log = logging.getLogger("fleet.tasks")
CPU_FALLBACK = "cpu (no GPU usable here)"


def _outputs(op: OpSpec, result: Any, limit: int = 4 << 20) -> dict[str, Any]:
    """Check an op's return value against its declared outputs and JSON-ability."""
    if op.outputs == ("result",) and not (isinstance(result, dict) and "result" in result):
        result = {"result": result}
    if not isinstance(result, dict):
        raise TypeError(f"op returned {type(result).__name__}, expected a dict of outputs")
    missing = [name for name in op.outputs if name not in result]
    if missing:
        raise TypeError(f"op did not return output(s) {', '.join(missing)}")
    try:
        size = len(json.dumps(result))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"op returned a value that is not JSON: {exc}") from None
    if size > limit:
        raise ValueError(
            f"op returned {size} bytes of outputs (limit {limit}, max_value_bytes): "
            "pass large data by reference (the blob store)"
        )
    return result


class _Trace:
    """Builds the step's trace record from the message it arrived in."""

    def __init__(self, task: Task, call: StepCall) -> None:
        req = task.request
        self.queue = (req.delivery_info or {}).get("routing_key")
        self.cls = fleet_config(task.app).class_for_queue(self.queue or "")
        own = DIRECT_QUEUE.format(worker=req.hostname)  # sent to it by name (anon exchange)
        if self.cls is None and self.queue in (own, req.hostname):
            # its own queue (prefix affinity): the class routed for, if this worker serves it
            routed = (getattr(req, ROUTE_HEADER, None) or {}).get("cls")
            queues = task.app.amqp.queues
            served = fleet_config(task.app).classes_for_queues(queues.consume_from or queues)
            self.cls = routed if routed in served else None
            self.queue = own
        spec = fleet_config(task.app).classes.get(self.cls or "")
        # A class that binds to a GPU, on a worker where none is usable: said in every step.
        fallback = spec is not None and spec.device == "cuda" and not cuda_available()
        # A batching class's steps share the process's native threads: each is charged its
        # share of the process's CPU time, not its own (idle, waiting) thread's.
        self.shared = spec is not None and spec.batches
        self.occupancy = 1
        self.cold_s: float | None = None  # model loads this step waited for
        self.tokens: int | None = None  # what it spent on a priced service (note_spend)
        self.spent_usd: float | None = None
        self.base = {
            "node": call["path"],
            "op": call["op"],
            "kind": call["kind"],
            "cls": self.cls,
            "queue": self.queue,
            "worker": req.hostname,
            "sent_at": getattr(req, SENT_AT_HEADER, None),
            "attempt": req.retries or 0,
            "route": getattr(req, ROUTE_HEADER, None) or {},
            "device": CPU_FALLBACK if fallback else None,
        }
        self.runtime = call.get("runtime")
        self.started_at = time.time()
        self.cpu_at = _cpu_clock(self.shared)

    def entry(self, status: str, error: str | None = None) -> TraceEntry:
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        cpu = (_cpu_clock(self.shared) - self.cpu_at) / self.occupancy
        base = self.base
        if not base["device"] and (why := cpu_fallback(self.runtime)):  # a CPU build, say
            base = {**base, "device": f"cpu ({why})"}
        return TraceEntry(
            **base,
            status=status,
            started_at=self.started_at,
            ended_at=time.time(),
            error=error,
            rss_mb=round(rss_kib / 1024.0, 1),
            cpu_s=round(cpu, 6),
            occupancy=self.occupancy,
            cold_s=self.cold_s,
            tokens=self.tokens,
            spent_usd=self.spent_usd,
        )


def _cpu_clock(shared: bool = False) -> float:
    """The step's CPU clock: in a prefork child (the main thread) the whole process's, so the
    op's native threads count; in a thread pool only this thread's (the others are other
    steps'), unless the pool's steps share the process's work (``shared``: a batch)."""
    if shared or threading.current_thread() is threading.main_thread():
        return time.process_time()
    return time.thread_time()


@app.task(name=STEP_TASK, bind=True, ignore_result=True, Request=StepRequest)
def step(self: Task, *, call: StepCall, run: dict[str, Any]) -> dict[str, Any]:
    """Run one op node, record its outputs and trace, then send the steps it made ready."""
    rt = runtime(self.app)
    engine = rt.engine
    workflow = engine.workflow(run["spec"])
    path = call["path"]
    last, alone = engine.begins_with(workflow, call, run)  # (they read the run's state)
    lease = begin(self, rt, call, run, state=last or alone)  # Ignore: this copy must not run
    owner = self.request.id or path
    # the steps this one alone makes ready: claimed in the round trip that records it
    claim = Claim(owner, only_after(workflow, path))

    prepared: list[Prepared | None] = [None]

    def prepare(outputs: dict[str, Any]) -> None:  # (they are sent if the claims are won)
        state = decode_state(lease.state or {})
        state[path] = outputs
        prepared[0] = engine.prepare_sends(_next_run(self, call, run), state, claim.paths)
        claim.sends = prepared[0].commands if prepared[0] is not None else None

    ack = _acknowledgement(self, lease)
    try:
        status, state, _ = execute(
            self,
            rt,
            call,
            run,
            lease.listened,
            claim,
            lease.state if last else None,
            prepare if alone else None,
            ack,
        )
    except Retry:  # the next attempt was sent: a late copy of this one must not run
        lease.end_by_retry()
        raise
    except RuntimeRefused as exc:  # nothing loaded: the step goes to a process that may
        reroute(self, engine, call, run, lease, str(exc))
    finally:
        lease.release()
    if status == "running" and state is not None:
        engine.advance(_next_run(self, call, run), state, owner=owner, claimed=claim)
    elif status == "running" and claim.sends is not None:
        engine.sent(claim, prepared[0])  # their task-sent events
    if ack is not None and ack.done:  # (its worker's main process reads it: StepRequest)
        return {"node": path, ACKED: True}
    return {"node": path}


def _acknowledgement(task: Task, lease: Lease) -> Acknowledgement | None:
    """The commands that acknowledge the step's message in the round trip that records it
    (``RunStore.record_step`` runs them where that round trip is the step's last): for a
    message its worker recorded as unacknowledged in the run store's Redis, as it took the
    start lease (``Lease.tag``), of a task acknowledged late."""
    if lease.tag is None or not task.acks_late:
        return None
    options = task.app.conf.broker_transport_options
    return Acknowledgement(ack_commands(options, lease.tag))


def _next_run(task: Task, call: StepCall, run: dict[str, Any]) -> dict[str, Any]:
    """The run as the steps this one sends carry it: after a step of an op that keeps its
    prompts' state, with this worker as where its next round goes (prefix affinity)."""
    if registry.get(call["op"]).prefix_cache and task.request.hostname:
        return affinity.remember(run, call["op"], task.request.hostname)
    return run


def execute(
    task: Task,
    rt: WorkerRuntime,
    call: StepCall,
    run: dict[str, Any],
    listened: bool = False,
    claim: Claim | None = None,
    before: dict[str, str] | None = None,
    prepare: Callable[[dict[str, Any]], None] | None = None,
    ack: Acknowledgement | None = None,
) -> tuple[str | None, dict[str, dict[str, Any]] | None, dict[str, Any]]:
    """Run the op of one step and record its outputs and trace: (the run's status, its state
    when read back, the outputs). Retries, or fails the run naming the node, by raising.
    ``listened``: somebody follows the run (the op's streamed text is published); ``claim``:
    claims to take as the outputs are recorded (``RunStore.record_step``); ``before``: the
    run's outputs as the step began (JSON by path), for a step the run may end with -- if
    they and its own complete the run, it ends in the round trip that records the step.
    ``prepare(outputs)``: called before the record, with the op's outputs (it may fill
    ``claim.sends``, the messages the record's round trip sends); ``ack``: what
    acknowledges the step's message, run by the record's round trip if it is the step's
    last (``ack.done``)."""
    engine, store, running_now = rt.engine, rt.store, rt.running
    trace = _Trace(task, call)
    _check_trust(task, store, call, run, trace)
    try:
        op = registry.get(call["op"])
    except UnknownOpError as exc:  # this worker lacks the op's plug-in: say so, end the run
        why = f"node '{call['path']}': op {call['op']} is not installed on {task.request.hostname}"
        store.add_trace(run["id"], trace.entry("failed", str(exc)))
        store.fail(run["id"], call["path"], why)
        raise StepFailed(call["path"], call["op"], why) from exc
    deadline = _deadline(task, call, trace.cls)
    here = StepContext(
        run["id"],
        call["path"],
        task.request.retries or 0,
        None if deadline is None else time.time() + deadline,
        publish=Publisher(store.redis, run["id"], call["path"], store.ttl).text
        if listened
        else None,
    )
    at_start = running_now.enter()
    try:
        with running(here):  # what fleet.sdk.current_step() tells the op
            result = _run_op(op, call["args"], deadline)
        outputs = _outputs(op, result, engine.cfg.max_value_bytes)
    except RuntimeRefused as exc:
        running_now.leave()
        store.add_trace(run["id"], trace.entry("rerouted", str(exc)))
        raise
    except Exception as exc:
        trace.occupancy = max(1, round((at_start + running_now.leave()) / 2))
        _failed(task, store, op, call, run, trace, exc)
    trace.occupancy = max(1, round((at_start + running_now.leave()) / 2))
    trace.cold_s = round(sum(here.loads), 4) if here.loads else None
    if here.spent:
        trace.tokens = sum(tokens for _, tokens in here.spent)
        trace.spent_usd = round(sum(dollars for dollars, _ in here.spent), 8)
    if prepare is not None:
        prepare(outputs)
    entry = trace.entry("succeeded")
    units = op.units_of(call["args"])
    status, state = store.record_step(
        run["id"],
        call["path"],
        outputs,
        entry,
        lambda pipe: observe(pipe, call, units, entry, rt, run["id"]),
        call.get("group"),
        claim,
        None if before is None else _ending(engine.workflow(run["spec"]), call, before, outputs),
        ack,
    )
    return status, state, outputs


def _ending(
    workflow: CompiledWorkflow, call: StepCall, before: dict[str, str], outputs: dict[str, Any]
) -> Ending | None:
    """The run's ending, if the step's outputs complete it: decided from the run's outputs
    as the step began and its own. A step still running beside it is missing from them, so
    the run is then not complete here, and the engine decides after the record, as always."""
    try:
        state = decode_state(before)
        state[call["path"]] = outputs
        decision = decide(workflow, state)
    except Exception:  # (the engine decides after the record, and says what is wrong)
        return None
    if not decision.finished or decision.ready or decision.skipped:
        return None
    return Ending("succeeded", outputs=decision.outputs)


def _check_trust(
    task: Task, store: RunStore, call: StepCall, run: dict[str, Any], trace: _Trace
) -> None:
    """A step whose data is sensitive runs only where this worker's own configuration trusts
    its class for it: the sender's (a client's) configuration cannot widen the rule."""
    why = untrusted(fleet_config(task.app), trace.cls, call.get("sensitivity"), call["path"])
    if why:
        _fail_run(store, call, run, trace, why, why)


def untrusted(cfg: FleetConfig, cls: str | None, level: str | None, path: str) -> str | None:
    """Why this worker must not run node ``path``'s step, whose data is ``level``, for class
    ``cls`` (its own configuration's ``trusted_for``); None when it may. Every kind of step
    a worker runs asks this: fleet.step, a canvas node, a `celery:` step's task."""
    if not level:
        return None
    spec = cfg.classes.get(cls or "")
    if spec is not None and level in spec.trusted_for:
        return None
    return (
        f"node '{path}' holds '{level}' data, and this worker's configuration does "
        f"not trust class '{cls}' with it (classes.{cls}.trusted_for): not run"
    )


def _fail_run(
    store: RunStore, call: StepCall, run: dict[str, Any], trace: _Trace, error: str, why: str
) -> NoReturn:
    """Trace the step as failed with ``error``, fail its run with ``why``, end the task."""
    store.add_trace(run["id"], trace.entry("failed", error))
    store.fail(run["id"], call["path"], why)
    raise StepFailed(call["path"], call["op"], error)


class StepDeadline(TimeoutError):
    """A step ran past its deadline in a pool that Celery's time limits do not reach."""


def _deadline(task: Task, call: StepCall, cls: str | None) -> float | None:
    """The step's deadline: the node's ``timeout``, else its class's (soft) time limit."""
    timeout = call.get("timeout")
    if timeout:
        return float(timeout)
    spec = fleet_config(task.app).classes.get(cls or "")
    limit = spec.soft_time_limit or spec.time_limit if spec is not None else None
    return float(limit) if limit else None


def _run_op(op: OpSpec, args: dict[str, Any], deadline: float | None) -> Any:
    """Call the op. In a thread or gevent pool (Celery's time limits work only in prefork),
    the deadline is kept here: the op runs in a helper thread, and the step fails when the
    deadline passes -- the pool's thread is free again, the op's thread is abandoned to
    finish on its own. An op that keeps its deadline itself (``keeps_deadline``: the io
    class's HTTP and database calls) runs directly: no thread per waiting step."""
    if deadline is None or threading.current_thread() is threading.main_thread():
        return op.func(**args)  # prefork and solo: Celery's soft/hard time limits apply
    if op.keeps_deadline:
        return op.func(**args)

    def late() -> StepDeadline:
        return StepDeadline(f"no result within its deadline of {deadline:g} s")

    return run_within(deadline, lambda: op.func(**args), late)


def _failed(
    task: Task,
    store: RunStore,
    op: OpSpec,
    call: StepCall,
    run: dict[str, Any],
    trace: _Trace,
    exc: Exception,
) -> NoReturn:
    """Retry the step when it may, else fail its run naming the node (always raises)."""
    error = f"{type(exc).__name__}: {exc}"
    retryable = not op.retry_on or isinstance(exc, op.retry_on)
    if task.request.retries < call["retries"] and retryable:
        store.add_trace(run["id"], trace.entry("retrying", error))
        countdown = min(2.0**task.request.retries * 0.5, 30.0)
        raise task.retry(exc=exc, countdown=countdown, max_retries=call["retries"]) from exc
    log.warning("run %s: node %s failed: %s", run["id"], call["path"], error)
    _fail_run(store, call, run, trace, error, f"node '{call['path']}' (op {op.name}): {error}")


def observe(
    pipe: Any, call: StepCall, units: float, entry: TraceEntry, rt: WorkerRuntime, run_id: str
) -> None:
    """Feed the run time into the shared moving averages the router estimates from, and add
    the step's cost (run time x its class's price, plus what it spent on a priced service:
    an LLM endpoint's tokens) to the run's."""
    if entry.spent_usd:
        pipe.hincrbyfloat(RUN_KEY.format(id=run_id), "cost", entry.spent_usd)
    if entry.cls is None:
        return
    cfg = rt.cfg
    spec = cfg.classes.get(entry.cls)
    if spec is not None and spec.price_per_hour:
        # Steps that ran in one batch shared the process: each pays its share of the time.
        shared = entry.occupancy if spec.batches else 1
        share = entry.run_s * spec.price_per_hour / 3600 / shared
        pipe.hincrbyfloat(RUN_KEY.format(id=run_id), "cost", share)
    profile = current_store().get(call["op"], entry.cls)
    occupancy = entry.occupancy if spec is not None and spec.batches else 1
    turns = call["kind"] == "model"
    predicted = profile.predict(units, occupancy, turns) if profile is not None else None
    if turns and entry.worker and call["op"] not in rt.warm:
        # A model op's first step in this process paid for its model, its imports, its
        # caches: not service time. Routing counts it apart, where a process has not run it.
        rt.warm.add(call["op"])
        announce_warm(pipe, entry.worker, call["op"], entry.run_s, cfg.run_ttl)
        return
    observed(pipe, call["op"], entry.cls, entry.run_s, predicted)


def announce_warm(pipe: Any, worker: str, op: str, first_s: float, ttl: int) -> None:
    """This process has run ``op`` (it holds its model now): its worker's heartbeat tells the
    routers, with how long that first step took (``first_s``; a process that has not run the
    op would take about as long again)."""
    key = WARM_KEY.format(worker=worker)
    pipe.hset(key, f"{os.getpid()}|{op}", round(first_s, 4))
    pipe.expire(key, ttl)


@app.task(name=PING_TASK)
def ping(value: Any = None) -> Any:
    """A plain Celery task (no workflow, no run record): health checks and baselines."""
    return value
