"""The docs are part of the product: every Python snippet in README.md and docs/ is a file
under docs/examples/ (run by tests/integration/test_docs_examples.py), shown word for word;
every packaged example workflow validates; nothing cites a file outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from fleet.config import load_config
from fleet.paths import EXAMPLES
from fleet.sdk.registry import registry
from fleet.workflow.loader import load_workflow, spec_from_data
from fleet.workflow.validate import validate

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SNIPPET = re.compile(r"(?:<!-- (docs/examples/\S+\.py) -->\n)?```python\n(.*?)```", re.S)


def _snippets() -> list[tuple[str, str | None, str]]:
    found = []
    for doc in DOCS:
        for source, body in SNIPPET.findall(doc.read_text()):
            found.append((doc.relative_to(ROOT).as_posix(), source or None, body))
    return found


def test_there_are_snippets() -> None:
    assert len(_snippets()) >= 3


@pytest.mark.parametrize("doc, source, body", _snippets(), ids=lambda v: str(v)[:40])
def test_each_python_snippet_mirrors_a_file_in_docs_examples(
    doc: str, source: str | None, body: str
) -> None:
    assert source, f"{doc}: a ```python block without its <!-- docs/examples/NAME.py --> line"
    assert (ROOT / source).is_file(), f"{doc}: {source} does not exist"
    assert body == (ROOT / source).read_text(), f"{doc}: the block differs from {source}"


def test_every_example_file_is_shown_in_the_docs() -> None:
    shown = {source for _, source, _ in _snippets()}
    files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs" / "examples").glob("*.py")}
    assert files == shown


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_each_packaged_example_workflow_validates(path: Path) -> None:
    cfg = load_config(env={})
    registry.load(cfg.op_modules, cfg.op_plugins)
    validate(load_workflow(path), cfg, registry)


def test_nothing_cites_a_file_outside_the_repository() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    pattern = re.compile(r"\.\./shared|DESIGN\.md")
    hits = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in {".png", ".gguf"} or not path.is_file() or name == __file__:
            continue
        text = path.read_text(errors="replace")
        if path.resolve() != Path(__file__).resolve() and pattern.search(text):
            hits.append(name)
    assert hits == []


def test_each_workflow_file_the_docs_show_validates() -> None:

    cfg = load_config(env={})
    registry.load(cfg.op_modules, cfg.op_plugins)
    shown = [
        block
        for doc in DOCS
        for block in re.findall(r"```ya?ml\n(.*?)```", doc.read_text(), re.S)
        if "\nnodes:" in block
    ]
    assert shown
    for block in shown:
        validate(spec_from_data(yaml.safe_load(block), "docs"), cfg, registry)


def test_the_readme_lists_every_environment_variable_the_config_reads() -> None:
    source = (ROOT / "fleet" / "config.py").read_text()
    read = set(re.findall(r'"(FLEET_[A-Z_]+)"', source)) - {"FLEET_CLASS_"}
    readme = (ROOT / "README.md").read_text()
    assert read and sorted(v for v in read if f"`{v}`" not in readme) == []


def test_every_test_the_reliability_tables_cite_exists() -> None:
    """docs/reliability.md points at the test that proves each line: the file (and the test
    function, when named) must exist, and nothing but a test may be cited there."""
    text = (ROOT / "docs" / "reliability.md").read_text()
    cited = re.findall(r"`((?:unit|integration)/[\w/]+\.py)(?:::(\w+))?`", text)
    assert len(cited) > 20
    missing = []
    for path, name in cited:
        source = ROOT / "tests" / path
        if not source.is_file():
            missing.append(path)
        elif name and not re.search(rf"^def {name}\(", source.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert missing == []
    rows = [line for line in text.splitlines() if line.startswith("|") and "---" not in line]
    last_cells = [row.rstrip(" |").rsplit("|", 1)[-1] for row in rows[1:]]
    not_tests = [c.strip() for c in last_cells if "`fleet/" in c and "test" not in c]
    assert not_tests == []


def test_a_subprocess_timeout_is_not_cut_short_by_the_test_timeout() -> None:
    """pytest-timeout kills a test at the configured 300 s: a test that gives a subprocess
    longer must raise its own limit above that (else the subprocess timeout is a fiction).
    A helper's timeout needs a test in its file with a limit above it."""
    default = 300
    short = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        text = path.read_text()
        limits = [int(n) for n in re.findall(r"mark\.timeout\((\d+)\)", text)]
        for match in re.finditer(r"timeout=(\d+)", text):
            seconds = int(match.group(1))
            if seconds <= default:
                continue
            head = text[: match.start()]
            start = head.rfind("\ndef ")
            if head[start:].startswith("\ndef test_"):
                decorators = head[head.rfind("\n\n", 0, max(0, start)) : start]
                marks = [int(n) for n in re.findall(r"mark\.timeout\((\d+)\)", decorators)]
            else:
                marks = limits
            if not any(limit > seconds for limit in marks):
                short.append(f"{path.name}: timeout={seconds}")
    assert short == []
