"""The fleet's protocol: Redis keys, Celery task names, environment variables, entry points.

Everything a client, a worker on another host, or a monitoring tool must agree on is named here
once (arq keeps its protocol in one constants module for the same reason).
"""

from __future__ import annotations

# Celery task names.
STEP_TASK = "fleet.step"  # runs one op node, then sends the steps it made ready
PING_TASK = "fleet.ping"  # a plain task: health checks and the benchmark's baseline
WORKFLOW_TASK = "fleet.workflow"  # a workflow as a Celery signature: starts a run
# The keyword of a fleet.workflow message that carries the workflow and run options; its
# other keywords are inputs (a name with ":" is never an input: fleet.workflow.model.NAME_RE).
WORKFLOW_KWARG = "fleet:workflow"
# A workflow compiled to canvas (Workflow.to_canvas): a chain that records the run, runs each
# node (an op node itself, any other through the engine), and records the outputs.
CANVAS_START_TASK = "fleet.canvas_start"
NODE_TASK = "fleet.node"
CANVAS_FINISH_TASK = "fleet.canvas_finish"
TASK_PREFIX = "fleet."
# What a worker process imports when it starts (Celery's ``include``): the worker side, which
# registers the fleet's tasks and the worker's bootsteps. Named, never imported, by ``fleet``.
WORKER_MODULES = ("workers.boot", "workers.tasks", "workers.canvas_tasks", "workers.celery_steps")
# The end of a `celery:` step: its task's link and link_error (see workers.canvas_tasks).
CELERY_DONE_TASK = "fleet.celery_done"
CELERY_FAILED_TASK = "fleet.celery_failed"
CELERY_OP_PREFIX = "celery:"  # an op that is an existing Celery task, sent by name
CELERY_STEP_HEADER = "fleet_step"  # on a `celery:` step's message: its node path
CELERY_RUN_HEADER = "fleet_run"  # ...its run's id (the orphan check, the start lease)
CELERY_LEVEL_HEADER = "fleet_sensitivity"  # ...its data's sensitivity (the worker's trust check)
# ops the engine keeps itself (a run parks on them: no message, no worker slot)
WAIT_OP_PREFIX = "wait."

# Message headers stamped at publish time.
SENT_AT_HEADER = "fleet_sent_at"
ROUTE_HEADER = "fleet_route"
# On a fleet.step message: what its worker's main process needs to take the step's start
# lease in the round trip it makes as it receives the message -- [run id, node path, an item
# of a map (0/1), the run's state wanted (0/1)] -- and what it found, added there for the
# pool process: [holder token, when (time.time()), delivery tag, the begin script's reply].
BEGIN_HEADER = "fleet_begin"
BEGUN_HEADER = "fleet_begun"

# Redis keys. Everything a run writes expires after the configured run_ttl.
RUN_KEY = "fleet:run:{id}"  # hash: workflow, status, submitted_at, finished_at, outputs, error
RUN_TRACE_KEY = "fleet:run:{id}:trace"  # list of JSON step records
RUN_DONE_KEY = "fleet:run:{id}:done"  # list pushed once when the run ends (blocking waits)
RUN_OUTPUTS_KEY = "fleet:run:{id}:out"  # hash: node path -> JSON outputs of that step
INPUTS = "inputs"  # reserved node name: a workflow's own inputs (also their field in the hash)
RUN_CLAIMS_KEY = "fleet:run:{id}:claims"  # hash: node path -> id of the task that sent it
RUN_LOSSES_KEY = "fleet:run:{id}:losses"  # hash: node path -> deaths of the worker running it
# hash: "path@attempt" -> "holder token|expiry" (the copy running it), "done" or "lost"
RUN_LEASES_KEY = "fleet:run:{id}:leases"
# hash: "path@attempt" -> leases of that attempt taken over from a holder that stopped
# renewing: its whole process died (a thread-pool worker's loss is counted here)
RUN_STARTS_KEY = "fleet:run:{id}:starts"
# hash: "*" (the run) or a node path -> the Celery task waiting for it (its request, JSON)
RUN_REPLIES_KEY = "fleet:run:{id}:replies"
RUN_MAP_KEY = "fleet:run:{id}:map:{node}"  # set: finished items of a mapped node
# hash: node path -> JSON {name, since, until, on_timeout} of each node the run waits on
RUN_WAITS_KEY = "fleet:run:{id}:waits"
# hash: signal name -> JSON list of payloads sent before a node waited for them (kept, FIFO)
RUN_SIGNALS_KEY = "fleet:run:{id}:signals"
# sorted set: "run id|node path" -> when that wait times out (the sweep releases it)
WAITS_DUE_KEY = "fleet:waits:due"
# stream of a run's events (fleet.store.events), written while the run's record holds
# LISTEN_FIELD (until when somebody follows it)
RUN_EVENTS_KEY = "fleet:run:{id}:events"
LISTEN_FIELD = "listen"
# a `celery:` step's task as its worker started it: {started_at, worker} (JSON)
CELERY_START_KEY = "fleet:celery-start:{task_id}"
SPEC_KEY = "fleet:spec:{digest}"  # a workflow spec (JSON), content-addressed
WORKERS_KEY = "fleet:workers:{cls}"  # sorted set: live workers of a class by heartbeat time
WORKER_INFO_KEY = "fleet:worker-info"  # hash: worker -> JSON (class, slots, busy, pid)
# hash per worker: "pid|op" -> seconds that process's first step of a model op took (its
# model load, imports, caches); written by the pool processes, read by the heartbeat
WARM_KEY = "fleet:warm:{worker}"
ONLINE_PROFILE_KEY = "fleet:profile:online"  # hash: op|class -> moving averages
# hash of per-workflow counters, written once per run as it ends (store.scripts.END_SCRIPT):
# "runs|<status>|<wf>", "bin|<bucket s>|<wf>" (the runs of that bucket alone; "le|" ones,
# cumulative, from earlier fleets: store.scripts.cumulative_buckets), "sum||<wf>",
# "count||<wf>", "sla||<wf>", "sla_miss||<wf>", "cost||<wf>"
WORKFLOW_METRICS_KEY = "fleet:metrics:workflows"
# run-time buckets (s) of the per-workflow latency histogram: agent runs take 0.1 s to minutes
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# hash: class -> JSON {workers, up, down, reason, at}: `fleet up --autoscale`'s changes
AUTOSCALE_KEY = "fleet:autoscale"
SWEEP_LOCK_KEY = "fleet:sweeper"  # one worker at a time restores stranded messages
# sorted set: engine runs under way (id -> start time), watched by the orphan check
ACTIVE_RUNS_KEY = "fleet:runs:active"
# hash: canvas run -> JSON {since, finish: its canvas_finish task id}, watched by the orphan check
CANVAS_RUNS_KEY = "fleet:runs:canvas"
ORPHAN_SUSPECTS_KEY = "fleet:orphans:suspects"  # hash: "run|path" -> first seen nowhere
ORPHANS_SENT_KEY = "fleet:orphans:sent"  # hash: "run|path" -> when it was sent again
# set: workers that consume a direct queue of their own (Celery's worker_direct: prefix
# affinity sends a run's next LLM round there); the orphan check drains a dead one's
DIRECT_WORKERS_KEY = "fleet:workers:direct"
# A run's field (in its step messages): op -> the worker that ran its last step of that op
# (an op that keeps prompt prefixes, e.g. an LLM generation): where its next one should go.
AFFINITY_FIELD = "affinity"
BLOB_PREFIX = "fleet:blob:"  # bytes passed between steps by reference
ARTIFACT_PREFIX = "fleet:artifact:"  # versioned named file sets (indexes): <kind>:<name>:...

AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")  # broker URLs of RabbitMQ

# Environment variables read by workers (the configuration's own are listed in fleet.config).
WORKER_CLASS_ENV = "FLEET_WORKER_CLASS"  # the class a worker process serves
THREADS_ENV = "FLEET_THREADS"  # native threads one op may use in this process
LANE_ENV = "FLEET_LANE"  # the runtime a lane process of a GPU class serves (ClassSpec.lanes)
# "1": lay out and guard the GPU classes as on a CUDA host (a lane per runtime, one GPU runtime
# per process) where no GPU is usable; the ops still run on the CPU. For testing a layout.
ASSUME_CUDA_ENV = "FLEET_ASSUME_CUDA"
PROFILES_ENV = "FLEET_PROFILES"  # a profile store file other than the packaged one
CONFIG_ENV = "FLEET_CONFIG"

# Entry-point groups: how op modules and third-party CLI commands plug in without the core
# importing them (see pyproject.toml).
OPS_GROUP = "agent_fleet.ops"
COMMANDS_GROUP = "agent_fleet.commands"
