"""Fleet configuration: hardware classes, broker, routing policy.

Sources, later ones winning: built-in defaults, a TOML/YAML file (``FLEET_CONFIG`` or
``./fleet.toml``), then environment variables::

    FLEET_BROKER_URL, FLEET_RESULT_BACKEND, FLEET_POLICY, FLEET_CONTROL_CLASS,
    FLEET_OP_MODULES, FLEET_TASK_MODULES, FLEET_HTTP_ALLOW, FLEET_FILE_ROOTS and
    FLEET_DB_ALLOW (comma separated), FLEET_FLOWER_PORT,
    FLEET_METRICS_PORT, FLEET_DATA_DIR, FLEET_AMQP_QUEUES,
    FLEET_CLASS_<NAME>_<FIELD>   e.g. FLEET_CLASS_NPU_LITE_CONCURRENCY=2

A class that is not built in can be added by configuration alone (a ``[classes.NAME]`` table).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fleet.constants import AMQP_SCHEMES
from fleet.errors import ConfigError

Pool = Literal["prefork", "threads", "gevent", "solo"]


class ClassSpec(BaseModel):
    """A hardware class: one queue and the worker preset that serves it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    queue: str = ""
    description: str = ""
    pool: Pool = "prefork"
    concurrency: int = Field(default=1, ge=1)
    prefetch_multiplier: int = Field(default=1, ge=1)
    acks_late: bool = True
    time_limit: float | None = Field(default=None, gt=0)
    soft_time_limit: float | None = Field(default=None, gt=0)
    max_tasks_per_child: int | None = Field(default=None, ge=1)
    # What the class's ops should bind to: "cuda" offloads when a GPU is present.
    device: str = "cpu"
    # Models each worker process loads when it starts (llm, embed, stt), not on first use.
    preload: list[str] = Field(default_factory=list)
    # Native runtimes this class's processes may load; None: any. On a CUDA host two GPU
    # runtimes in one process can crash it (torch + llama.cpp do): a GPU class lists its own.
    runtimes: list[str] | None = None
    # On a thread pool of a "cuda" class, concurrency is the LLM batch: that many sequences
    # share one model in one process (docs/llm-batching.md).
    # Native threads per process (llama.cpp, BLAS, torch); None: from what the class runs
    # on this host (fleet.deploy.launch.native_threads).
    threads: int | None = Field(default=None, ge=1)
    # What an LLM step may make this class's processes allocate: the largest `n_ctx` a step
    # may ask for (each sequence of a batch holds that many tokens of KV cache), and the
    # (model, n_ctx) pairs a process keeps loaded (the least recently used idle one is closed)
    llm_max_ctx: int = Field(default=8192, ge=64)
    llm_models: int = Field(default=2, ge=1)
    # Hourly price of one worker slot of this class (cost model; see docs/routing.md).
    price_per_hour: float = Field(default=0.0, ge=0)
    # Moving a step's inputs to this class: bandwidth and fixed latency (data movement cost).
    network_mb_s: float = Field(default=1000.0, gt=0)
    latency_s: float = Field(default=0.0, ge=0)
    # Data classifications this class may hold (a workflow or node marked e.g.
    # `sensitivity: confidential` runs only on classes that list it).
    trusted_for: list[str] = Field(default_factory=list)
    # The endpoint (a name in `endpoints`) this class runs its LLM generations on: its
    # workers call the endpoint instead of loading a model, and routing prices its steps at
    # the endpoint's per-token prices -- a remote model as a class the router may choose.
    endpoint: str | None = None
    # Classes whose ops this one runs too (a planned "a100" class serves "gpu"): op
    # declarations name the built-in classes, deployments add their own devices.
    serves: list[str] = Field(default_factory=list)
    # Worker processes `fleet up` starts for this class (a plan writes how many it sized),
    # and the bounds `fleet up --autoscale` keeps it within (max: None = `workers`).
    workers: int = Field(default=1, ge=1)
    min_workers: int = Field(default=1, ge=1)
    max_workers: int | None = Field(default=None, ge=1)

    def hourly_cost(self, workers: int, slots: int) -> float:
        """What ``workers`` live workers with ``slots`` slots in all cost per hour:
        ``price_per_hour`` is a slot's; a batching class's slots share one process and its
        device, so there it is a worker's (routing and run cost charge it the same way)."""
        return self.price_per_hour * (workers if self.batches else slots)

    @property
    def queue_name(self) -> str:
        return self.queue or self.name

    @property
    def lanes(self) -> list[str]:
        """The runtimes this class serves in processes of their own when it binds to a GPU:
        on a CUDA host two native GPU runtimes in one process can crash it, so a GPU class
        that lists several (``runtimes``) runs one worker per runtime on the same device, a
        *lane* each. Empty when the class has one runtime or binds to the CPU."""
        if self.device != "cuda" or not self.runtimes or len(self.runtimes) < 2:
            return []
        return list(self.runtimes)

    def queue_for(self, runtime: str | None) -> str:
        """The queue of this class a step on ``runtime`` goes to: the class's queue, or for
        a lane other than the first (which also serves plain-Python ops), ``<queue>.<runtime>``."""
        if runtime in self.lanes[1:]:
            return f"{self.queue_name}.{runtime}"
        return self.queue_name

    @property
    def queues(self) -> list[str]:
        """Every queue of this class: its own, then one per further lane."""
        return [self.queue_name] + [self.queue_for(r) for r in self.lanes[1:]]

    @property
    def batches(self) -> bool:
        """Whether the class's slots are one process's batch (a thread pool on an
        accelerator), not processes or I/O threads of their own."""
        return self.pool in ("threads", "gevent") and self.device == "cuda"

    @property
    def compute_processes(self) -> int:
        """Processes of one worker that compute: a prefork pool's children, a batching
        pool's one process, none for an I/O thread pool."""
        if self.pool in ("prefork", "solo"):
            return self.concurrency if self.pool == "prefork" else 1
        return 1 if self.batches else 0


def _cores() -> int:
    return os.cpu_count() or 1


def default_classes() -> dict[str, ClassSpec]:
    """Presets for the four built-in classes, sized for the machine we run on."""
    return {
        "gpu": ClassSpec(
            name="gpu",
            description="accelerator: large models; CUDA offload when a GPU is present",
            # One step at a time. `pool = "threads"` with `concurrency = N` batches its LLM
            # steps (N sequences on one model, docs/llm-batching.md): twice the tokens/s on
            # a CPU host, but there the voice agent's speech-to-text shares the batch's cores
            # and its capacity fell from 0.6 to 0.45 runs/s -- so batching is opted into.
            pool="prefork",
            concurrency=1,
            time_limit=900,
            soft_time_limit=840,
            device="cuda",
            # LLMs and Whisper; embeddings (torch) run on npu-lite, in processes of their own.
            runtimes=["llama.cpp", "ctranslate2"],
            price_per_hour=0.25,  # A100 operating cost (docs/hardware.md)
        ),
        "npu-lite": ClassSpec(
            name="npu-lite",
            description="small accelerator: small / quantised models, embeddings",
            pool="prefork",
            concurrency=1,
            time_limit=600,
            soft_time_limit=570,
            price_per_hour=0.15,  # A40-class operating cost
        ),
        "cpu": ClassSpec(
            name="cpu",
            description="general-purpose compute: parsing, vector search, glue",
            pool="prefork",
            concurrency=_cores(),
            time_limit=300,
            soft_time_limit=280,
            # (no recycling of pool processes by default, as in Celery: a child replaced
            # after N tasks reloads its models, and the step handed to it as it left waited
            # about a second for the next child: docs/operations.md)
            price_per_hour=0.05,
        ),
        "io": ClassSpec(
            name="io",
            description="I/O waits: HTTP tools, LLM endpoints, databases; 1000 waits a process",
            # A thousand threads, each blocked on a socket: ops that wait keep their own
            # deadline (no helper thread) on pooled connections (workers/ops/httpclient.py).
            # Measured against gevent x 1000 (bench/io_waits.py, docs/benchmarks.md): as
            # fast, and a step that does not yield (a regex, SQLite, a large JSON body)
            # cannot stall the others, nor is anything monkey-patched.
            pool="threads",
            concurrency=1000,
            prefetch_multiplier=1,
            time_limit=120,
            soft_time_limit=110,
            price_per_hour=0.01,
        ),
    }


class EndpointSpec(BaseModel):
    """An LLM endpoint: what the fleet's ``llm.chat`` steps call, what an endpoint class's
    LLM generations run on, and what its tokens cost."""

    model_config = ConfigDict(extra="forbid")

    # The OpenAI-compatible base URL, as llm.chat's ``base_url`` names it (.../v1)
    base_url: str
    # US dollars per million prompt (input) and completion (output) tokens
    price_in: float = Field(default=0.0, ge=0)
    price_out: float = Field(default=0.0, ge=0)
    # For an endpoint class's generations: the model to ask for, the NAME of the secret
    # holding its API key (FLEET_SECRET_<NAME> on the workers), the whole deadline of one
    # attempt, and extra request fields the server takes (llama.cpp: repeat_penalty, top_k)
    model: str = "default"
    api_key: str | None = None
    timeout_s: float = Field(default=60.0, gt=0, le=600)
    extra: dict[str, Any] = Field(default_factory=dict)

    def dollars(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1e6


def _same_url(url: str) -> tuple[str, str, int | None, str]:
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port, parts.path.rstrip("/")


class AutoscaleSpec(BaseModel):
    """How `fleet up --autoscale` resizes each class within its min/max_workers."""

    model_config = ConfigDict(extra="forbid")

    interval_s: float = Field(default=2.0, gt=0)  # how often it looks
    # A worker more when the expected queue wait (queued x mean step time / slots) is over
    # this at two looks in a row...
    up_wait_s: float = Field(default=1.0, gt=0)
    # ...a worker less when the class had nothing queued and a worker's worth of idle slots
    # for this long...
    down_idle_s: float = Field(default=30.0, gt=0)
    # ...and no second change of the same class sooner than this after the last.
    cooldown_s: float = Field(default=10.0, ge=0)


Figure = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class PlanPrediction(BaseModel):
    """What a plan predicted (`fleet plan --save` writes it; `fleet plan --check` compares)."""

    model_config = ConfigDict(extra="forbid")

    # workflow -> {rate, p50_s, p95_s, sla_s}; every figure a number (no nan, no inf)
    workflows: dict[str, dict[str, Figure]] = Field(default_factory=dict)
    classes: dict[str, Figure] = Field(default_factory=dict)  # class -> utilisation


class FleetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str = ""
    classes: dict[str, ClassSpec] = Field(default_factory=default_classes)
    # Class whose queue takes tasks sent without a route (fleet.ping, plain Celery tasks).
    control_class: str = "io"
    # preferred | static | least-latency | cost-sla (docs/routing.md)
    policy: str = "preferred"
    # When no eligible class has a live worker: fallback (another live class, else wait in the
    # preferred queue), wait (only ever the preferred class), fail (fail the run at once).
    no_worker: Literal["fallback", "wait", "fail"] = "fallback"
    # cost-sla: the latency SLA of a run submitted without one (seconds).
    default_sla_s: float = Field(default=30.0, gt=0)
    # Service time assumed for an op with neither a profile nor online observations.
    default_service_s: float = Field(default=0.5, gt=0)
    # Estimates count the cold start a step would wait for on a class whose processes have
    # not run its model op yet (docs/routing.md, "Cold starts"); off: service time only.
    count_cold_starts: bool = True
    # Prefix affinity (docs/routing.md): a run's next step of an op that keeps prompt
    # prefixes (an LLM generation) goes to the worker that ran its last one while the step would
    # wait there for at most ``affinity_queue`` steps and its class's estimate is within
    # ``affinity_slack_s`` of the policy's choice; else where the policy says.
    prefix_affinity: bool = True
    affinity_queue: int = Field(default=1, ge=0)
    affinity_slack_s: float = Field(default=2.0, ge=0)
    # State older than this (the backend unreachable) makes policies fall back to static.
    stale_after_s: float = Field(default=15.0, gt=0)
    # Op modules to import besides the `agent_fleet.ops` entry points of installed packages
    # (this project's own ops are entry points too); op_plugins = false turns those off.
    op_modules: list[str] = Field(default_factory=list)
    op_plugins: bool = True
    # Modules of plain Celery tasks every worker imports (Celery's `imports`): a team's
    # existing tasks, which workflows run as `celery:<task name>` steps.
    task_modules: list[str] = Field(default_factory=list)
    flower_port: int = 5555
    # Flower's basic auth, "user:password"; empty: `fleet up` makes one, prints it once and
    # keeps it in its workdir (the same after a restart of Flower or of the fleet).
    flower_auth: str = ""
    # RabbitMQ's management API for Flower's queue view ("http://user:pass@host:15672/api/");
    # without it Flower lists no queue lengths on RabbitMQ (`fleet status` and
    # `fleet metrics` read them from the broker itself).
    flower_broker_api: str = ""
    metrics_port: int = 9808  # `fleet metrics`; like Flower's, denied to http.request
    # Celery's task events (task-sent from clients, task-received/started/succeeded from
    # workers): what Flower shows tasks from. About 1 ms a step on a busy host: a fleet
    # watched without Flower may turn them off (`fleet status`, `fleet metrics` and traces
    # do not use them).
    task_events: bool = True
    # A worker publishes its task events in batches, at most this long after they happen
    # (seconds): one publish for every event buffered meanwhile, instead of one or two
    # events a publish. 0: Celery's own timing (a publish at each turn of the worker's loop).
    event_flush_s: float = Field(default=0.05, ge=0, le=5)
    heartbeat_interval: float = Field(default=1.0, gt=0)
    worker_ttl: float = Field(default=10.0, gt=0)
    # The orphan check looks at runs older than this for steps a broker lost (seconds).
    orphan_after_s: float = Field(default=30.0, gt=0)
    state_ttl: float = Field(default=1.0, ge=0)
    run_ttl: int = Field(default=86400, gt=0)
    # How long an artifact version (an index) is kept after it was written: 30 days.
    artifact_ttl: int = Field(default=30 * 86400, gt=0)
    visibility_timeout: int = Field(default=3600, gt=0)
    # On RabbitMQ: "classic" queues (with message priorities), or "quorum" queues (replicated,
    # with publisher confirms; RabbitMQ keeps no priorities in them, so `priority` is ignored).
    amqp_queues: Literal["classic", "quorum"] = "classic"
    # Sizes a run may reach (messages carry values; large data goes by reference as blobs).
    max_map_items: int = Field(default=10_000, ge=1)  # items one map: node fans out to
    max_value_bytes: int = Field(default=4 << 20, ge=1024)  # a run's inputs, a step's outputs
    # A step whose worker process dies this many times fails its run (not redelivered again).
    max_worker_losses: int = Field(default=2, ge=1)
    # A step's start lease (seconds): its process renews it every third of this while the op
    # runs; a copy that finds it lapsed takes the step over (its holder died). Longer: a
    # death is seen later on RabbitMQ; shorter: more renewals, and a stalled process is
    # taken for dead sooner.
    start_lease_s: float = Field(default=10.0, ge=1)
    # Connections one process opens to the run store's Redis, at most, however many threads
    # it runs (an io worker runs a thousand): a thread that finds them all in use waits for
    # one. Redis serves 10,000 clients by default: workers x this should stay under it.
    redis_max_connections: int = Field(default=256, ge=4)
    # Where workers keep assembled models and vector indexes (shared by the workers of a host).
    data_dir: str = "~/.cache/agent-fleet"
    # Where http.request may go: entries "host", "host:port" or "scheme://host[:port][/path]"
    # (a bare host means http/https on their default ports). The broker, the result backend,
    # Flower and the metrics port are refused whatever this says.
    http_allow: list[str] = Field(default_factory=lambda: ["127.0.0.1", "localhost"])
    # Calls in flight to one host (scheme, host, port) from one worker process; a call past
    # it waits for a slot within its own deadline.
    http_per_host: int = Field(default=1000, ge=1)
    # LLM endpoints by name, with their prices per token: an llm.chat step to one of them is
    # charged its tokens (trace, run cost, Prometheus) besides its io class's time.
    endpoints: dict[str, EndpointSpec] = Field(default_factory=dict)
    # Folders that ops taking a file path may read or write, besides data_dir and the
    # packaged examples; /proc, /sys and /dev never.
    file_roots: list[str] = Field(default_factory=list)
    # PostgreSQL servers db.query may connect to: "host:port" entries (none by default; SQLite
    # databases come through the artifact store and need no entry).
    db_allow: list[str] = Field(default_factory=list)
    # Connections db.query keeps open per PostgreSQL server (and credentials) in one worker
    # process: an io worker's thousand threads share them, waiting within their deadline.
    db_pool_size: int = Field(default=16, ge=1)
    # A placement for the static policy (`fleet plan --out` writes it): "workflow:node" (node
    # path without loop/map indexes) or an op name -> class.
    routes: dict[str, str] = Field(default_factory=dict)
    # Per-node latency budgets (s) from a plan, "workflow:node" -> seconds: the cost-sla
    # policy uses them instead of an even split of what is left of the run's SLA.
    budgets: dict[str, float] = Field(default_factory=dict)
    # LLM calls a plan splits, "workflow:node" -> {prefill = CLASS, decode = CLASS}: the node
    # runs as its two parts on those classes, as if it said `split:` itself.
    splits: dict[str, dict[str, str]] = Field(default_factory=dict)
    autoscale: AutoscaleSpec = Field(default_factory=AutoscaleSpec)
    predicted: PlanPrediction = Field(default_factory=PlanPrediction)

    @field_validator("splits")
    @classmethod
    def _two_parts(cls, v: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for key, parts in v.items():
            if set(parts) != {"prefill", "decode"}:
                raise ValueError(f"splits.{key}: give prefill and decode classes, no more")
        return v

    @field_validator("classes")
    @classmethod
    def _names_match(cls, v: dict[str, ClassSpec]) -> dict[str, ClassSpec]:
        for key, spec in v.items():
            if spec.name != key:
                raise ValueError(f"class '{key}' has name '{spec.name}'")
        if not v:
            raise ValueError("at least one hardware class is required")
        return v

    @model_validator(mode="after")
    def _endpoints_exist(self) -> FleetConfig:
        for name, spec in self.classes.items():
            if spec.endpoint is not None and spec.endpoint not in self.endpoints:
                known = ", ".join(self.endpoints) or "none"
                raise ValueError(
                    f"classes.{name}.endpoint: '{spec.endpoint}' is not in endpoints "
                    f"(configured: {known})"
                )
        return self

    @property
    def backend_url(self) -> str:
        return self.result_backend or self.broker_url

    def endpoint_for(self, base_url: str) -> tuple[str, EndpointSpec] | None:
        """The configured endpoint (name, spec) whose base URL is ``base_url``: the same
        scheme, host, port and path, however spelt (case, a default port, a final slash)."""
        wanted = _same_url(base_url)
        for name, spec in self.endpoints.items():
            if _same_url(spec.base_url) == wanted:
                return name, spec
        return None

    def class_for_queue(self, queue: str) -> str | None:
        """The class ``queue`` belongs to: its own queue, or one of its lanes'."""
        for spec in self.classes.values():
            if queue in spec.queues:
                return spec.name
        return None

    def message_priority(self, priority: int | None) -> int:
        """The priority a message carries for a run's ``priority`` (0-9, higher is served
        sooner; none: 0). RabbitMQ serves a higher message priority first, as given; kombu's
        Redis transport serves a lower one first (its priority 0 list is read first), so
        there it is 9 - priority. Every fleet message carries one: on Redis a message with
        none would go to the list read first, ahead of every prioritised run."""
        wanted = min(9, max(0, priority or 0))
        return wanted if self.broker_url.startswith(AMQP_SCHEMES) else 9 - wanted

    def classes_for_queues(self, queues: Iterable[str]) -> tuple[str, ...]:
        """The classes whose queues are among ``queues`` (a worker's), in their order."""
        found = (c for q in queues if (c := self.class_for_queue(q)) is not None)
        return tuple(dict.fromkeys(found))  # a class's lanes' queues name it once


_ENV_SCALARS = {
    "FLEET_BROKER_URL": "broker_url",
    "FLEET_RESULT_BACKEND": "result_backend",
    "FLEET_POLICY": "policy",
    "FLEET_NO_WORKER": "no_worker",
    "FLEET_CONTROL_CLASS": "control_class",
    "FLEET_FLOWER_PORT": "flower_port",
    "FLEET_FLOWER_AUTH": "flower_auth",
    "FLEET_FLOWER_BROKER_API": "flower_broker_api",
    "FLEET_METRICS_PORT": "metrics_port",
    "FLEET_DATA_DIR": "data_dir",
    "FLEET_AMQP_QUEUES": "amqp_queues",
    "FLEET_TASK_EVENTS": "task_events",
    "FLEET_EVENT_FLUSH_S": "event_flush_s",
    "FLEET_REDIS_MAX_CONNECTIONS": "redis_max_connections",
}


# A URL's query parameters that carry a credential (redis-py reads ``?password=``)
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|auth|credential|api[_-]?key", re.IGNORECASE)


def url_secrets(url: str) -> list[str]:
    """Where ``url`` carries a credential: ``password`` (``user:password@``) and each query
    parameter named like one."""
    parts = urlsplit(url)
    found = ["password"] if parts.password is not None else []
    names = (pair.partition("=")[0] for pair in parts.query.split("&") if pair)
    return found + [f"?{name}" for name in names if _SECRET_PARAM.search(name)]


def redact(url: str) -> str:
    """``url`` with its password, and any query parameter named like a credential, replaced
    by ``****``: for anything printed or logged."""
    parts = urlsplit(url)
    if not url_secrets(url):
        return url
    if parts.password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}:****@{host}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    pairs = [p.partition("=") for p in parts.query.split("&")] if parts.query else []
    query = "&".join(k + s + ("****" if _SECRET_PARAM.search(k) else v) for k, s, v in pairs)
    return urlunsplit(parts._replace(query=query))


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's own settings (TOML, or YAML by its suffix), before defaults and the
    environment."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text) if path.suffix in {".yaml", ".yml"} else tomllib.loads(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _merge_classes(raw: dict[str, Any]) -> dict[str, Any]:
    """File class tables override the built-in presets field by field; a table with
    ``enabled = false`` removes that class from the deployment."""
    presets = {k: v.model_dump() for k, v in default_classes().items()}
    merged = {k: dict(v) for k, v in presets.items()}
    for name, fields in raw.items():
        if not isinstance(fields, dict):
            raise ConfigError(f"classes.{name} must be a table of fields")
        fields = dict(fields)
        if fields.pop("enabled", True) is False:
            merged.pop(name, None)
            continue
        merged.setdefault(name, {"name": name})
        merged[name].update(fields)
        merged[name]["name"] = name
    _inherit_runtimes(merged, raw, presets)
    return merged


def _inherit_runtimes(merged: dict[str, Any], raw: dict[str, Any], presets: dict[str, Any]) -> None:
    """A GPU class that serves others (a planned ``a100`` serving ``gpu``) and names no
    ``runtimes`` of its own takes theirs: on a GPU host it then runs their lanes, instead
    of one process refusing the second runtime."""
    for name, spec in merged.items():
        own = raw.get(name)
        if spec.get("device") != "cuda" or not spec.get("serves"):
            continue
        if isinstance(own, dict) and "runtimes" in own:
            continue
        found: list[str] = []
        for served in spec["serves"]:
            listed = (merged.get(served) or presets.get(served) or {}).get("runtimes")
            if listed is None:  # a served class may load anything: so may this one
                found = []
                break
            found += [r for r in listed if r not in found]
        if found:
            spec["runtimes"] = found


def _env_overrides(data: dict[str, Any], env: dict[str, str]) -> None:
    for var, key in _ENV_SCALARS.items():
        if env.get(var):
            data[key] = env[var]
    lists = (
        ("FLEET_OP_MODULES", "op_modules"),
        ("FLEET_TASK_MODULES", "task_modules"),
        ("FLEET_HTTP_ALLOW", "http_allow"),
        ("FLEET_FILE_ROOTS", "file_roots"),
        ("FLEET_DB_ALLOW", "db_allow"),
    )
    for var, key in lists:
        if env.get(var):
            data[key] = [m.strip() for m in env[var].split(",") if m.strip()]
    classes = data["classes"]
    by_env_name = {name.upper().replace("-", "_"): name for name in classes}
    fields = sorted(ClassSpec.model_fields, key=len, reverse=True)
    for var, value in env.items():
        if not var.startswith("FLEET_CLASS_"):
            continue
        rest = var[len("FLEET_CLASS_") :]
        for field in fields:
            suffix = "_" + field.upper()
            if rest.endswith(suffix) and rest[: -len(suffix)] in by_env_name:
                classes[by_env_name[rest[: -len(suffix)]]][field] = value
                break
        else:
            raise ConfigError(f"{var}: no class/field matches (classes: {', '.join(classes)})")


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> FleetConfig:
    """Build the configuration from defaults, an optional file and the environment."""
    env = dict(os.environ) if env is None else env
    file = Path(path) if path else None
    if file is None and env.get("FLEET_CONFIG"):
        file = Path(env["FLEET_CONFIG"])
    if file is None and Path("fleet.toml").is_file():
        file = Path("fleet.toml")
    data: dict[str, Any] = read_config_file(file) if file else {}
    data["classes"] = _merge_classes(data.get("classes") or {})
    _env_overrides(data, env)
    try:
        cfg = FleetConfig.model_validate(data)
    except ValidationError as exc:
        where = f" in {file}" if file else ""
        raise ConfigError(f"invalid fleet configuration{where}:\n{exc}") from exc
    if cfg.control_class not in cfg.classes:
        raise ConfigError(f"control_class '{cfg.control_class}' is not a configured class")
    return cfg
