"""The op registry: named Python functions with a kind and a hardware profile declaration.

Ops are registered with the :func:`op` decorator in ordinary modules (see ``workers/ops``)
and looked up by name at validation time (client) and at run time (worker). Importing an op
module must be cheap: heavy libraries and models load lazily, inside the op or a per-process
cache, never at import time.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from fleet.errors import FleetError, UnknownOpError

OpKind = Literal["model", "tool", "memory", "compute"]
OP_KINDS: tuple[str, ...] = ("model", "tool", "memory", "compute")
ANY_CLASS = "*"

F = TypeVar("F", bound=Callable[..., Any])


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

    def eligible(self, configured: Iterable[str]) -> list[str]:
        """Configured classes that can run this op, preferred first."""
        configured = list(configured)
        allowed = configured if self.classes == (ANY_CLASS,) else list(self.classes)
        ordered = [self.prefers, *[c for c in allowed if c != self.prefers]]
        return [c for c in ordered if c in configured and (c in allowed)]


class Registry:
    def __init__(self) -> None:
        self._ops: dict[str, OpSpec] = {}
        self._loaded: set[str] = set()

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
        try:
            return self._ops[name]
        except KeyError:
            raise UnknownOpError(f"unknown op '{name}'") from None

    def __contains__(self, name: object) -> bool:
        return name in self._ops

    def names(self) -> list[str]:
        return sorted(self._ops)

    def load_modules(self, modules: Iterable[str]) -> None:
        """Import op modules once each; their decorators fill the registry."""
        for mod in modules:
            if mod in self._loaded:
                continue
            try:
                importlib.import_module(mod)
            except ImportError as exc:
                raise FleetError(f"cannot import op module '{mod}': {exc}") from exc
            self._loaded.add(mod)


registry = Registry()


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
    registry_: Registry | None = None,
) -> Callable[[F], F]:
    """Register ``func`` as op ``name``.

    The function takes its inputs and params as keyword arguments and returns a dict with
    one entry per declared output (or any value when it declares the single output
    ``result``). ``classes`` lists where it can run; ``prefers`` is where it runs best.
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
        )
        (registry_ or registry).add(spec)
        return func

    return decorate
