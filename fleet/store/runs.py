"""The run record in Redis: status, result, error and the per-step trace of each workflow run.

The client reads it (``RunHandle.get/status/trace``); steps write it as they finish. It is
independent of Celery's per-task results, so it survives the canvas being extended at run time.

It also holds what the engine decides from: the outputs of every finished step (one hash per
run), the claims that make sure each ready step is sent once, and the workflow specs by digest.
Keys are listed in :mod:`fleet.constants`; everything expires after ``run_ttl``. A finished
step writes its outputs and trace and reads the run's state back in one pipelined round trip.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from fleet.constants import (
    ACTIVE_RUNS_KEY,
    RUN_CLAIMS_KEY,
    RUN_DONE_KEY,
    RUN_KEY,
    RUN_LEASES_KEY,
    RUN_LOSSES_KEY,
    RUN_MAP_KEY,
    RUN_OUTPUTS_KEY,
    RUN_REPLIES_KEY,
    RUN_SIGNALS_KEY,
    RUN_STARTS_KEY,
    RUN_TRACE_KEY,
    RUN_WAITS_KEY,
    SPEC_KEY,
    WORKFLOW_METRICS_KEY,
)
from fleet.store.connection import MAX_CONNECTIONS, connect
from fleet.store.events import EVENT_OUTPUTS_MAX, events_key, mark, notify
from fleet.store.lua import Arg, Lua
from fleet.store.records import Acknowledgement, Claim, Ending, NewRun, RunInfo, TraceEntry
from fleet.store.scripts import (
    AFTER_RECORD,
    BUCKETS,
    CLAIM_SCRIPT,
    CREATE_SCRIPT,
    END_SCRIPT,
    MAX_UNPACKED,
    RECORD_SCRIPT,
    SENT_COMMANDS,
    workflow_counters,
)
from fleet.store.waits import Wait

STATE_AFTER_END_S = 600  # how long a finished run's step outputs and claims are kept

# Called by the store that ended a run, or the part of one that a Celery task waits on, once,
# with (run id, ending, the replies to settle: field (RUN_REPLY: the run) -> reply (JSON)).
EndHook = Callable[[str, "Ending", dict[str, str]], None]
RUN_REPLY = "*"  # the reply field of the run as a whole (others: a node's path)


class RunStore:
    def __init__(
        self,
        url: str,
        ttl: int = 86400,
        on_end: EndHook | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        # A broker restart is a few seconds without Redis: it is waited out (about 13 s in
        # all) instead of failing the step or the submission whose bookkeeping hit it.
        self.redis = connect(
            url, max_connections=max_connections, decode_responses=True, ride_out_restarts=True
        )
        self.ttl = ttl
        # What to do with the replies a run owes Celery when this store ends it (a run started
        # as a Celery signature: its task's result, callbacks and chain wait for it).
        self.on_end = on_end
        self._counted: set[str] = set()  # workflows whose counters this store has made

    @staticmethod
    def _key(run_id: str, part: str = "") -> str:
        key = {
            "": RUN_KEY,
            "trace": RUN_TRACE_KEY,
            "done": RUN_DONE_KEY,
            "out": RUN_OUTPUTS_KEY,
            "claims": RUN_CLAIMS_KEY,
            "losses": RUN_LOSSES_KEY,
            "starts": RUN_STARTS_KEY,
            "leases": RUN_LEASES_KEY,
            "replies": RUN_REPLIES_KEY,
        }[part]
        return key.format(id=run_id)

    def put_spec(self, digest: str, text: str) -> None:
        """Store a workflow spec by digest (refreshing its lifetime: runs of it may follow)."""
        self.redis.set(SPEC_KEY.format(digest=digest), text, ex=self.ttl)

    def get_spec(self, digest: str) -> str | None:
        value = self.redis.get(SPEC_KEY.format(digest=digest))
        return None if value is None else str(value)

    def create(
        self,
        run_id: str,
        workflow: str,
        meta: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        reply: dict[str, Any] | None = None,
        spec: str | None = None,
        follow: bool = False,
        claim: Claim | None = None,
    ) -> None:
        """Record a new run (the arguments: :class:`NewRun`)."""
        self.create_runs([NewRun(run_id, workflow, meta, inputs, reply, spec, follow, claim)])

    def create_runs(self, runs: list[NewRun]) -> None:
        """Record new runs, all in one round trip; each one's claims are filled in."""
        now = repr(time.time())
        pipe = self.redis.pipeline(transaction=False)
        scripts: list[int] = []  # where each run's script is in the pipeline
        for new in runs:
            if new.reply is not None:
                self._owe(pipe, new.run_id, RUN_REPLY, new.reply)
            if new.follow:
                mark(pipe, new.run_id)
            if new.workflow not in self._counted:  # its counters exist from zero before its end
                for name in workflow_counters(new.workflow):
                    pipe.hsetnx(WORKFLOW_METRICS_KEY, name, 0)
                self._counted.add(new.workflow)
            claim = new.claim or Claim("", [])
            keys, args = self._claim_call(new.run_id, claim)
            keys += [self._key(new.run_id, "out"), ACTIVE_RUNS_KEY]
            inputs = "" if new.inputs is None else json.dumps(new.inputs)
            run: list[str | int] = [self.ttl, now, new.workflow, json.dumps(new.meta or {})]
            run += [new.spec or "", inputs, new.run_id]
            CREATE_SCRIPT.queue(pipe, keys, [*run, *args])
            scripts.append(len(pipe) - 1)
        done = pipe.execute()
        for new, at in zip(runs, scripts, strict=True):
            if new.claim is not None:
                new.claim.won = [str(p) for p in done[at]]

    def run_message(self, run_id: str) -> dict[str, Any] | None:
        """A running engine run as its step messages carry it (id, workflow, spec digest,
        submission time, options); None once it ended or for a run the engine does not
        drive."""
        fields = cast(
            list[str | None],
            self.redis.hmget(
                self._key(run_id), "status", "workflow", "spec", "submitted_at", "meta"
            ),
        )
        status, workflow, spec, submitted, meta = fields
        if status != "running" or not spec:
            return None
        run: dict[str, Any] = {"id": run_id, "workflow": workflow, "spec": spec}
        run["submitted_at"] = float(submitted or 0.0)
        options = json.loads(meta or "{}")
        run.update({k: v for k, v in options.items() if v is not None})
        return run

    def _owe(self, pipe: Any, run_id: str, field: str, reply: dict[str, Any]) -> None:
        pipe.hset(self._key(run_id, "replies"), field, json.dumps(reply))
        pipe.expire(self._key(run_id, "replies"), self.ttl)

    def owe_reply(self, run_id: str, field: str, reply: dict[str, Any]) -> None:
        """Remember a Celery task that waits for part ``field`` (a node path) of a run."""
        pipe = self.redis.pipeline(transaction=False)
        self._owe(pipe, run_id, field, reply)
        pipe.execute()

    def _take_reply(self, run_id: str, field: str) -> str | None:
        """The reply owed for ``field`` (JSON), to exactly one caller (None to every other)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hget(self._key(run_id, "replies"), field)
        pipe.hdel(self._key(run_id, "replies"), field)
        raw, taken = pipe.execute()
        return str(raw) if raw is not None and taken else None

    def settle_part(self, run_id: str, field: str, outputs: dict[str, Any]) -> bool:
        """Part ``field`` of a run (a node a canvas task waits on) is done: settle the reply
        owed for it, once (``on_end``); False when none was owed or another took it."""
        raw = self._take_reply(run_id, field)
        if raw is None:
            return False
        if self.on_end is not None:
            self.on_end(run_id, Ending("succeeded", outputs=outputs), {field: raw})
        return True

    def add_trace(self, run_id: str, entry: TraceEntry) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self._trace(pipe, run_id, [entry])
        pipe.execute()

    def _trace(self, pipe: Any, run_id: str, entries: list[TraceEntry]) -> None:
        """Queue trace ``entries`` on ``pipe``; they are the run's step events too (written
        only while somebody follows the run)."""
        key = self._key(run_id, "trace")
        docs, events = _documents(entries, None)
        pipe.rpush(key, *docs)
        pipe.expire(key, self.ttl)
        notify(pipe, run_id, self.ttl, events)

    def add_skips(self, run_id: str, paths: list[str]) -> None:
        """Trace the nodes a condition (or a skipped dependency) ruled out."""
        if not paths:
            return
        now = time.time()
        entries = [
            TraceEntry(path, "", "", None, None, None, "skipped", None, now, now) for path in paths
        ]
        self.add_trace_entries(run_id, entries)

    def add_trace_entries(self, run_id: str, entries: list[TraceEntry]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self._trace(pipe, run_id, entries)
        pipe.execute()

    def record_step(
        self,
        run_id: str,
        path: str,
        outputs: dict[str, Any],
        entry: TraceEntry,
        extra: Any = None,
        group: list[Any] | None = None,
        claim: Claim | None = None,
        ending: Ending | None = None,
        ack: Acknowledgement | None = None,
    ) -> tuple[str | None, dict[str, dict[str, Any]] | None]:
        """Write a finished step's outputs and trace and read back the run's status and the
        outputs of every step so far -- one round trip. ``extra(pipe)`` may queue more
        commands (online statistics) into the same pipeline.

        ``group`` = [map node path, item count] for an item of a ``map:``: the item joins the
        node's set of finished items instead, and the state is read (a second round trip) only
        by the item that completes the set -- no other item can make anything ready, and
        reading every item's outputs after each item would be quadratic in the map's width.
        The state is None when it was not read. ``claim``: claims taken in the same round
        trip (the steps this one alone makes ready: fleet.engine.compiler.only_after); those
        won are put in ``claim.won``; with ``claim.sends``, the won steps are sent by the
        same round trip, and the state is not read (None). ``ending``: the step is the run's
        last (its caller decided so from the run's state as the step began): the run ends in
        the same round trip, as :meth:`succeed` would end it a round trip later -- the first
        ending wins -- and the state is not read (None). ``ack``: the commands that
        acknowledge the step's message, run last in the same round trip when it leaves the
        step nothing more to do (the state is not read, and the step is not a map's item):
        ``ack.done`` says so."""
        out_key = self._key(run_id, "out")
        pipe = self.redis.pipeline(transaction=False)
        written = json.dumps(outputs)
        ends = ending is not None and group is None
        if extra is not None:
            extra(pipe)
        # the outputs, the trace and the step's event (the end script appends it to a run it
        # ends), in the same script as the claims or the end that follow (one call of the
        # first of them), else alone
        docs, events = _documents([entry], written)
        sent: list[str] = [] if ends else events
        record: Call | None = Call(
            [out_key, self._key(run_id, "trace"), self._key(run_id), events_key(run_id)],
            [self.ttl, path, written, len(docs), len(sent), *docs, *sent],
        )
        claimed = ended = None  # where those results are in the pipeline's
        if claim is not None and claim.paths:
            claimed = _queue(pipe, CLAIM_SCRIPT, Call(*self._claim_call(run_id, claim)), record)
            record = None
        if ending is not None and ends:
            call = Call(*self._end_call(run_id, _fields(ending), events))
            ended = _queue(pipe, END_SCRIPT, call, record)
            record = None
        if record is not None:
            RECORD_SCRIPT.queue(pipe, record.keys, record.args)
        if group is not None:
            done_key = RUN_MAP_KEY.format(id=run_id, node=group[0])
            pipe.sadd(done_key, path)  # a set: a redelivered item counts once
            pipe.expire(done_key, self.ttl)
            pipe.scard(done_key)
        pipe.hget(self._key(run_id), "status")
        # a step that ends the run reads no state: its end won (the run no longer runs) or
        # another ending came first (nor does it)
        read = group is None and ending is None and (claim is None or claim.sends is None)
        if read:
            pipe.hgetall(out_key)
        acks = _acknowledge_in(pipe, ack) if not read and group is None else 0
        results = pipe.execute()
        if acks and ack is not None:  # (they were last: the replies above keep their places)
            ack.done = True
            results = results[:-acks]
        if claim is not None:
            claim.won = [str(p) for p in results[claimed]] if claimed is not None else []
        if ending is not None and ended is not None:
            self._settle(run_id, ending, results[ended])
        if group is not None:
            status, finished = results[-1], int(results[-2])
            return status, self.state(run_id) if finished >= int(group[1]) else None
        if not read:
            return results[-1], None
        status, raw = results[-2], results[-1]
        return status, decode_state(raw)

    def state_json(self, run_id: str) -> dict[str, str]:
        """The outputs of every step of the run so far (and its inputs), as stored: JSON by
        path (what the begin script reads, ``Leases.begin``)."""
        return cast(dict[str, str], self.redis.hgetall(self._key(run_id, "out")))

    def state(self, run_id: str) -> dict[str, dict[str, Any]]:
        """The outputs of every step of the run so far (and its inputs)."""
        return decode_state(self.state_json(run_id))

    def count_loss(self, run_id: str, path: str) -> int:
        """Count one more death of the worker process running ``path``; the new count."""
        key = self._key(run_id, "losses")
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(key, path, 1)
        pipe.expire(key, self.ttl)
        return int(pipe.execute()[0])

    def claim(self, run_id: str, owner: str, paths: list[str]) -> list[str]:
        """The paths among ``paths`` that ``owner`` may send (each path is sent by one task)."""
        if not paths:
            return []
        keys, args = self._claim_call(run_id, Claim(owner, paths))
        won = CLAIM_SCRIPT.run(self.redis, keys, args)
        return [str(p) for p in cast(list[Any], won)]

    def _claim_call(self, run_id: str, claim: Claim) -> tuple[list[str], list[Any]]:
        """CLAIM_SCRIPT's keys and arguments for ``claim`` (with the messages it sends)."""
        sends = claim.sends if claim.sends is not None else [[] for _ in claim.paths]
        if len(sends) != len(claim.paths):  # (the script reads them path by path)
            raise ValueError(f"{len(sends)} messages for {len(claim.paths)} claims")
        sent: list[Any] = []
        for commands in sends:
            sent.append(len(commands))
            for name, args in commands:
                if name not in SENT_COMMANDS:  # (the script runs what it is given)
                    raise ValueError(f"not a command that sends a message: {name}")
                sent += [name, len(args), *args]
        keys = [self._key(run_id, "claims"), self._key(run_id)]
        return keys, [claim.owner, self.ttl, len(claim.paths), *claim.paths, *sent]

    def _end(self, run_id: str, fields: dict[str, str], ending: Ending) -> bool:
        """Record a terminal state once; the first writer wins (a late branch cannot undo it)
        and settles the replies the run owes (``on_end``)."""
        keys, args = self._end_call(run_id, fields)
        return self._settle(run_id, ending, END_SCRIPT.run(self.redis, keys, args))

    def _end_call(
        self, run_id: str, fields: dict[str, str], events: list[str] | None = None
    ) -> tuple[list[str], list[str | int]]:
        flat = [x for kv in fields.items() for x in kv]
        keys = [self._key(run_id), self._key(run_id, "done"), WORKFLOW_METRICS_KEY]
        keys += [self._key(run_id, "replies"), ACTIVE_RUNS_KEY]
        keys += [self._key(run_id, part) for part in ("out", "claims", "leases")]  # every run's
        keys += [self._key(run_id, part) for part in ("losses", "starts")]  # a few runs'
        keys += [RUN_WAITS_KEY.format(id=run_id), RUN_SIGNALS_KEY.format(id=run_id)]
        keys.append(events_key(run_id))  # last: the end goes in it while the run is followed
        # The run's working state (every step's outputs, claims) is not what the client reads
        # once the run ended: it goes after STATE_AFTER_END_S, the record and trace stay.
        short = min(self.ttl, STATE_AFTER_END_S)
        now = repr(time.time())
        sent = events or []
        args: list[str | int] = [self.ttl, now, short, BUCKETS, run_id, len(sent), *sent, *flat]
        return keys, args

    def _settle(self, run_id: str, ending: Ending, won: Any) -> bool:
        """After the end script: False if another ending came first; else settle the replies
        the run owes (``on_end``)."""
        if not won:
            return False
        replies = cast(list[str], won)[1:]
        if replies and self.on_end is not None:
            owed = dict(zip(replies[::2], replies[1::2], strict=True))
            self.on_end(run_id, ending, owed)
        return True

    def succeed(self, run_id: str, outputs: dict[str, Any]) -> bool:
        ending = Ending("succeeded", outputs=outputs)
        return self._end(run_id, _fields(ending), ending)

    def fail(self, run_id: str, node: str | None, error: str) -> bool:
        fields = {"status": "failed", "error": error, "error_node": node or ""}
        return self._end(run_id, fields, Ending("failed", error=error, node=node))

    def status(self, run_id: str) -> str | None:
        value = self.redis.hget(self._key(run_id), "status")
        return str(value) if value is not None else None

    def info(self, run_id: str) -> RunInfo | None:
        return _run_info(run_id, cast(dict[str, str], self.redis.hgetall(self._key(run_id))))

    def trace(self, run_id: str) -> list[TraceEntry]:
        """The run's steps in completion order, then the nodes it waits on now (status
        ``waiting``, since when and until when)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.lrange(self._key(run_id, "trace"), 0, -1)
        pipe.hgetall(RUN_WAITS_KEY.format(id=run_id))
        raw, parked = pipe.execute()
        now = time.time()
        waiting = sorted((Wait.from_json(p, r) for p, r in parked.items()), key=lambda w: w.since)
        return [TraceEntry.from_dict(json.loads(r)) for r in raw] + [
            TraceEntry(w.path, w.op, "wait", None, None, None, "waiting", None, w.since, now,
                       signal=w.name, until=w.until)
            for w in waiting
        ]  # fmt: skip

    def wait(self, run_id: str, timeout: float | None) -> RunInfo | None:
        """Block until the run ends or ``timeout`` passes; returns the latest info.

        One round trip a wake-up: the wait on the run's ``done`` list and the read of its
        record go in one pipeline (Redis runs the read once the wait returns). The wait
        rotates the list's one element (``BLMOVE`` onto itself), so that it stays for every
        other waiter, with its lifetime."""
        deadline = None if timeout is None else time.monotonic() + timeout
        info = self.info(run_id)
        done = self._key(run_id, "done")
        while info is not None and not info.done:
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                break
            # (at least 10 ms: a Redis before 7.0.8 reads a timeout under 1 ms as "forever")
            block = max(min(left, 1.0), 0.01)
            pipe = self.redis.pipeline(transaction=False)
            pipe.blmove(done, done, block, "LEFT", "RIGHT")  # type: ignore[arg-type]
            pipe.hgetall(self._key(run_id))
            info = _run_info(run_id, pipe.execute()[1])
        return info


def _run_info(run_id: str, h: dict[str, str]) -> RunInfo | None:
    """A run's record as read from Redis (``HGETALL``); None when there is none."""
    if not h:
        return None
    return RunInfo(
        id=run_id,
        workflow=h.get("workflow", ""),
        status=h.get("status", "unknown"),
        submitted_at=float(h["submitted_at"]) if h.get("submitted_at") else None,
        finished_at=float(h["finished_at"]) if h.get("finished_at") else None,
        outputs=json.loads(h["outputs"]) if h.get("outputs") else None,
        error=h.get("error") or None,
        error_node=h.get("error_node") or None,
    )


def _fields(ending: Ending) -> dict[str, str]:
    """The run record's fields for a successful ``ending``."""
    return {"status": "succeeded", "outputs": json.dumps(ending.outputs)}


def _acknowledge_in(pipe: Any, ack: Acknowledgement | None) -> int:
    """Queue ``ack``'s commands on ``pipe``; how many replies they add."""
    if ack is None:
        return 0
    for name, args in ack.commands:
        pipe.execute_command(name.upper(), *args)
    return len(ack.commands)


def decode_state(raw: dict[str, str]) -> dict[str, dict[str, Any]]:
    """A run's outputs hash as read from Redis (JSON by path) -> every step's outputs."""
    return {path: json.loads(value) for path, value in raw.items()}


def _documents(entries: list[TraceEntry], outputs: str | None) -> tuple[list[str], list[str]]:
    """Trace ``entries`` as stored (JSON) and as the run's step events, with the step's
    ``outputs`` (JSON) when they are small (EVENT_OUTPUTS_MAX: a blob reference, a
    sentence; not a document)."""
    docs = [json.dumps(e.to_dict()) for e in entries]
    head = '{"event": "step", '
    if outputs is not None and len(outputs) <= EVENT_OUTPUTS_MAX:
        head += f'"outputs": {outputs}, '
    return docs, [head + d[1:] for d in docs]


@dataclass(frozen=True)
class Call:
    """A script's keys and arguments."""

    keys: Sequence[str]
    args: Sequence[Arg]


def _queue(pipe: Any, script: Lua, call: Call, record: Call | None) -> int:
    """Queue ``call`` of ``script``; with a step's ``record`` not queued yet, in one script
    with it, after it (RECORD_CLAIM_SCRIPT, RECORD_END_SCRIPT) -- or, for a call with more
    arguments than Lua unpacks at once (a claim of thousands of paths), just before it.
    Where its result is in the pipeline's."""
    if record is not None and len(call.args) > MAX_UNPACKED:
        RECORD_SCRIPT.queue(pipe, record.keys, record.args)
        record = None
    if record is None:
        script.queue(pipe, call.keys, call.args)
    else:
        AFTER_RECORD[script].queue(pipe, [*record.keys, *call.keys], [*record.args, *call.args])
    return len(pipe) - 1
