"""The catalogue's schema: a device class and an (op, device) latency rule, as pydantic
models, and the one place their mistakes become messages.

Every mistake names the file, the device or rule, and the field, with the value it got and
the fields there are (an unknown field, e.g. ``slot = 1``, says which one was meant); no
Python or solver text reaches the user. The fields are documented in docs/planning.md
("The catalogue's fields").
"""

from __future__ import annotations

import difflib
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fleet.errors import ConfigError

HOURS_PER_YEAR = 8760.0
GPU_TFLOPS = 20.0  # above this, a device is a GPU-class accelerator for the op rules
DEFAULT_CV = 0.2  # a step's service-time coefficient of variation where nothing says
Spec = TypeVar("Spec", bound=BaseModel)

STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=False)


class Figures(BaseModel):
    """A step's time on a device for one request kind: ``fixed_s + per_unit_s x units``."""

    model_config = STRICT

    fixed_s: float = Field(ge=0, allow_inf_nan=False)
    per_unit_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    cv: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    source: str | None = None


class Rule(BaseModel):
    """``[ops."OP".DEVICE]`` (or a kind: gpu, cpu, any): how long a step of OP takes there
    and where the figure comes from. ``kinds`` gives other figures per request kind (a
    workload entry's ``kind``); a rule with only ``kinds`` runs only those kinds."""

    model_config = STRICT

    fixed_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    per_unit_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    source: str
    cv: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    batch: dict[str, float] | None = None
    kinds: dict[str, Figures] = Field(default_factory=dict)

    @field_validator("batch")
    @classmethod
    def _curve(cls, batch: dict[str, float] | None) -> dict[str, float] | None:
        for k, v in (batch or {}).items():
            if not k.isdigit() or int(k) < 2 or not v > 0:
                raise ValueError(f"{k} = {v}: k >= 2 steps, a speed-up > 0")
        return batch

    @model_validator(mode="after")
    def _some_figure(self) -> Rule:
        if self.fixed_s is None and not self.kinds:
            raise ValueError("fixed_s: required (or figures per request kind, in kinds)")
        return self


class Device(BaseModel):
    """A device class. Priced by the hour (``pricing = "hour"``: owned or rented by the
    hour -- ``price_per_hour``, plus the total cost of ownership of ``capex`` and
    ``power_w``) or by the unit (``pricing = "unit"``: rented capacity or an external model
    API, paid per call and per unit of work -- tokens for the LLM ops -- with no workers to
    size; ``capacity`` caps its concurrent steps, none by default). Data leaving it may cost
    ``egress_per_gb`` as well as time."""

    model_config = STRICT

    name: str
    network_gbs: float = Field(gt=0, allow_inf_nan=False)
    pricing: Literal["hour", "unit"] = "hour"
    hourly: float = Field(default=0.0, ge=0, allow_inf_nan=False, alias="price_per_hour")
    capex: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    power_w: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    lifetime_years: float = Field(default=4.0, gt=0, allow_inf_nan=False)
    interest: float = Field(default=0.08, ge=0, allow_inf_nan=False)
    electricity_per_kwh: float = Field(default=0.40, ge=0, allow_inf_nan=False)
    utilisation: float = Field(default=1.0, gt=0, le=1, allow_inf_nan=False)
    memory_gb: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    bandwidth_gbs: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    tflops: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    slots: int = Field(default=1, ge=1)
    price_per_call: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    # $ per unit of work, per op (an op, its family, or "any"), e.g. {"llm.decode" = 1e-6}
    price_per_unit: dict[str, float] = Field(default_factory=dict)
    # a worker's slots are one process's batch (an accelerator's sequences): a step takes
    # slots / speedup(slots) as long as alone where its op has a batch curve
    batches: bool = False
    # what its workers' ops bind to (ClassSpec.device): "cuda" on an NVIDIA GPU
    device: str = "cpu"
    # its workers' pool (ClassSpec.pool); None: threads for a batching or endpoint device,
    # else the pool of the built-in classes it serves (io: threads), else prefork
    pool: Literal["prefork", "threads", "gevent", "solo"] | None = None
    capacity: int | None = Field(default=None, ge=1)  # per unit: the most steps at once
    egress_per_gb: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    measured: dict[str, Any] = Field(default_factory=dict)
    like: str | None = None
    # data classifications this device may hold (e.g. "confidential"): placement constraint
    trusted_for: list[str] = Field(default_factory=list)
    # only these ops (or op families: "text" for text.*) run here, e.g. an I/O thread pool
    only: list[str] = Field(default_factory=list)
    # the live fleet's classes whose ops this device runs (its class `serves` them)
    serves: list[str] = Field(default_factory=list)
    # the operator's utilisation ceiling for this class (planning); None: the plan's default
    ceiling: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    # its steps' service-time coefficient of variation where a rule does not say
    cv: float = Field(default=DEFAULT_CV, ge=0, allow_inf_nan=False)
    # a per-unit device that is an LLM endpoint: { base_url, model?, api_key?, price_in? }
    endpoint: dict[str, Any] | None = None

    @field_validator("price_per_unit", mode="before")
    @classmethod
    def _any(cls, prices: Any) -> Any:
        if isinstance(prices, int | float) and not isinstance(prices, bool):
            return {"any": float(prices)}
        return prices

    @field_validator("price_per_unit")
    @classmethod
    def _non_negative(cls, prices: dict[str, float]) -> dict[str, float]:
        for op, value in prices.items():
            if not value >= 0 or value == float("inf"):
                raise ValueError(f"{op} = {value!r}: expected a number >= 0")
        return prices

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
        """The stated price per hour plus the amortised purchase (an annuity at
        ``interest``) plus power at rated TDP; 0 for a device priced by the unit."""
        if self.per_unit:
            return 0.0
        r, n = self.interest, self.lifetime_years
        yearly = self.capex * r / (1 - (1 + r) ** -n) if r > 0 else self.capex / n
        return (
            self.hourly
            + yearly / (HOURS_PER_YEAR * self.utilisation)
            + self.power_w / 1000 * self.electricity_per_kwh
        )


class SplitSpec(BaseModel):
    """``[split."OP"]``: an op planned as two parts (an LLM call as prefill, then decode)."""

    model_config = STRICT

    parts: list[str] = Field(min_length=2, max_length=2)
    handover_bytes_per_unit: float = Field(ge=0, allow_inf_nan=False)
    default_units: float = Field(ge=0, allow_inf_nan=False)
    units_param: str
    default_param_units: float = Field(ge=0, allow_inf_nan=False)


class Measured(BaseModel):
    """A device's ``measured``: which profile set, which class of it, for which ops."""

    model_config = STRICT

    set: str
    cls: str
    ops: list[str]


def _fields(model: type[BaseModel]) -> list[str]:
    return sorted((f.alias or k) for k, f in model.model_fields.items() if k != "name")


DEVICE_FIELDS = _fields(Device)
RULE_FIELDS = _fields(Rule)
FIGURE_FIELDS = _fields(Figures)


def explain(exc: ValidationError, where: str, model: type[BaseModel]) -> ConfigError:
    """``exc``'s first mistake as a message naming ``where``, the field and its value."""
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    known = {Device: DEVICE_FIELDS, Rule: RULE_FIELDS}.get(model) or _fields(model)
    if "kinds" in loc[:1] and len(loc) > 2:
        known = FIGURE_FIELDS
    kind, msg = err["type"], str(err["msg"]).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        near = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        text = f"{key}: unknown field{hint}; the fields are {', '.join(known)}"
    elif kind == "missing":
        text = f"{key}: required, missing; the fields are {', '.join(known)}"
    elif kind == "literal_error":
        text = f"{key} = {err['input']!r}: expected {err.get('ctx', {}).get('expected')}"
    elif not loc or kind == "value_error":
        text = f"{key}: {msg}" if loc else msg
    else:
        text = f"{key} = {err['input']!r}: {msg}"
    return ConfigError(f"{where}: {text}")


def device(where: str, name: str, raw: dict[str, Any]) -> Device:
    try:
        return Device(name=name, **raw)
    except ValidationError as exc:
        raise explain(exc, where, Device) from None
    except TypeError as exc:  # a TOML key that is not a name (cannot be: keys are strings)
        raise ConfigError(f"{where}: {exc}") from None


def parse(model: type[Spec], where: str, raw: Any) -> Spec:
    """``raw`` as ``model``, its mistakes named as :func:`explain` names them."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table of {', '.join(_fields(model))}")
    try:
        return model(**raw)
    except ValidationError as exc:
        raise explain(exc, where, model) from None


def rule(where: str, raw: Any) -> Rule:
    return parse(Rule, where, raw)
