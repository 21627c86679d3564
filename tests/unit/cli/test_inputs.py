"""`fleet submit -i key=value`: how a value is read, and a file that is not text."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from fleet.cli.common import parse_inputs


def test_values_are_json_text_or_a_file(tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("héllo\n", encoding="utf-8")
    values, _ = parse_inputs(("n=3", "words=[1, 2]", "t=plain text", f"f=@{note}"), None)
    assert values == {"n": 3, "words": [1, 2], "t": "plain text", "f": "héllo\n"}


def test_a_file_that_is_not_utf8_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    blob = tmp_path / "q.wav"
    blob.write_bytes(b"RIFF\xff\xfe\x00\x80")
    with pytest.raises(click.BadParameter, match=f"cannot read {blob} as UTF-8 text"):
        parse_inputs((f"audio=@{blob}",), None)
    with pytest.raises(click.BadParameter, match="'oops' is not key=value"):
        parse_inputs(("oops",), None)
