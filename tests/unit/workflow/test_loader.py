from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet.errors import WorkflowValidationError
from fleet.workflow.loader import load_workflow

GOOD = """\
name: demo
inputs: [text]
nodes:
  - name: clean
    op: text.normalize
    inputs: {text: inputs.text}
  - name: up
    op: text.upper
    when: "clean.text != ''"
    inputs: {text: clean.text}
outputs:
  out: [up.text, clean.text]
"""


def test_yaml_loads_with_lines_and_conditions(tmp_path: Path) -> None:
    f = tmp_path / "w.yaml"
    f.write_text(GOOD)
    spec = load_workflow(f)
    assert spec.name == "demo" and spec.source == str(f)
    assert [n.line for n in spec.nodes] == [4, 7]
    assert spec.node("up").when is not None and spec.node("up").when.op == "!="
    assert spec.outputs["out"] == ["up.text", "clean.text"]


def test_json_loads(tmp_path: Path) -> None:
    f = tmp_path / "w.json"
    f.write_text(json.dumps({"name": "j", "nodes": [{"name": "a", "op": "test.echo"}]}))
    assert load_workflow(f).nodes[0].name == "a"


def test_schema_errors_name_node_field_and_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(GOOD.replace("    when:", "    wen:"))
    with pytest.raises(WorkflowValidationError) as info:
        load_workflow(f)
    text = str(info.value)
    assert f"{f}:7: node 'up': field 'wen': unknown field" in text


def test_syntax_errors_give_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\nnodes:\n  - name: [unclosed\n")
    with pytest.raises(WorkflowValidationError, match=r"bad.yaml:\d+: invalid YAML"):
        load_workflow(f)


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    f = tmp_path / "dup.yaml"
    f.write_text("name: x\nname: y\n")
    with pytest.raises(WorkflowValidationError, match="duplicate key 'name'"):
        load_workflow(f)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WorkflowValidationError, match="cannot read file"):
        load_workflow(tmp_path / "nope.yaml")


def _bomb(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "name: bomb\nparams:\n" + "\n".join("  " + line for line in lines) + "\nnodes: []\n"


def test_an_alias_bomb_is_measured_not_built(tmp_path: Path) -> None:
    import resource

    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb(9))  # ~700 bytes; 9**9 = 387 million values once expanded
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(WorkflowValidationError, match="values once aliases are expanded"):
        load_workflow(path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 50


def test_deep_nesting_and_big_files_are_clear_errors(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text('{"name": "deep", "defaults": {"x": ' + "[" * 5000 + "]" * 5000 + "}}")
    with pytest.raises(WorkflowValidationError, match="nested deeper than 64 levels"):
        load_workflow(deep)
    big = tmp_path / "big.yaml"
    big.write_text("name: big\ndescription: " + "x" * (2 << 20) + "\n")
    with pytest.raises(WorkflowValidationError, match="larger than"):
        load_workflow(big)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(WorkflowValidationError, match="cannot read file"):
        load_workflow(binary)


def test_input_errors_name_file_and_line(tmp_path: Path) -> None:
    from fleet.workflow.loader import load_inputs
    from fleet.workflow.validate import check_inputs

    wf = tmp_path / "wf.yaml"
    wf.write_text(
        "name: needs\n"
        "description: two inputs\n"
        "inputs: [ticket, lang]\n"
        "nodes:\n  - {name: a, op: text.upper, inputs: {text: inputs.ticket}}\n"
    )
    spec = load_workflow(wf)
    given = tmp_path / "inputs.json"
    given.write_text('{\n  "ticket": "hi",\n  "langu": "en"\n}\n')
    values, lines = load_inputs(given)
    assert values == {"ticket": "hi", "langu": "en"} and lines == {"ticket": 2, "langu": 3}
    with pytest.raises(WorkflowValidationError) as info:
        check_inputs(spec, values, str(given), lines)
    text = str(info.value)
    assert f"{wf}:3: missing workflow input 'lang'" in text  # the workflow's inputs: line
    assert f"{given}:3: unknown workflow input 'langu'" in text  # the key in the inputs file
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "ticket": "hi",\n  "lang" "en"\n}\n')
    with pytest.raises(WorkflowValidationError, match=rf"{bad}:3"):
        load_inputs(bad)


def test_a_complex_key_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "complex.yaml"
    f.write_text("name: w\n? [a, b]\n: 1\nnodes: []\n")
    with pytest.raises(WorkflowValidationError, match=r"complex.yaml:2: .*a key must be a name"):
        load_workflow(f)


def test_an_alias_bomb_in_a_runs_inputs_file_is_refused_before_it_grows(tmp_path: Path) -> None:
    """`fleet submit --inputs-json` of a 700-byte YAML bomb grew the client to 2.5 GB when the
    inputs were serialised; now it is measured, not built, and refused naming the file."""
    from fleet.workflow.loader import load_inputs

    path = tmp_path / "inputs.yaml"
    path.write_text(_bomb(9).replace("name: bomb\nparams:\n", "").replace("\nnodes: []\n", "\n"))
    with pytest.raises(WorkflowValidationError, match=r"inputs.yaml: more than 1000000 values"):
        load_inputs(path)
