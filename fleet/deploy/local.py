"""The embedded local fleet: a Redis server (when none is reachable), one worker per class,
and Flower -- started as child processes and stopped together."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import redis

from fleet.config import FleetConfig, redact
from fleet.constants import AMQP_SCHEMES
from fleet.deploy.launch import host_lanes, lane_name, worker_argv, worker_env
from fleet.deploy.signals import deferred
from fleet.errors import FleetError
from fleet.routing.depth import amqp_connection
from fleet.routing.state import StateReader

Say = Callable[[str], None]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}
# how long a worker stopped on purpose may finish its step when its class sets no time limit
STOP_GRACE_S = 600.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_reachable(url: str, timeout: float = 1.0) -> bool:
    """A Redis server answers PING at ``url``, or an AMQP broker accepts a connection."""
    if url.startswith(AMQP_SCHEMES):
        try:
            with amqp_connection(url, timeout) as conn:
                conn.connect()
            return True
        except Exception:
            return False
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    restarts: int = 0  # how often this child was restarted by supervise()
    restart_at: float = 0.0  # not before this (monotonic): the backoff
    cls: str | None = None  # a worker's class (None: Redis, Flower)
    index: int = 0  # which of its class's workers (1: `cls@...`, 2: `cls-2@...`)
    lane: str | None = None  # the runtime it serves, for a lane of a GPU class (launch.py)


FLOWER_AUTH_FILE = "flower-auth"  # in the workdir: the password this fleet made for Flower


@dataclass
class LocalFleet:
    cfg: FleetConfig
    classes: list[str] = field(default_factory=list)
    flower: bool = True
    workdir: Path = Path(".fleet")
    loglevel: str = "INFO"
    say: Say = print
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the children
    children: list[Child] = field(default_factory=list)
    redis_started: bool = False
    flower_auth: str = ""  # "user:password" Flower asks for, once started
    _auth_made_now: bool = field(default=False, init=False)  # made here, not read back
    # Worker processes per class, when not the configured `workers` (see fit_to_host).
    counts: dict[str, int] = field(default_factory=dict)
    most: int | None = None  # worker processes this host holds in all (see fit_to_host)
    stopping: list[Child] = field(default_factory=list)  # warm shutdowns under way

    def __post_init__(self) -> None:
        self.classes = self.classes or list(self.cfg.classes)
        unknown = [c for c in self.classes if c not in self.cfg.classes]
        if unknown:
            raise FleetError(f"unknown class(es) {unknown}; configured: {list(self.cfg.classes)}")
        self.workdir = self.workdir.resolve()

    def fit_to_host(self, most: int) -> str | None:
        """Start at most ``most`` worker processes in all: fewer of each class than its
        ``workers`` (in proportion, at least one each) when the classes ask for more.
        Returns what was cut, for the operator, or None when all fit. The autoscaler keeps
        within the same ceiling (bounds, room)."""
        self.most = most
        wanted = {c: self.cfg.classes[c].workers for c in self.classes}
        total = sum(wanted.values())
        if total <= most:
            return None
        room = max(most, len(wanted))
        self.counts = {c: max(1, n * room // total) for c, n in wanted.items()}
        asked = ", ".join(f"{n} {c}" for c, n in wanted.items())
        got = ", ".join(f"{n} {c}" for c, n in self.counts.items())
        return f"the plan asks for {total} worker processes ({asked}); this host runs {got}"

    def bounds(self, cls: str) -> tuple[int, int]:
        """How few and how many worker processes of ``cls`` to run: min_workers..max_workers
        (``workers`` when unset), within what fit_to_host left the class on this host."""
        spec = self.cfg.classes[cls]
        low, high = spec.min_workers, max(spec.min_workers, spec.max_workers or spec.workers)
        cap = self.counts.get(cls)
        return (low, high) if cap is None else (min(low, cap), min(high, cap))

    def room(self) -> bool:
        """Another worker process fits under this host's ceiling (fit_to_host)."""
        running = sum(len(self.workers_of(c)) for c in self.classes)
        return self.most is None or running < self.most

    def ceiling(self) -> str:
        """The host's ceiling, said."""
        return f"this host runs at most {self.most} worker processes (two per core)"

    # -- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> LocalFleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, wait: float = 60.0) -> None:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        try:
            self._ensure_broker()
            for cls in self.classes:
                self._start_worker(cls)
            if self.flower:
                self._start_flower()
            self.wait_for_workers(wait)
        except BaseException:
            self.stop()
            raise

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **self.env}
        env["FLEET_BROKER_URL"] = self.cfg.broker_url
        env["FLEET_RESULT_BACKEND"] = self.cfg.backend_url
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        log = self.workdir / "logs" / f"{name}.log"
        # in a session of its own (a terminal's Ctrl-C is for the command, which stops it):
        # recorded before a signal may stop the command, so that stop() finds it
        with log.open("ab") as out, deferred():
            proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            child = Child(name, proc, log)
            self.children.append(child)
        return child

    def _ensure_broker(self) -> None:
        """A RabbitMQ broker must be running already; a local Redis (the broker, or the run
        store beside RabbitMQ) is started when none answers."""
        url = self.cfg.broker_url
        if url.startswith(AMQP_SCHEMES):
            if not broker_reachable(url, timeout=3.0):
                raise FleetError(f"broker {redact(url)} is unreachable (is RabbitMQ running?)")
            self.say(f"broker: using RabbitMQ at {redact(url)}")
            url = self.cfg.backend_url
        self._ensure_redis(url)

    def _ensure_redis(self, url: str) -> None:
        if broker_reachable(url):
            self.say(f"broker: using the Redis server at {redact(url)}")
            return
        parsed = urlparse(url)
        if parsed.scheme != "redis" or (parsed.hostname or "") not in LOCAL_HOSTS:
            raise FleetError(
                f"broker {redact(url)} is unreachable (and not a local Redis URL to start)"
            )
        binary = shutil.which("redis-server")
        if binary is None:
            raise FleetError(
                "no broker is reachable and redis-server is not installed "
                "(apt-get install -y redis-server, or set FLEET_BROKER_URL)"
            )
        port = str(parsed.port or 6379)
        # Persistent by default: a restarted broker keeps queued steps and run records.
        argv = [binary, "--port", port, "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.workdir)]
        # the URL carries one (user:password@, or ?password= as redis-py reads it): the
        # server must ask for it
        password = redis.Redis.from_url(url).connection_pool.connection_kwargs.get("password")
        if password:
            argv += ["--requirepass", password]
        self._spawn("redis", argv, dict(os.environ))
        self.redis_started = True
        deadline = time.monotonic() + 10
        while not broker_reachable(url, timeout=0.2):
            if time.monotonic() > deadline:
                raise FleetError(f"redis-server did not come up on port {port} (see logs)")
            time.sleep(0.05)
        log = self.workdir / "logs" / "redis.log"
        self.say(f"broker: started redis-server on {redact(url)} (appendonly; log {log})")

    def _start_worker(self, cls: str) -> None:
        """The class's ``workers`` worker processes (``cls@...``, ``cls-2@...``, ...)."""
        for i in range(1, self.counts.get(cls, self.cfg.classes[cls].workers) + 1):
            self._spawn_worker(cls, i)

    def _spawn_worker(self, cls: str, index: int, only: str | None = None) -> Child:
        """Worker ``index`` of ``cls``: one process, or one per lane (``only``: that lane's
        alone, to restart it). Returns the first one started."""
        spec = self.cfg.classes[cls]
        suffix = "" if index == 1 else f"-{index}"
        name = f"{cls}{suffix}@localfleet-{os.getpid()}"
        lanes = [only] if only is not None else host_lanes(spec)
        started = []
        for lane in lanes:
            argv = worker_argv(
                spec, name=name, loglevel=self.loglevel, lane=lane, events=self.cfg.task_events
            )
            env = {**self._env(), **worker_env(self.cfg, cls, self._env(), lane=lane)}
            label = lane_name(f"{cls}{suffix}", spec, lane)
            child = self._spawn(f"worker-{label}", argv, env)
            child.cls, child.index, child.lane = cls, index, lane
            queues = spec.queues if lane is None else [spec.queue_for(lane)]
            self.say(
                f"worker: {label:<9} queue={','.join(queues)} pool={spec.pool} "
                f"concurrency={spec.concurrency} pid={child.proc.pid} log={child.log}"
            )
            started.append(child)
        return started[0]

    def workers_of(self, cls: str) -> list[Child]:
        """The class's workers, in the order they were numbered (of a worker with lanes, its
        first lane's process)."""
        first = self.cfg.classes[cls].lanes[:1]
        mine = (c for c in self.children if c.cls == cls and (c.lane is None or c.lane in first))
        return sorted(mine, key=lambda c: c.index)

    def add_worker(self, cls: str) -> Child:
        """Start one more worker process of ``cls`` (the autoscaler's way up)."""
        taken = {c.index for c in self.workers_of(cls)}
        return self._spawn_worker(cls, next(i for i in range(1, len(taken) + 2) if i not in taken))

    def remove_worker(self, cls: str, idle: set[int] | None = None) -> Child | None:
        """Stop one of the class's worker processes with a warm shutdown: the last-numbered
        of those whose processes are all in ``idle`` (pids its heartbeats say run nothing),
        or the last-numbered when ``idle`` is None. It finishes what it runs, within its
        class's time limit -- it is killed only past that, when its step would have been
        anyway; what it had taken but not started goes back to the queue. None when the
        class has one worker left, or no idle one."""
        workers = self.workers_of(cls)
        if len(workers) <= 1:
            return None
        if idle is not None:
            lanes = {
                w.index: [c.proc.pid for c in self.children if c.cls == cls and c.index == w.index]
                for w in workers
            }
            workers = [w for w in workers if all(pid in idle for pid in lanes[w.index])]
            if not workers:
                return None
        child = workers[-1]
        spec = self.cfg.classes[cls]
        grace = (spec.time_limit or spec.soft_time_limit or STOP_GRACE_S) + 10.0
        with deferred():  # from one list to the other: never in neither
            for lane in [c for c in self.children if c.cls == cls and c.index == child.index]:
                self.children.remove(lane)  # stopped on purpose: supervise() must not restart
                lane.proc.send_signal(signal.SIGTERM)
                lane.restart_at = time.monotonic() + grace  # killed then if still running
                self.stopping.append(lane)
        return child

    def _reap(self, now: float) -> None:
        """Workers being stopped: forget those that exited, kill those past their grace."""
        for child in list(self.stopping):
            if child.proc.poll() is None and now > child.restart_at:
                child.proc.kill()
            if child.proc.poll() is not None:
                self.stopping.remove(child)

    def _start_flower(self) -> None:
        port = self.cfg.flower_port
        argv = [sys.executable, "-m", "fleet.deploy.flower", f"--port={port}"]
        argv.append("--address=127.0.0.1")
        if self.cfg.flower_broker_api:  # RabbitMQ's management API: Flower's queue view
            argv.append(f"--broker_api={self.cfg.flower_broker_api}")
        first = not self.flower_auth
        made = self._flower_auth()
        # Through the environment, not argv: the password stays out of `ps`.
        env = {**self._env(), "FLOWER_BASIC_AUTH": self.flower_auth}
        self._spawn("flower", argv, env)
        if not first:
            return  # a restart: the same address and password as before
        user = self.flower_auth.split(":", 1)[0]
        kept = self.workdir / FLOWER_AUTH_FILE
        if made and self._auth_made_now:  # the password is shown once, when it is made
            shown = f"{self.flower_auth}  (kept in {kept})"
        else:
            shown = f"{user}:**** ({f'in {kept}' if made else 'flower_auth'})"
        self.say(f"flower: http://127.0.0.1:{port}  basic auth {shown}  (API: /api/workers)")

    def _flower_auth(self) -> bool:
        """Flower's "user:password": the operator's (``flower_auth``), else the one this fleet
        made the first time and keeps in its workdir (0600), so that a restarted Flower, or
        the next `fleet up` here, asks for the same. Returns whether it is the fleet's own."""
        if self.cfg.flower_auth:
            self.flower_auth = self.cfg.flower_auth
            return False
        if not self.flower_auth:
            kept = self.workdir / FLOWER_AUTH_FILE
            found = kept.read_text().strip() if kept.is_file() else ""
            if ":" in found:
                self.flower_auth = found
            else:
                self.flower_auth = f"fleet:{secrets.token_urlsafe(12)}"
                self._auth_made_now = True
                kept.touch(mode=0o600)
                kept.chmod(0o600)
                kept.write_text(self.flower_auth + "\n")
        return True

    def supervise(self, now: float | None = None) -> list[str]:
        """Restart children that died -- Redis first (with its append-only data), then
        workers and Flower -- each after a backoff that doubles while it keeps dying (1 s to
        60 s). Nothing else is stopped. Returns the names restarted."""
        now = time.monotonic() if now is None else now
        self._reap(now)
        restarted = []
        for child in sorted(self.children, key=lambda c: c.name != "redis"):
            if child.proc.poll() is None:
                continue
            if now < child.restart_at:
                continue
            self.children.remove(child)
            self.say(f"{child.name} exited (code {child.proc.returncode}); restarting it")
            if child.name == "redis":
                self._ensure_broker()
            elif child.name == "flower":
                self._start_flower()
            elif child.cls is not None:
                self._spawn_worker(child.cls, child.index, child.lane)
            fresh = self.children[-1]
            fresh.restarts = child.restarts + 1
            fresh.restart_at = now + min(60.0, 2.0 ** (fresh.restarts - 1))
            restarted.append(child.name)
        return restarted

    def wait_for_workers(self, timeout: float) -> None:
        """Block until every class has a live worker (heartbeat seen)."""
        reader = StateReader(self.cfg)
        deadline = time.monotonic() + timeout
        while True:
            state = reader.read()
            missing = [c for c in self.classes if not state.live(c)]
            if not missing:
                return
            for child in self.children:
                if child.proc.poll() is not None:
                    raise FleetError(
                        f"{child.name} exited with code {child.proc.returncode}; see {child.log}"
                    )
            if time.monotonic() > deadline:
                raise FleetError(f"no live worker for {missing} after {timeout:.0f} s")
            time.sleep(0.2)

    def stop(self, grace: float = 15.0) -> None:
        """Warm shutdown (SIGTERM) of workers and Flower, SIGKILL after ``grace`` s; Redis
        last. A signal that arrives meanwhile is raised once all of it is stopped."""
        with deferred():
            _terminate([c for c in self.children + self.stopping if c.name != "redis"], grace)
            self.stopping.clear()
            _terminate([c for c in self.children if c.name == "redis"], 5.0)
            self.children.clear()


def _terminate(children: list[Child], grace: float) -> None:
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()
