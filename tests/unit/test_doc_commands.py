"""Every shell block of README.md and docs/operations.md says what runs it (issue 44): a
`<!-- commands: run by tests/...py::test_name -->` line naming tests that exist, or
`<!-- commands: needs ... -->` saying what it takes that a test host lacks (a GPU, a
cluster, hosts of your own). A new block without one fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "docs/operations.md"]
BLOCK = re.compile(r"(?:<!-- commands: (.*?) -->\n)?```(?:bash|sh|shell|console)\n", re.S)
CITED = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def _blocks() -> list[tuple[str, int, str | None]]:
    found = []
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        for m in BLOCK.finditer(text):
            found.append((doc, text[: m.start()].count("\n") + 1, m.group(1)))
    return found


def test_there_are_blocks() -> None:
    assert len(_blocks()) >= 10


@pytest.mark.parametrize(("doc", "line", "note"), _blocks(), ids=lambda v: str(v)[:30])
def test_each_shell_block_says_what_runs_it(doc: str, line: int, note: str | None) -> None:
    assert note, f"{doc}:{line}: a shell block without <!-- commands: run by ... | needs ... -->"
    assert note.startswith(("run by ", "needs ")), f"{doc}:{line}: {note}"
    cited = CITED.findall(note)
    if note.startswith("run by "):
        assert cited, f"{doc}:{line}: 'run by' names no tests/...py::test"
    for path, name in cited:
        source = ROOT / path
        assert source.is_file(), f"{doc}:{line}: {path} does not exist"
        assert re.search(rf"^def {name}\(", source.read_text(), re.M), f"{doc}:{line}: {name}"
