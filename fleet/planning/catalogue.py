"""Device classes, their price per hour (total cost of ownership) and their latency per op.

See fleet/data/catalogue.toml for the format and where every figure comes from.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.errors import ConfigError
from fleet.paths import DATA
from fleet.routing.profiles import ProfileStore, shared_time

CATALOGUE = DATA / "catalogue.toml"
PROFILE_SETS = {"default": DATA / "profiles.json", "h100": DATA / "profiles-h100.json"}
HOURS_PER_YEAR = 8760.0
GPU_TFLOPS = 20.0  # above this, a device is a GPU-class accelerator for the op rules


@dataclass(frozen=True)
class LatencyModel:
    fixed_s: float
    per_unit_s: float
    source: str  # "measured: ...", "derived: ..." or "assumed: ..."
    # throughput with k steps at once in one process over one at a time ({"8": 2.07}), for
    # a device whose slots are one process's batch (Device.batches)
    batch: dict[str, float] | None = None

    def time(self, units: float) -> float:
        return self.fixed_s + self.per_unit_s * units

    def at_batch(self, units: float, slots: int) -> float:
        """A step's time with ``slots`` steps sharing its process: they share its
        throughput, so each takes slots / speedup(slots) as long as alone."""
        if not self.batch:
            return self.time(units)
        return shared_time(self.time(units), self.batch, slots)


@dataclass(frozen=True)
class Device:
    """A device class. Priced by the hour (``pricing = "hour"``: owned, its total cost of
    ownership from capex and power) or by the unit (``pricing = "unit"``: rented capacity
    or an external model API, paid per call and per unit of work -- tokens for the LLM ops
    -- with no workers to size; ``capacity`` caps its concurrent steps, none by default).
    Data leaving it may cost ``egress_per_gb`` as well as time."""

    name: str
    network_gbs: float
    lifetime_years: float = 4.0
    interest: float = 0.08
    electricity_per_kwh: float = 0.40
    utilisation: float = 1.0
    capex: float = 0.0
    power_w: float = 0.0
    memory_gb: float = 0.0
    bandwidth_gbs: float = 0.0
    tflops: float = 0.0
    slots: int = 1
    pricing: str = "hour"
    price_per_call: float = 0.0
    # $ per unit of work, per op (an op, its family, or "any"), e.g. {"llm.decode" = 1e-6}
    price_per_unit: dict[str, float] = field(default_factory=dict)
    # a worker's slots are one process's batch (an accelerator's sequences): a step takes
    # slots / speedup(slots) as long as alone where its op has a batch curve
    batches: bool = False
    # what its workers' ops bind to (ClassSpec.device): "cuda" on an NVIDIA GPU
    device: str = "cpu"
    capacity: int | None = None  # per-unit pricing: the most steps it runs at once
    egress_per_gb: float = 0.0  # $ per GB of data leaving the device for another class
    measured: dict[str, Any] = field(default_factory=dict)
    like: str | None = None
    # data classifications this device may hold (e.g. "confidential"): placement constraint
    trusted_for: list[str] = field(default_factory=list)
    # only these ops (or op families: "text" for text.*) run here, e.g. an I/O thread pool
    only: list[str] = field(default_factory=list)
    # the live fleet's classes whose ops this device runs (its class `serves` them)
    serves: list[str] = field(default_factory=list)
    # the operator's utilisation ceiling for this class (planning); None: the plan's default
    ceiling: float | None = None
    # a per-unit device that is an LLM endpoint: { base_url, model?, api_key?, price_in? }
    # (price_in: $ per million prompt tokens; its completion tokens are price_per_unit's);
    # the plan's class for it is an endpoint class, whose workers call it (fleet config's
    # `endpoints`)
    endpoint: dict[str, Any] | None = None

    @property
    def kind(self) -> str:
        return "gpu" if self.tflops >= GPU_TFLOPS else "cpu"

    @property
    def per_unit(self) -> bool:
        return self.pricing == "unit"

    def step_price(self, op: str, units: float) -> float:
        """$ per step of ``op`` on a device priced by the unit (0 on an owned device)."""
        if not self.per_unit:
            return 0.0
        table = self.price_per_unit
        rate = table.get(op, table.get(op.split(".")[0], table.get("any", 0.0)))
        return self.price_per_call + rate * units

    @property
    def price_per_hour(self) -> float:
        """Amortised purchase (an annuity at ``interest``) plus power at rated TDP; 0 for a
        device priced by the unit."""
        if self.per_unit:
            return 0.0
        r, n = self.interest, self.lifetime_years
        yearly = self.capex * r / (1 - (1 + r) ** -n) if r > 0 else self.capex / n
        return yearly / (HOURS_PER_YEAR * self.utilisation) + self.power_w / 1000 * (
            self.electricity_per_kwh
        )


@dataclass(frozen=True)
class Split:
    """An op planned as two parts on possibly different classes (e.g. prefill, decode)."""

    parts: tuple[str, str]
    handover_bytes_per_unit: float
    default_units: float
    units_param: str
    default_param_units: float


RULE_FIELDS = {"fixed_s", "per_unit_s", "source"}
RULE_OPTIONAL = {"batch"}
OWNED_ONLY = ("capex", "power_w")  # a device priced by the unit is not bought


def _device(path: Path, name: str, raw: dict[str, Any]) -> Device:
    where = f"{path}: device '{name}'"
    prices = raw.get("price_per_unit", {})
    if isinstance(prices, int | float) and not isinstance(prices, bool):
        raw["price_per_unit"] = {"any": float(prices)}
    elif not isinstance(prices, dict):
        raise ConfigError(f"{where}: price_per_unit: a number, or a table of op = $ per unit")
    try:
        device = Device(name=name, **raw)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if device.pricing not in ("hour", "unit"):
        raise ConfigError(f"{where}: pricing = {device.pricing!r}: expected 'hour' or 'unit'")
    numbers = {
        "price_per_call": device.price_per_call,
        "egress_per_gb": device.egress_per_gb,
        **{f"price_per_unit.{op}": v for op, v in device.price_per_unit.items()},
    }
    for key, value in numbers.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{where}: {key} = {value!r}: expected a number >= 0")
    if device.network_gbs <= 0:
        raise ConfigError(f"{where}: network_gbs = {device.network_gbs!r}: must be > 0")
    if device.per_unit:
        bought = [k for k in OWNED_ONLY if raw.get(k)]
        if bought:
            raise ConfigError(
                f"{where}: pricing = 'unit' is paid per use, but {', '.join(bought)} is set "
                "(a purchase): remove it, or price the device by the hour"
            )
        if device.capacity is not None and device.capacity < 1:
            raise ConfigError(f"{where}: capacity = {device.capacity}: expected at least 1")
    elif device.price_per_call or device.price_per_unit or device.capacity is not None:
        raise ConfigError(
            f"{where}: price_per_call, price_per_unit and capacity need pricing = 'unit'"
        )
    _check_endpoint(where, device)
    return device


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


def _check_rules(path: Path, ops: dict[str, Any], devices: dict[str, Device]) -> None:
    """Each ``[ops.OP]`` rule is for a device, a kind (gpu, cpu) or ``any``, and has a
    latency: a rule for an unknown device would be ignored, silently."""
    kinds = {"gpu", "cpu", "any"}
    for op, rules in ops.items():
        if not isinstance(rules, dict):
            raise ConfigError(f'{path}: [ops."{op}"]: expected a table of rules')
        for key, rule in rules.items():
            where = f'{path}: [ops."{op}".{key}]'
            if key not in devices and key not in kinds:
                known = ", ".join([*sorted(devices), "gpu", "cpu", "any"])
                raise ConfigError(f"{where}: '{key}' is not a device or kind ({known})")
            if (
                not isinstance(rule, dict)
                or not RULE_FIELDS <= set(rule) <= RULE_FIELDS | RULE_OPTIONAL
            ):
                raise ConfigError(f"{where}: expected fixed_s, per_unit_s and source [, batch]")
            try:
                if float(rule["fixed_s"]) < 0 or float(rule["per_unit_s"]) < 0:
                    raise ValueError("a time is negative")
                for k, v in (rule.get("batch") or {}).items():
                    if int(k) < 2 or float(v) <= 0:
                        raise ValueError(f"batch: {k} = {v}: k >= 2 steps, a speed-up > 0")
            except (TypeError, ValueError, AttributeError) as exc:
                raise ConfigError(f"{where}: {exc}") from None


@dataclass
class Catalogue:
    devices: dict[str, Device]
    ops: dict[str, dict[str, dict[str, Any]]]
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
        defaults = doc.get("defaults", {})
        devices = {}
        for name, raw in doc.get("devices", {}).items():
            devices[name] = _device(path, name, {**defaults, **raw})
        for d in devices.values():
            if d.like is not None and d.like not in devices:
                raise ConfigError(f"{path}: device '{d.name}': like = '{d.like}' is not a device")
        try:
            splits = {
                op: Split(
                    tuple(raw["parts"]),
                    float(raw["handover_bytes_per_unit"]),
                    float(raw["default_units"]),
                    str(raw["units_param"]),
                    float(raw["default_param_units"]),
                )
                for op, raw in doc.get("split", {}).items()
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: [split]: {exc}") from None
        bound = frozenset(doc.get("scaling", {}).get("compute_bound", ()))
        ops = doc.get("ops", {})
        _check_rules(path, ops, devices)
        try:
            hop = float(doc.get("network", {}).get("hop_s", 0.0005))
            if hop < 0:
                raise ValueError("must be >= 0")
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{path}: [network] hop_s: {exc}") from None
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

    def latency(self, device: str, op: str) -> LatencyModel | None:
        """How long ``op`` takes on ``device``; None where it cannot run (no figure)."""
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
                    ratio, rule = ref.tflops / d.tflops, "FP16 TFLOPS"
                else:  # memory-bound
                    ratio, rule = ref.bandwidth_gbs / d.bandwidth_gbs, "memory bandwidth"
                why = f"derived: {ref.name} ({base.source}) scaled by {rule}, x{ratio:.2f}"
                return LatencyModel(base.fixed_s * ratio, base.per_unit_s * ratio, why, base.batch)
        rules = self.ops.get(op) or self.ops.get(op.split(".")[0]) or {}
        if op.startswith("json."):
            rules = rules or self.ops.get("text", {})
        for key in (device, d.kind, "any"):
            if key in rules:
                r = rules[key]
                batch = {str(k): float(v) for k, v in (r.get("batch") or {}).items()} or None
                return LatencyModel(
                    float(r["fixed_s"]), float(r["per_unit_s"]), str(r["source"]), batch
                )
        return None

    def step_time(self, device: str, op: str, units: float) -> float | None:
        """What the planner holds a step to: its time on ``device`` with a full batch where
        the device batches (throughput at batch), else alone; None where it cannot run."""
        model = self.latency(device, op)
        if model is None:
            return None
        d = self.devices[device]
        return model.at_batch(units, d.slots) if d.batches else model.time(units)
