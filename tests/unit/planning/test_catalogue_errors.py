"""The catalogue as a newcomer writes it (issue 44): a price per hour, and every mistake --
an unknown or missing field, a misspelt op in a price table, a negative purchase, a
utilisation ceiling out of range -- a clear error naming the file, the device or rule and
the field, exit 2 from the command line, never Python's or the solver's own text."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from fleet.cli.main import cli
from fleet.errors import ConfigError
from fleet.planning.catalogue import Catalogue
from fleet.planning.planner import plan
from fleet.planning.workload import load_workload

RENTED = """
[devices.a10g]
price_per_hour = 1.01   # rented by the hour
network_gbs = 10
slots = 1

[devices.a100]
price_per_hour = 3.67
network_gbs = 10
slots = 1

[ops."text.echo"]
a10g = { fixed_s = 0.2, source = "assumed: test" }
a100 = { fixed_s = 0.05, source = "assumed: test" }
"""

FLOW = """name: echo
inputs: [q]
nodes:
  - {name: say, op: text.echo, inputs: {text: inputs.q}}
outputs: {a: say.text}
"""


def _files(tmp_path: Path, catalogue: str, sla: float = 5.0) -> tuple[Path, Path]:
    (tmp_path / "cat.toml").write_text(catalogue)
    (tmp_path / "echo.yaml").write_text(FLOW)
    (tmp_path / "load.yaml").write_text(
        f"workflows:\n  - {{file: echo.yaml, rate: 2, sla_p95_s: {sla}}}\n"
    )
    return tmp_path / "cat.toml", tmp_path / "load.yaml"


def _plan(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["plan", *args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.output + (res.stderr if res.stderr_bytes is not None else "")


def test_a_device_priced_by_the_hour_is_planned_at_that_price(tmp_path: Path) -> None:
    cat_file, load = _files(tmp_path, RENTED)
    cat = Catalogue.load(cat_file)
    assert cat.devices["a10g"].price_per_hour == pytest.approx(1.01)
    result = plan(load_workload(load, cat.splits), cat)
    # 2/s x 0.2 s = 0.4 busy a10g slots: one a10g ($1.01) beats one a100 ($3.67)
    assert result.workers == {"a10g": 1, "a100": 0} and result.cost_per_hour == pytest.approx(1.01)
    # a stated price adds to a purchase's: $1.01 + capex amortised + power
    both = Catalogue.loads(RENTED.replace("slots = 1\n", "slots = 1\ncapex = 8000\n", 1))
    assert both.devices["a10g"].price_per_hour > 1.01 + 0.2


def test_a_per_unit_device_cannot_have_a_price_per_hour() -> None:
    bad = RENTED.replace("price_per_hour = 1.01", 'pricing = "unit"\nprice_per_hour = 1.01')
    with pytest.raises(ConfigError, match=r"device 'a10g': pricing = 'unit'.*price_per_hour"):
        Catalogue.loads(bad)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        # a misspelt field: named, the one meant suggested, the fields listed
        (
            "slots = 1\n",
            "slot = 1\n",
            "device 'a10g': slot: unknown field (did you mean 'slots'?); the fields are ",
        ),
        ("network_gbs = 10\n", "", "device 'a10g': network_gbs: required, missing"),
        ("price_per_hour = 1.01", "price_per_hour = -1", "price_per_hour = -1: "),
        ("price_per_hour = 1.01", "capex = -100000", "device 'a10g': capex = -100000: "),
        ("slots = 1\n", "slots = 0\n", "device 'a10g': slots = 0: "),
        ("slots = 1\n", 'slots = "2"\n', "device 'a10g': slots = '2': "),
        ("price_per_hour = 1.01", "ceiling = 1.5", "device 'a10g': ceiling = 1.5: "),
        ("price_per_hour = 1.01", "utilisation = 0", "device 'a10g': utilisation = 0: "),
        ("price_per_hour = 1.01", "cv = -1", "device 'a10g': cv = -1: "),
        # an (op, device) rule: its fields too
        (
            'a10g = { fixed_s = 0.2, source = "assumed: test" }',
            "a10g = { fixed_s = 0.2 }",
            '[ops."text.echo".a10g]: source: required, missing; the fields are ',
        ),
        (
            'a10g = { fixed_s = 0.2, source = "assumed: test" }',
            'a10g = { fixed = 0.2, source = "assumed: test" }',
            "fixed: unknown field (did you mean 'fixed_s'?)",
        ),
        (
            'a10g = { fixed_s = 0.2, source = "assumed: test" }',
            'a10g = { fixed_s = -0.2, source = "assumed: test" }',
            '[ops."text.echo".a10g]: fixed_s = -0.2: ',
        ),
    ],
)
def test_catalogue_mistakes_name_the_file_the_device_and_the_field(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    assert old in RENTED
    cat_file, load = _files(tmp_path, RENTED.replace(old, new, 1))
    code, out = _plan(str(load), "--catalogue", str(cat_file))
    flat = " ".join(out.split())
    assert code == 2 and f"{cat_file}: " in flat and message in flat, out
    for raw in ("Traceback", "__init__", "positional argument", "HiGHS", "pydantic"):
        assert raw not in out
    if "unknown field" in message:  # every field a device (or rule) may have is listed
        fields = "price_per_hour" if "device" in message else "per_unit_s"
        assert fields in flat


def test_a_misspelt_op_in_a_price_table_is_refused_not_priced_at_nothing(
    tmp_path: Path,
) -> None:
    per_unit = RENTED.replace(
        "price_per_hour = 3.67",
        'pricing = "unit"\nprice_per_unit = { "text.ecko" = 0.01 }',
    )
    cat_file, load = _files(tmp_path, per_unit)
    code, out = _plan(str(load), "--catalogue", str(cat_file))
    flat = " ".join(out.split())
    assert code == 2, out
    assert (
        "device 'a100': price_per_unit: 'text.ecko' is not an op (did you mean 'text.echo'?)"
        in (flat)
    )
    right = Catalogue.loads(per_unit.replace("text.ecko", "text.echo"))
    assert right.devices["a100"].step_price("text.echo", 1) == pytest.approx(0.01)
    family = Catalogue.loads(per_unit.replace("text.ecko", "text"))  # a family, or any
    assert family.devices["a100"].step_price("text.echo", 1) == pytest.approx(0.01)


@pytest.mark.parametrize("ceiling", ["0", "1.5", "-0.2", "nan"])
def test_a_ceiling_outside_0_to_1_is_refused(tmp_path: Path, ceiling: str) -> None:
    cat_file, load = _files(tmp_path, RENTED)
    code, out = _plan(str(load), "--catalogue", str(cat_file), "--ceiling", ceiling)
    assert code == 2 and "--ceiling" in out and "at most 1" in out, out
    assert "cannot be met" not in out
    code, out = _plan(str(load), "--catalogue", str(cat_file), "--ceiling", "1")
    assert code == 0, out
    with pytest.raises(ConfigError, match="ceiling = 0"):
        cat = Catalogue.load(cat_file)
        plan(load_workload(load, cat.splits), cat, ceiling=0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # a misspelt table would be ignored: its devices missing, silently
        ("[device.b200]\nnetwork_gbs = 1\n", "[device]: unknown table (did you mean [devices]?)"),
        (
            '[split."text.echo"]\nparts = ["a"]\nhandover_bytes_per_unit = 1\n'
            'default_units = 1\nunits_param = "n"\ndefault_param_units = 1\n',
            "[split.\"text.echo\"]: parts = ['a']: ",
        ),
        (
            '[split."text.echo"]\nparts = ["a", "b"]\n',
            '[split."text.echo"]: handover_bytes_per_unit: required, missing',
        ),
        (
            '[devices.h]\nnetwork_gbs = 1\nmeasured = { set = "h200", cls = "gpu", ops = [] }\n',
            "device 'h': measured.set = 'h200': expected one of default, h100",
        ),
        (
            '[devices.h]\nnetwork_gbs = 1\nmeasured = { set = "h100", ops = [] }\n',
            "device 'h': measured: cls: required, missing",
        ),
    ],
)
def test_the_other_tables_are_held_to_their_fields(
    tmp_path: Path, extra: str, message: str
) -> None:
    cat_file, load = _files(tmp_path, RENTED + extra)
    code, out = _plan(str(load), "--catalogue", str(cat_file))
    flat = " ".join(out.split())
    assert code == 2 and f"{cat_file}: " in flat and message in flat, out
    assert "Traceback" not in out and "KeyError" not in out
