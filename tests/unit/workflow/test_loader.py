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
