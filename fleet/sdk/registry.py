"""The op registry: named Python functions with a kind and a hardware profile declaration.

Ops are registered with the :func:`op` decorator in ordinary modules and looked up by name at
validation time (client) and at run time (worker). The core never imports an op module by
name: they are found through the ``agent_fleet.ops`` entry points (this project's own
ops among them) and the ``op_modules`` setting. An op declares what only it
knows: how to measure the size of a call (``units``), representative inputs for profiling
(``samples``); a module that loads models registers a :func:`preloader` for them.

Importing an op module must be cheap: heavy libraries and models load lazily, inside the op
or a per-process cache, never at import time.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal, TypeVar

from fleet.constants import CELERY_OP_PREFIX, OPS_GROUP
from fleet.errors import FleetError, UnknownOpError

# "wait": the engine's own wait ops (fleet.sdk.waits); an op module cannot declare one
OpKind = Literal["model", "tool", "memory", "compute", "wait"]
OP_KINDS: tuple[str, ...] = ("model", "tool", "memory", "compute")
ANY_CLASS = "*"

F = TypeVar("F", bound=Callable[..., Any])
Units = Callable[[dict[str, Any]], float]


@dataclass(frozen=True)
class OpSpec:
    """What the fleet knows about one op before it runs."""

    name: str
    kind: OpKind
    func: Callable[..., Any]
    # Classes that can run it, in order of preference after `prefers`; ("*",) means any.
    classes: tuple[str, ...]
    prefers: str
    outputs: tuple[str, ...]
    retries: int = 0
    # Exceptions worth a retry (e.g. timeouts); anything else fails the step at once.
    retry_on: tuple[type[BaseException], ...] = ()
    description: str = ""
    params: tuple[str, ...] = field(default=())
    required: tuple[str, ...] = field(default=())
    accepts_any: bool = False
    # The size of one call in the op's own unit (tokens, texts, seconds): profiles are
    # ``fixed + per_unit * units``. None: every call is one unit.
    units: Units | None = None
    unit: str = "call"
    # The native runtime the op's models run on (llama.cpp, torch, ...), None for plain Python:
    # a class that lists its runtimes runs only ops of those (one GPU runtime per process).
    runtime: str | None = None
    # Representative keyword arguments, two sizes of work, for `fleet profile`.
    samples: tuple[dict[str, Any], ...] = ()
    # How a node's ``split:`` runs this op as two steps on two classes: (first op, second
    # op, the first's output that the second takes as the input of the same name), e.g.
    # an LLM generation = its prefill, then its decode of the prefill's ``state``.
    split: tuple[str, str, str] | None = None
    # The op keeps KV state of the prompts it ran in its worker (an LLM's batch): a
    # run's next step of it goes back to that worker when it has room (prefix affinity).
    prefix_cache: bool = False
    # The op ends by itself within its step's deadline (it reads ``time_left`` and bounds
    # every wait by it): a thread or gevent pool runs it directly, without a helper thread
    # to abandon it at the deadline -- what lets an io worker hold a thousand waits.
    keeps_deadline: bool = False
    # The op can run on an endpoint class (a class with ``endpoint``: its workers call an LLM
    # endpoint instead of loading a model), besides its own classes: an LLM generation.
    on_endpoint: bool = False

    def units_of(self, args: dict[str, Any]) -> float:
        """The size of a call with ``args``; 1.0 when the op declares no units or they fail."""
        if self.units is None:
            return 1.0
        try:
            return max(0.0, float(self.units(args)))
        except (TypeError, ValueError, KeyError):
            return 1.0

    def eligible(self, configured: Iterable[str] | Mapping[str, Any]) -> list[str]:
        """Configured classes that can run this op, preferred first (a class whose
        ``runtimes`` leave out this op's runtime cannot). A class that ``serves`` another
        (a planned ``a100`` serving ``gpu``) can run that class's ops, right after it. An
        endpoint class (one with ``endpoint``) runs only the ops that can run there
        (``on_endpoint``), after the op's own classes."""
        serves: dict[str, list[str]] = {}
        remote: list[str] = []
        if isinstance(configured, Mapping):
            serves = {n: list(getattr(s, "serves", None) or []) for n, s in configured.items()}
            remote = [n for n, s in configured.items() if getattr(s, "endpoint", None)]
            configured = [
                name
                for name, spec in configured.items()
                if name not in remote
                and (
                    self.runtime is None
                    or getattr(spec, "runtimes", None) is None
                    or self.runtime in spec.runtimes
                )
            ]
        configured = list(configured)
        allowed = configured if self.classes == (ANY_CLASS,) else list(self.classes)
        ordered = [self.prefers, *[c for c in allowed if c != self.prefers]]
        out = []
        for c in ordered:
            if c in configured and c in allowed:
                out.append(c)
            out += [s for s in configured if c in serves.get(s, ()) and s not in out]
        return out + (remote if self.on_endpoint else [])


# A Celery task name as people write them: dotted (or colon-separated) identifiers.
TASK_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:[.:-][A-Za-z0-9_]+)*$")


def _sent_by_name(**_: Any) -> Any:
    raise FleetError("a celery: op is a Celery task sent by name, not called in the step")


def celery_op(name: str) -> OpSpec:
    """The op of an existing Celery task (``celery:<task name>``): the engine sends that task
    by name to the class the router picks; its return value is the output ``result``. It is
    plain CPU work to the router until profiled, and any class may run it."""
    task = name[len(CELERY_OP_PREFIX) :]
    if not TASK_NAME_RE.match(task):
        raise UnknownOpError(
            f"op '{name}': '{task}' is not a Celery task name (dotted identifiers, "
            "such as proj.tasks.ocr)"
        )
    return OpSpec(
        name=name,
        kind="tool",
        func=_sent_by_name,
        classes=(ANY_CLASS,),
        prefers="cpu",
        outputs=("result",),
        accepts_any=True,
        description=f"the Celery task {task}, sent by name",
    )


def wait_ops() -> list[OpSpec]:
    """The engine's wait ops (``wait.signal``, ``wait.for``, ``wait.until``): every registry
    holds them; no class runs them (the run parks)."""
    from fleet.sdk.waits import WAIT_OPS

    specs = []
    for name, (func, outputs, required) in WAIT_OPS.items():
        params = tuple(inspect.signature(func).parameters)
        specs.append(
            OpSpec(
                name=name,
                kind="wait",
                func=func,
                classes=(ANY_CLASS,),
                prefers="io",
                outputs=outputs,
                description=(inspect.getdoc(func) or "").split("\n")[0],
                params=params,
                required=required,
            )
        )
    return specs


@dataclass(frozen=True)
class RuntimeSpec:
    """A native runtime that op modules load models with, as ``fleet doctor`` checks it."""

    name: str
    # Called in a process of its own: {"version": str, "gpu": bool, "devices": int}; raises
    # ImportError when the runtime is not installed. Must not initialise a GPU.
    probe: Callable[[], dict[str, Any]]
    gpu_fix: str = ""  # how to get a build that can use the GPU
    gpu_exclusive: bool = True  # must not share a CUDA process with another such runtime


class Registry:
    def __init__(self) -> None:
        self._ops: dict[str, OpSpec] = {}
        self._loaded: set[str] = set()
        self._preloaders: dict[str, Callable[[], Any]] = {}
        self._preload_runtime: dict[str, str | None] = {}
        self._runtimes: dict[str, RuntimeSpec] = {}
        self._plugins_loaded = False
        self._lock = threading.RLock()
        for spec in wait_ops():
            self._ops[spec.name] = spec

    def add(self, spec: OpSpec) -> None:
        existing = self._ops.get(spec.name)
        if existing is not None and existing.func is not spec.func:
            same = (existing.func.__module__, existing.func.__qualname__) == (
                spec.func.__module__,
                spec.func.__qualname__,
            )
            if not same:  # a module reloaded is fine; two ops with one name are not
                raise FleetError(f"op '{spec.name}' is registered twice")
        self._ops[spec.name] = spec

    def get(self, name: str) -> OpSpec:
        if name.startswith(CELERY_OP_PREFIX):
            return celery_op(name)
        try:
            return self._ops[name]
        except KeyError:
            raise UnknownOpError(f"unknown op '{name}'") from None

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and name.startswith(CELERY_OP_PREFIX):
            return TASK_NAME_RE.match(name[len(CELERY_OP_PREFIX) :]) is not None
        return name in self._ops

    def names(self) -> list[str]:
        return sorted(self._ops)

    def units_of(self, name: str, args: dict[str, Any]) -> float:
        spec = self._ops.get(name)
        return 1.0 if spec is None else spec.units_of(args)

    def add_preloader(self, name: str, load: Callable[[], Any], runtime: str | None = None) -> None:
        self._preloaders[name] = load
        self._preload_runtime[name] = runtime

    def add_runtime(self, spec: RuntimeSpec) -> None:
        self._runtimes[spec.name] = spec

    def runtime(self, name: str) -> RuntimeSpec:
        try:
            return self._runtimes[name]
        except KeyError:
            raise FleetError(f"no runtime named '{name}' is registered") from None

    def runtimes(self) -> list[str]:
        return sorted(self._runtimes)

    def class_runtimes(self, cls: str, cfg: Any) -> set[str]:
        """Native runtimes the processes of class ``cls`` may load: those of its preloaded
        models and of the ops it is eligible for."""
        found = {r for p in cfg.classes[cls].preload if (r := self._preload_runtime.get(p))}
        for spec in self._ops.values():
            if spec.runtime and cls in spec.eligible(cfg.classes):
                found.add(spec.runtime)
        return {r for r in found if r in self._runtimes}

    def preloaders(self) -> list[str]:
        return sorted(self._preloaders)

    def preload(self, names: Iterable[str], lane: str | None = None) -> None:
        """Run the named preloaders (a class's ``preload`` list) in this process; in a lane
        of a GPU class (``lane``: its runtime), only those of that runtime."""
        for name in names:
            if name not in self._preloaders:
                known = ", ".join(self.preloaders()) or "none registered"
                raise FleetError(f"no preloader named '{name}' (known: {known})")
            if lane is None or self._preload_runtime.get(name) in (None, lane):
                self._preloaders[name]()

    def load_plugins(self) -> None:
        """Import every op module advertised in the ``agent_fleet.ops`` entry-point group."""
        with self._lock:
            if self._plugins_loaded:
                return
            for entry in entry_points(group=OPS_GROUP):
                self.load_modules([entry.value.split(":")[0]])
            self._plugins_loaded = True  # only once every module is in

    def load(self, modules: Iterable[str], plugins: bool = True) -> None:
        """The ops of a configuration: entry-point plug-ins (unless turned off), then
        ``modules``. Thread-safe: the io class's threads may all start at once."""
        if plugins:
            self.load_plugins()
        self.load_modules(modules)

    def load_modules(self, modules: Iterable[str]) -> None:
        """Import op modules once each; their decorators fill the registry."""
        with self._lock:
            for mod in modules:
                if mod in self._loaded:
                    continue
                _import(mod)
                self._loaded.add(mod)


registry = Registry()


class OpModuleError(FleetError):
    """An op module the configuration names cannot be imported (a user's mistake: the
    command line says so in one line, exit 2)."""


def _import(mod: str) -> None:
    """Import an op module; one beside the current folder is found as the workers find it
    (Celery and ``python -m`` look in the current folder, the ``fleet`` script does not)."""
    try:
        importlib.import_module(mod)
        return
    except ModuleNotFoundError as exc:
        here = os.getcwd()
        if exc.name != mod.split(".")[0] or here in sys.path:
            raise OpModuleError(f"cannot import op module '{mod}': {exc}") from exc
    except ImportError as exc:
        raise OpModuleError(f"cannot import op module '{mod}': {exc}") from exc
    sys.path.append(here)
    try:
        importlib.import_module(mod)
    except ImportError as exc:
        raise OpModuleError(
            f"cannot import op module '{mod}': {exc} (looked on sys.path and in {here}; "
            "the client imports op modules too, to validate workflows: set PYTHONPATH to "
            "the module's folder)"
        ) from exc


def _signature(func: Callable[..., Any]) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    params, required, accepts_any = [], [], False
    for p in inspect.signature(func).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            accepts_any = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            params.append(p.name)
            if p.default is p.empty:
                required.append(p.name)
    return tuple(params), tuple(required), accepts_any


def op(
    name: str,
    *,
    kind: OpKind = "compute",
    classes: Iterable[str] = (ANY_CLASS,),
    prefers: str | None = None,
    outputs: Iterable[str] = ("result",),
    retries: int = 0,
    retry_on: Iterable[type[BaseException]] = (),
    runtime: str | None = None,
    units: Units | None = None,
    unit: str = "call",
    samples: Iterable[dict[str, Any]] = (),
    split: tuple[str, str, str] | None = None,
    prefix_cache: bool = False,
    keeps_deadline: bool = False,
    on_endpoint: bool = False,
    registry_: Registry | None = None,
) -> Callable[[F], F]:
    """Register ``func`` as op ``name``.

    The function takes its inputs and params as keyword arguments and returns a dict with
    one entry per declared output (or any value when it declares the single output
    ``result``). ``classes`` lists where it can run; ``prefers`` is where it runs best.
    ``units(args)`` measures one call's size in ``unit``s for the profiles; ``samples`` are
    representative arguments (two sizes of work) that ``fleet profile`` runs. ``split``
    says how a node may run it as two steps on two classes (see :class:`OpSpec`).
    ``prefix_cache``: the op keeps its prompts' KV state in the worker, so a run's next
    step of it is routed back to the worker that ran the last one (prefix affinity).
    ``keeps_deadline``: the op ends within its step's deadline by itself (see
    :func:`fleet.sdk.time_left`), so no helper thread watches it in a thread pool.
    ``on_endpoint``: the op also runs on endpoint classes (it calls the class's endpoint there).
    """
    if kind not in OP_KINDS:
        raise FleetError(f"op '{name}': kind must be one of {', '.join(OP_KINDS)}, not '{kind}'")
    class_tuple = tuple(classes)
    if not class_tuple:
        raise FleetError(f"op '{name}': classes must not be empty")
    preferred = prefers or (class_tuple[0] if class_tuple != (ANY_CLASS,) else "cpu")
    if class_tuple != (ANY_CLASS,) and preferred not in class_tuple:
        raise FleetError(f"op '{name}': preferred class '{preferred}' is not in {class_tuple}")

    def decorate(func: F) -> F:
        params, required, accepts_any = _signature(func)
        spec = OpSpec(
            name=name,
            kind=kind,
            func=func,
            classes=class_tuple,
            prefers=preferred,
            outputs=tuple(outputs),
            retries=retries,
            retry_on=tuple(retry_on),
            description=(inspect.getdoc(func) or "").split("\n")[0],
            params=params,
            required=required,
            accepts_any=accepts_any,
            units=units,
            unit=unit,
            runtime=runtime,
            samples=tuple(samples),
            split=split,
            prefix_cache=prefix_cache,
            keeps_deadline=keeps_deadline,
            on_endpoint=on_endpoint,
        )
        (registry_ or registry).add(spec)
        return func

    return decorate


def preloader(
    name: str, runtime: str | None = None, registry_: Registry | None = None
) -> Callable[[F], F]:
    """Register ``func`` as the loader a class's ``preload = ["NAME"]`` runs in each worker
    process before its first task (after fork: CUDA is not fork-safe); ``runtime`` names the
    native runtime its model runs on."""

    def decorate(func: F) -> F:
        (registry_ or registry).add_preloader(name, func, runtime)
        return func

    return decorate
