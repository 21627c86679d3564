"""Device classes, their price per hour (total cost of ownership) and their latency per op.

See fleet/data/catalogue.toml for the format and where every figure comes from.
"""

from __future__ import annotations

import difflib
import functools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.errors import ConfigError
from fleet.paths import DATA
from fleet.planning.devices import Device, Measured, Rule, SplitSpec, device, parse, rule
from fleet.routing.profiles import ProfileStore, shared_time

CATALOGUE = DATA / "catalogue.toml"
PROFILE_SETS = {"default": DATA / "profiles.json", "h100": DATA / "profiles-h100.json"}
__all__ = ["CATALOGUE", "Catalogue", "Device", "LatencyModel", "Split"]


@dataclass(frozen=True)
class LatencyModel:
    fixed_s: float
    per_unit_s: float
    source: str  # "measured: ...", "derived: ..." or "assumed: ..."
    # throughput with k steps at once in one process over one at a time ({"8": 2.07}), for
    # a device whose slots are one process's batch (Device.batches)
    batch: dict[str, float] | None = None
    cv: float | None = None  # the service time's coefficient of variation (None: the device's)

    def time(self, units: float) -> float:
        return self.fixed_s + self.per_unit_s * units

    def at_batch(self, units: float, slots: int) -> float:
        """A step's time with ``slots`` steps sharing its process: they share its
        throughput, so each takes slots / speedup(slots) as long as alone."""
        if not self.batch:
            return self.time(units)
        return shared_time(self.time(units), self.batch, slots)


@dataclass(frozen=True)
class Split:
    """An op planned as two parts on possibly different classes (e.g. prefill, decode)."""

    parts: tuple[str, str]
    handover_bytes_per_unit: float
    default_units: float
    units_param: str
    default_param_units: float


OWNED_ONLY = ("capex", "power_w", "price_per_hour")  # a device priced by the unit is not bought
UNIT_ONLY = ("price_per_call", "price_per_unit", "capacity")


TABLES = {"defaults", "devices", "ops", "split", "scaling", "network"}


def _table(path: Path, doc: dict[str, Any], key: str) -> dict[str, Any]:
    found = doc.get(key, {})
    if not isinstance(found, dict):
        raise ConfigError(f"{path}: [{key}]: expected a table")
    return found


def _device(path: Path, name: str, raw: dict[str, Any]) -> Device:
    where = f"{path}: device '{name}'"
    found = device(where, name, raw)
    if found.measured:
        m = parse(Measured, f"{where}: measured", found.measured)
        if m.set not in PROFILE_SETS:
            raise ConfigError(
                f"{where}: measured.set = {m.set!r}: expected one of {', '.join(PROFILE_SETS)}"
            )
    if found.per_unit:
        bought = [k for k in OWNED_ONLY if raw.get(k)]
        if bought:
            raise ConfigError(
                f"{where}: pricing = 'unit' is paid per use, but {', '.join(bought)} is set "
                "(a purchase or a rent by the hour): remove it, or price the device by the hour"
            )
    elif any(k in raw for k in UNIT_ONLY):
        raise ConfigError(
            f"{where}: price_per_call, price_per_unit and capacity need pricing = 'unit'"
        )
    _check_endpoint(where, found)
    return found


ENDPOINT_KEYS = {"base_url", "model", "api_key", "price_in"}


def _check_endpoint(where: str, device: Device) -> None:
    found = device.endpoint
    if found is None:
        return
    if not device.per_unit:
        raise ConfigError(f"{where}: endpoint needs pricing = 'unit' (it is paid per token)")
    if not isinstance(found, dict) or not isinstance(found.get("base_url"), str):
        raise ConfigError(f'{where}: endpoint: expected a table with base_url = "https://..."')
    unknown = set(found) - ENDPOINT_KEYS
    if unknown:
        raise ConfigError(
            f"{where}: endpoint: unknown key(s) {', '.join(sorted(unknown))} "
            f"(expected {', '.join(sorted(ENDPOINT_KEYS))})"
        )


def _rules(path: Path, ops: Any, devices: dict[str, Device]) -> dict[str, dict[str, Rule]]:
    """Each ``[ops.OP]`` rule is for a device, a kind (gpu, cpu) or ``any``, and has a
    latency: a rule for an unknown device would be ignored, silently."""
    kinds = {"gpu", "cpu", "any"}
    if not isinstance(ops, dict):
        raise ConfigError(f'{path}: [ops]: expected tables [ops."OP"]')
    found: dict[str, dict[str, Rule]] = {}
    for op, rules in ops.items():
        if not isinstance(rules, dict):
            raise ConfigError(f'{path}: [ops."{op}"]: expected a table of rules')
        found[op] = {}
        for key, raw in rules.items():
            where = f'{path}: [ops."{op}".{key}]'
            if key not in devices and key not in kinds:
                known = ", ".join([*sorted(devices), "gpu", "cpu", "any"])
                raise ConfigError(f"{where}: '{key}' is not a device or kind ({known})")
            found[op][key] = rule(where, raw)
    return found


def _op_names(doc: dict[str, Any]) -> set[str]:
    """The ops a catalogue document names: its rules, its splits and their parts, and the
    ops its devices have measurements of."""
    splits = doc.get("split", {})
    ops = set(doc.get("ops", {})) | set(splits)
    ops |= {p for s in splits.values() if isinstance(s, dict) for p in s.get("parts", ())}
    for d in doc.get("devices", {}).values():
        if isinstance(d, dict) and isinstance(d.get("measured"), dict):
            ops |= set(d["measured"].get("ops", ()))
    return {str(op) for op in ops}


@functools.cache
def _packaged_ops() -> frozenset[str]:
    return frozenset(_op_names(tomllib.loads(CATALOGUE.read_text())))


def _check_prices(path: Path, doc: dict[str, Any], devices: dict[str, Device]) -> None:
    """A ``price_per_unit`` key must be an op this catalogue or the packaged one knows (or
    its family, or ``any``): a misspelt one would price its steps at $0, silently."""
    ops = _op_names(doc) | _packaged_ops()
    known = ops | {op.split(".")[0] for op in ops} | {"any"}
    for d in devices.values():
        for key in d.price_per_unit:
            if key not in known:
                near = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" (did you mean '{near[0]}'?)" if near else ""
                raise ConfigError(
                    f"{path}: device '{d.name}': price_per_unit: '{key}' is not an op{hint}; "
                    f"known ops: {', '.join(sorted(ops))} (or an op family, or 'any')"
                )


@dataclass
class Catalogue:
    devices: dict[str, Device]
    ops: dict[str, dict[str, Rule]]
    splits: dict[str, Split] = field(default_factory=dict)
    compute_bound: frozenset[str] = frozenset()
    hop_s: float = 0.0005  # one network hop between classes, on top of bytes / bandwidth
    _sets: dict[str, ProfileStore] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: Path = CATALOGUE) -> Catalogue:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the catalogue: {exc}") from None
        return cls.loads(text, path)

    @classmethod
    def loads(cls, text: str, path: Path = Path("<catalogue>")) -> Catalogue:
        """A catalogue from its TOML text; errors name ``path``."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: cannot read the catalogue: {exc}") from None
        unknown = sorted(set(doc) - TABLES)
        if unknown:
            near = difflib.get_close_matches(unknown[0], sorted(TABLES), n=1)
            hint = f" (did you mean [{near[0]}]?)" if near else ""
            raise ConfigError(
                f"{path}: [{unknown[0]}]: unknown table{hint}; the tables are "
                f"{', '.join(sorted(TABLES))}"
            )
        defaults = doc.get("defaults", {})
        tables = doc.get("devices", {})
        if not isinstance(defaults, dict) or not isinstance(tables, dict):
            raise ConfigError(f"{path}: [defaults] and [devices.NAME] must be tables")
        devices = {}
        for name, raw in tables.items():
            if not isinstance(raw, dict):
                raise ConfigError(f"{path}: device '{name}': expected a table [devices.{name}]")
            devices[name] = _device(path, name, {**defaults, **raw})
        for d in devices.values():
            if d.like is not None and d.like not in devices:
                raise ConfigError(f"{path}: device '{d.name}': like = '{d.like}' is not a device")
        splits = {}
        for op, raw in _table(path, doc, "split").items():
            spec = parse(SplitSpec, f'{path}: [split."{op}"]', raw)
            splits[op] = Split(
                (spec.parts[0], spec.parts[1]),
                spec.handover_bytes_per_unit,
                spec.default_units,
                spec.units_param,
                spec.default_param_units,
            )
        bound = frozenset(_table(path, doc, "scaling").get("compute_bound", ()))
        ops = _rules(path, doc.get("ops", {}), devices)
        try:
            hop = float(doc.get("network", {}).get("hop_s", 0.0005))
            if hop < 0:
                raise ValueError("must be >= 0")
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{path}: [network] hop_s: {exc}") from None
        _check_prices(path, doc, devices)
        return cls(devices, ops, splits, bound, hop_s=hop)

    def owned(self) -> list[str]:
        """The devices priced by the hour: the ones whose workers the planner sizes."""
        return [j for j, d in self.devices.items() if not d.per_unit]

    def _set(self, name: str) -> ProfileStore:
        if name not in self._sets:
            self._sets[name] = ProfileStore.load(PROFILE_SETS[name])
        return self._sets[name]

    def _measured(self, d: Device, op: str) -> LatencyModel | None:
        m = d.measured
        if not m or op not in m.get("ops", ()):
            return None
        p = self._set(m["set"]).get(op, m["cls"])
        if p is None:
            return None
        where = f"{PROFILE_SETS[m['set']].name} class {m['cls']}"
        return LatencyModel(p.fixed_s, p.per_unit_s, f"measured: {where}", p.batch)

    def latency(self, device: str, op: str, kind: str | None = None) -> LatencyModel | None:
        """How long ``op`` takes on ``device`` (for a request of ``kind``, where a rule gives
        figures per kind); None where it cannot run (no figure)."""
        d = self.devices[device]
        if d.only and op not in d.only and op.split(".")[0] not in d.only:
            return None
        found = self._measured(d, op)
        if found is not None:
            return found
        if d.like is not None:
            ref = self.devices[d.like]
            base = self._measured(ref, op)
            if base is not None:
                if op in self.compute_bound:
                    ratio, how = ref.tflops / d.tflops, "FP16 TFLOPS"
                else:  # memory-bound
                    ratio, how = ref.bandwidth_gbs / d.bandwidth_gbs, "memory bandwidth"
                why = f"derived: {ref.name} ({base.source}) scaled by {how}, x{ratio:.2f}"
                return LatencyModel(base.fixed_s * ratio, base.per_unit_s * ratio, why, base.batch)
        rules = self.ops.get(op) or self.ops.get(op.split(".")[0]) or {}
        if op.startswith("json."):
            rules = rules or self.ops.get("text", {})
        for key in (device, d.kind, "any"):
            if key in rules:
                return _figures(rules[key], kind)
        return None

    def kinds(self) -> set[str]:
        """The request kinds some rule gives figures for."""
        return {k for rules in self.ops.values() for r in rules.values() for k in r.kinds}

    def cv(self, device: str, op: str, kind: str | None = None) -> float:
        """The coefficient of variation of a step's service time: its rule's (or its
        kind's), else its device's (``cv``, 0.2 unless stated)."""
        model = self.latency(device, op, kind)
        found = model.cv if model is not None else None
        return self.devices[device].cv if found is None else found

    def step_time(
        self, device: str, op: str, units: float, kind: str | None = None
    ) -> float | None:
        """What the planner holds a step to: its time on ``device`` with a full batch where
        the device batches (throughput at batch), else alone; None where it cannot run."""
        model = self.latency(device, op, kind)
        if model is None:
            return None
        d = self.devices[device]
        return model.at_batch(units, d.slots) if d.batches else model.time(units)


def _figures(r: Rule, kind: str | None) -> LatencyModel | None:
    """A rule's figures for a request of ``kind``: the kind's own where it has them, else the
    rule's; None where the rule has figures for other kinds only."""
    if kind is not None and kind in r.kinds:
        k = r.kinds[kind]
        cv = r.cv if k.cv is None else k.cv
        return LatencyModel(k.fixed_s, k.per_unit_s, k.source or r.source, r.batch, cv)
    if r.fixed_s is None:
        return None
    return LatencyModel(r.fixed_s, r.per_unit_s, r.source, r.batch, r.cv)
