"""Submit workflows and follow their runs.

    from fleet import Fleet
    run = Fleet().submit("triage.yaml", {"ticket": "My blender arrived broken"})
    print(run.get(timeout=30), run.trace())

Validation, input checks and compilation all happen here, before anything is sent: a bad
workflow never reaches the broker. The client then sends the run's first ready steps; from
there on every step sends its own successors.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import redis
from celery import Celery, Signature, _state
from kombu.exceptions import BatchPublishError, OperationalError

from fleet.client.canvas import build as build_canvas
from fleet.client.registered import RegisteredTasks
from fleet.client.uploads import put_sqlite, upload
from fleet.config import FleetConfig, redact
from fleet.constants import WORKFLOW_KWARG, WORKFLOW_TASK
from fleet.engine.compiler import CompiledWorkflow, compile_workflow
from fleet.engine.dispatch import Dispatcher, new_run
from fleet.engine.waits import signal as signal_run
from fleet.errors import FleetError, WorkflowFailed, WorkflowTimeout
from fleet.messaging.app import default_app
from fleet.routing.policies import make_policy
from fleet.sdk.registry import registry
from fleet.store.artifacts import ArtifactStore, BlobStore
from fleet.store.connection import connect
from fleet.store.events import follow
from fleet.store.records import RunInfo, TraceEntry
from fleet.store.runs import RunStore
from fleet.store.waits import Signalled
from fleet.workflow.builder import WorkflowBuilder
from fleet.workflow.chaining import check_given
from fleet.workflow.loader import load_workflow
from fleet.workflow.model import WorkflowSpec
from fleet.workflow.split import expand_splits
from fleet.workflow.validate import check_inputs, check_size, validate

WorkflowLike = WorkflowBuilder | WorkflowSpec | str | Path
SUBMIT_RETRY_PAUSES = (0.2, 0.5, 1.0, 2.0)  # a broker restart takes a moment
# No new attempt starts after this long: the run store already waits out a restart within
# one attempt (about 13 s), so with the broker gone, submit gave up only after 79 s.
SUBMIT_PATIENCE_S = 10.0
# What a submission tries again after: the broker or the run store out of reach, or a batch
# of steps it may not have taken
BROKER_ERRORS = (redis.ConnectionError, redis.TimeoutError, OperationalError, BatchPublishError)
log = logging.getLogger("fleet.client")


def to_spec(workflow: WorkflowLike) -> WorkflowSpec:
    if isinstance(workflow, WorkflowBuilder):
        return workflow.spec()
    if isinstance(workflow, WorkflowSpec):
        return workflow
    return load_workflow(workflow)


def _check_run_options(sla_s: float | None, policy: str | None) -> None:
    if policy is not None:
        make_policy(policy)  # an unknown name fails here, before anything is sent
    if sla_s is not None and sla_s <= 0:
        raise ValueError(f"sla_s must be positive, got {sla_s}")


class RunHandle:
    """A submitted run: wait for it, poll it, read its trace."""

    def __init__(self, run_id: str, store: RunStore, engine: Dispatcher | None = None) -> None:
        self.id = run_id
        self._store = store
        self._engine = engine

    def __repr__(self) -> str:
        return f"<RunHandle {self.id} {self.status()}>"

    def info(self) -> RunInfo | None:
        return self._store.info(self.id)

    def status(self) -> str:
        """``running``, ``succeeded``, ``failed`` (or ``unknown`` once the record expired)."""
        return self._store.status(self.id) or "unknown"

    def trace(self) -> list[TraceEntry]:
        """Every step so far in completion order: node, op, class, worker, wait and run time."""
        return self._store.trace(self.id)

    def get(self, timeout: float | None = 60.0) -> dict[str, Any]:
        """Wait for the workflow's outputs; raise WorkflowFailed naming the failed node."""
        info = self._store.wait(self.id, timeout)
        if info is None:
            raise WorkflowFailed(self.id, None, "no record of this run (expired or never sent)")
        if info.status == "failed":
            raise WorkflowFailed(self.id, info.error_node, info.error or "unknown error")
        if info.status != "succeeded":
            raise WorkflowTimeout(f"run {self.id} did not finish within {timeout} s")
        return info.outputs or {}

    def events(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """The run's events as they happen, until it ends (an ``end`` event, last) or
        ``timeout`` passes: ``started`` (node, worker), ``step`` (a trace entry: node, op,
        status, class, times), ``text`` (node, text: a chunk an LLM step with ``stream: true``
        writes) and ``end`` (status). Only while somebody follows a run are its events
        published: the steps that ended before come first, from the run's trace; a run that
        ended already gives its ``end`` at once."""
        return follow(self._store.redis, self.id, self._ended, timeout, self._history)

    def _history(self) -> list[dict[str, Any]]:
        return [{"event": "step", **e.to_dict()} for e in self.trace()]

    def _ended(self) -> str | None:
        status = self._store.status(self.id)
        return None if status == "running" else (status or "unknown")

    def signal(self, name: str, data: Any = None) -> Signalled:
        """Send signal ``name`` (with JSON ``data``) to this run: see :meth:`Fleet.signal`."""
        if self._engine is None:
            raise FleetError("this handle cannot signal: get it from Fleet.handle or submit")
        return signal_run(self._engine, self.id, name, data)


class Fleet:
    """Client for one fleet (one broker, one configuration)."""

    def __init__(self, app: Celery | None = None, cfg: FleetConfig | None = None) -> None:
        self.app = app or default_app()
        self.cfg: FleetConfig = cfg or self.app.fleet_config
        self.store = RunStore(
            self.cfg.backend_url, self.cfg.run_ttl, max_connections=self.cfg.redis_max_connections
        )
        registry.load(self.cfg.op_modules, self.cfg.op_plugins)
        self.dispatcher = Dispatcher(self.app, self.cfg, self.store, registry)
        self.registered = RegisteredTasks(self.store.redis, self.cfg.worker_ttl)
        self._prepared: WeakKeyDictionary[WorkflowBuilder, tuple[int, CompiledWorkflow]] = (
            WeakKeyDictionary()
        )

    def validate(self, workflow: WorkflowLike) -> WorkflowSpec:
        """The workflow as it will run (``split:`` nodes expanded), or the error listing
        every problem."""
        spec = expand_splits(to_spec(workflow), registry, self.cfg.splits)
        validate(spec, self.cfg, registry)
        return spec

    def submit(
        self,
        workflow: WorkflowLike,
        inputs: dict[str, Any] | None = None,
        *,
        priority: int | None = None,
        sla_s: float | None = None,
        policy: str | None = None,
        follow: bool = False,
    ) -> RunHandle:
        """Validate, compile, and send the first ready steps. Returns at once.

        ``sla_s`` is the run's end-to-end latency target (the cost-sla policy budgets each
        step from what is left of it); ``policy`` overrides the configured routing policy for
        this run; ``priority`` (0-9, none: 0): a higher one is served sooner from a queue.
        ``follow``: the run's events are kept from its first step on, for
        :meth:`RunHandle.events` (which must then start within a minute).
        """
        compiled, values = self._prepare(workflow, inputs, sla_s, policy)
        run_id = uuid.uuid4().hex
        options = {"priority": priority, "sla_s": sla_s, "policy": policy}
        run = new_run(compiled, run_id, options)
        self._send(
            f"run {run_id}",
            lambda again: self.dispatcher.start(compiled, run, values, force=again, follow=follow),
        )
        return RunHandle(run_id, self.store, self.dispatcher)

    def submit_many(
        self,
        workflow: WorkflowLike,
        inputs: Iterable[dict[str, Any] | None],
        *,
        priority: int | None = None,
        sla_s: float | None = None,
        policy: str | None = None,
    ) -> list[RunHandle]:
        """One run of ``workflow`` for each inputs dict, submitted together: every inputs
        dict is checked first (a wrong one raises, naming its position, and nothing is
        sent); then the runs' records go to Redis in one round trip and their first steps,
        with their task-sent events, in one more (a loop of :meth:`submit` makes two or
        three a run). The handles come back in the order of ``inputs``."""
        compiled = self._compiled(workflow)
        self.registered.check(compiled)
        runs: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]] = []
        options = {"priority": priority, "sla_s": sla_s, "policy": policy}
        for i, given in enumerate(inputs):
            try:
                values = self._values(compiled, given, sla_s, policy)
            except (FleetError, ValueError) as exc:
                exc.args = (f"inputs[{i}]: {exc}", *exc.args[1:])
                raise
            runs.append((new_run(compiled, uuid.uuid4().hex, options), values, None))
        if runs:
            self._send(
                f"{len(runs)} runs",
                lambda again: self.dispatcher.start_runs(compiled, runs, force=again),
            )
        return [RunHandle(run["id"], self.store, self.dispatcher) for run, _, _ in runs]

    def _send(self, what: str, start: Callable[[bool], None]) -> None:
        """``start(again)``, tried again after a broker error (``again``: True) for up to
        SUBMIT_PATIENCE_S: it is idempotent (the same run ids, and the claims let each step
        out once)."""
        began = time.monotonic()
        for attempt, pause in enumerate((*SUBMIT_RETRY_PAUSES, None), start=1):
            try:
                start(attempt > 1)
                return
            except BROKER_ERRORS as exc:
                waited = time.monotonic() - began
                if pause is None or waited + pause > SUBMIT_PATIENCE_S:
                    where = redact(self.cfg.broker_url)
                    raise FleetError(
                        f"could not submit {what} after {attempt} attempt(s) in "
                        f"{waited:.0f} s (broker/backend {where}): {exc}"
                    ) from exc
                log.warning("submit %s: %s; retrying in %.1f s", what, exc, pause)
                time.sleep(pause)

    def run(
        self, workflow: WorkflowLike, inputs: dict[str, Any] | None = None, timeout: float = 60.0
    ) -> dict[str, Any]:
        """Submit and wait for the outputs."""
        return self.submit(workflow, inputs).get(timeout=timeout)

    def signature(
        self,
        workflow: WorkflowLike,
        inputs: dict[str, Any] | None = None,
        *,
        immutable: bool = False,
        priority: int | None = None,
        sla_s: float | None = None,
        policy: str | None = None,
    ) -> Signature:
        """The workflow as a Celery signature (``wf.s()``; ``immutable``: ``wf.si()``).

        It composes like any task's: in a ``chain`` it takes the previous result as inputs
        (the rule is in :mod:`fleet.workflow.chaining`); its result is the outputs dict; the
        run's id is its task id (``fleet.handle(result.id)``). The workflow and the inputs
        given are checked now, before anything is sent.
        """
        spec = self.validate(workflow)
        given = dict(inputs or {})
        check_given(spec, given, complete=immutable)
        compiled = compile_workflow(spec, self.cfg, registry)
        self.registered.check(compiled)
        _check_run_options(sla_s, policy)
        run_options = {"priority": priority, "sla_s": sla_s, "policy": policy}
        carried = {
            "spec": to_spec(workflow).model_dump(mode="json"),
            "run_options": {k: v for k, v in run_options.items() if v is not None},
        }
        # The inputs are the task's keywords, as a plain task's arguments are: keywords given
        # later (apply_async(kwargs=...), delay(y=...), clone) merge with them by Celery's rule.
        kwargs = {**given, WORKFLOW_KWARG: carried}
        # The control class starts runs; a queue of its own keeps the signature on the fleet
        # when another app (its own default queue) sends it.
        options: dict[str, Any] = {"queue": self.cfg.classes[self.cfg.control_class].queue_name}
        options["priority"] = self.cfg.message_priority(priority)
        return Signature(
            WORKFLOW_TASK, kwargs=kwargs, options=options, immutable=immutable, app=self._bind()
        )

    def _bind(self) -> Celery:
        """The app a workflow signature belongs to: the current one, as a shared task's
        signature does. That app sends it, and its backend waits on the result -- in a group of
        the user's app, the user's backend, which subscribes to what its app sends. In a thread
        where no app was made current, the fleet's (Celery's fallback app has no broker)."""
        current: Celery | None = _state._tls.current_app
        return current if current is not None else self.app

    def to_canvas(
        self,
        workflow: WorkflowLike,
        inputs: dict[str, Any] | None = None,
        *,
        priority: int | None = None,
        sla_s: float | None = None,
        policy: str | None = None,
    ) -> Signature:
        """One run of the workflow as a real Celery canvas (a chain of levels of nodes; see
        :mod:`fleet.client.canvas` for what is canvas and what stays with the engine).
        ``.apply_async().get()`` gives the outputs; the run id is in every task's kwargs and
        ``fleet.handle(...)`` reads its trace. Each call is a new run."""
        compiled, values = self._prepare(workflow, inputs, sla_s, policy)
        options = {"priority": priority, "sla_s": sla_s, "policy": policy}
        return build_canvas(self.app, self.cfg, compiled, values, options)

    def _prepare(
        self,
        workflow: WorkflowLike,
        inputs: dict[str, Any] | None,
        sla_s: float | None,
        policy: str | None,
    ) -> tuple[CompiledWorkflow, dict[str, Any]]:
        """Every check before a run is sent (the workflow, its inputs and their size, the run
        options, the Celery tasks its steps call): the compiled workflow and the run's input
        values, defaults filled in."""
        compiled = self._compiled(workflow)
        values = self._values(compiled, inputs, sla_s, policy)
        self.registered.check(compiled)
        return compiled, values

    def _values(
        self,
        compiled: CompiledWorkflow,
        inputs: dict[str, Any] | None,
        sla_s: float | None,
        policy: str | None,
    ) -> dict[str, Any]:
        """One run's input values, defaults filled in, once every check passed."""
        spec = compiled.spec
        given = dict(inputs or {})
        check_inputs(spec, given)
        _check_run_options(sla_s, policy)
        values = {**spec.defaults, **given}
        check_size(values, self.cfg.max_value_bytes)
        return values

    def _compiled(self, workflow: WorkflowLike) -> CompiledWorkflow:
        """The workflow validated and compiled; a builder's once per revision, so a client
        that submits the same workflow many times checks it once (0.25 ms a submission)."""
        if isinstance(workflow, WorkflowBuilder):
            hit = self._prepared.get(workflow)
            if hit is not None and hit[0] == workflow.revision:
                return hit[1]
        compiled = compile_workflow(self.validate(workflow), self.cfg, registry)
        if isinstance(workflow, WorkflowBuilder):
            self._prepared[workflow] = (workflow.revision, compiled)
        return compiled

    def upload(self, source: bytes | str | Path, kind: str | None = None) -> str:
        """Send a local file (or bytes, or a folder as a tar) into the fleet; pass the returned
        reference as a workflow input. It expires with the run records (``run_ttl``)."""
        return upload(self._blobs(), source, kind)

    def download(self, ref: str, to: str | Path | None = None) -> bytes:
        """The bytes behind a blob reference (a run's output); written to ``to`` if given."""
        data = self._blobs().get(ref)
        if to is not None:
            Path(to).expanduser().write_bytes(data)
        return data

    def put_sqlite(self, name: str, path: str | Path) -> str:
        """Publish a SQLite database for ``db.query``; returns its ``artifact://`` URL."""
        cache = Path(self.cfg.data_dir).expanduser() / "artifacts"
        store = ArtifactStore(self.store.redis, cache, self.cfg.artifact_ttl)
        return put_sqlite(store, name, path)

    def _blobs(self) -> BlobStore:
        client = connect(self.cfg.backend_url, max_connections=self.cfg.redis_max_connections)
        return BlobStore(client, self.cfg.run_ttl)

    def signal(self, run_id: str, name: str, data: Any = None) -> Signalled:
        """Send signal ``name`` with ``data`` (JSON, at most 64 KiB) to run ``run_id``: the
        node that waits on it (``op: wait.signal``) goes on with ``data`` as its output, or,
        with none waiting yet, the signal is kept for the node that will. Raises SignalError
        (nothing changed) for an unknown or ended run, a name the run's workflow does not
        wait on, or data that is not JSON or too large. It writes into the run: it needs
        the fleet's credentials, as a submit does."""
        return signal_run(self.dispatcher, run_id, name, data)

    def handle(self, run_id: str) -> RunHandle:
        return RunHandle(run_id, self.store, self.dispatcher)


@cache
def default_fleet() -> Fleet:
    """The fleet of the default app and configuration (environment / fleet.toml)."""
    return Fleet()


def submit(workflow: WorkflowLike, inputs: dict[str, Any] | None = None) -> RunHandle:
    """Submit with the default app and configuration (environment / fleet.toml)."""
    return default_fleet().submit(workflow, inputs)


def signature(
    workflow: WorkflowLike, inputs: dict[str, Any] | None = None, **options: Any
) -> Signature:
    """:meth:`Fleet.signature` with the default app and configuration."""
    return default_fleet().signature(workflow, inputs, **options)


def to_canvas(
    workflow: WorkflowLike, inputs: dict[str, Any] | None = None, **options: Any
) -> Signature:
    """:meth:`Fleet.to_canvas` with the default app and configuration."""
    return default_fleet().to_canvas(workflow, inputs, **options)
