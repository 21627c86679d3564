"""The op SDK's file guard: ops read and write only under the file roots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleet.sdk.process import EXAMPLES, data_dir, safe_path
from workers.ops.db import db_query
from workers.ops.memory import load_docs
from workers.ops.speech import load_audio, tts


@pytest.mark.parametrize("path", ["/etc/passwd", "/proc/self/environ", "/etc/shadow", "/"])
def test_paths_outside_the_roots_are_refused(path: str) -> None:
    with pytest.raises(PermissionError, match="outside the folders ops may use"):
        safe_path(path)


def test_dot_dot_and_symlinks_are_judged_by_where_they_lead(tmp_path: Path) -> None:
    inside = data_dir("guard")
    assert safe_path(inside / "sub" / ".." / "x.txt") == inside / "x.txt"
    with pytest.raises(PermissionError):
        safe_path(f"{inside}/../../../../etc/passwd")
    link = inside / "out"
    if not link.is_symlink():
        link.symlink_to("/etc")
    with pytest.raises(PermissionError):
        safe_path(link / "passwd")
    assert safe_path(EXAMPLES / "kb" / "faq.md").is_file()  # the packaged samples are readable


def test_file_reading_ops_refuse_the_attacks_that_used_to_work() -> None:
    with pytest.raises(PermissionError):
        load_docs("/etc", pattern="passwd")
    with pytest.raises(PermissionError):
        load_docs("/proc/self", pattern="environ")
    with pytest.raises(ValueError, match="must name files in the folder"):
        load_docs(str(EXAMPLES / "kb"), pattern="../../*.py")
    with pytest.raises(PermissionError):
        load_audio("/etc/shadow")
    with pytest.raises(PermissionError):
        db_query("SELECT 1", "/etc/passwd")
    with pytest.raises(PermissionError):
        tts("hello", out=os.path.expanduser("~/.bashrc"))


def test_cuda_detection_imports_no_framework() -> None:
    """On a CPU machine (and on a GPU host) asking whether CUDA is there loads neither torch
    nor llama.cpp: a CUDA build of each in one process crash one another."""
    import subprocess
    import sys

    probe = (
        "import sys; from fleet.sdk.process import cuda_available, wants_cuda; "
        "from fleet.sdk.devices import detect_gpus; "
        "r = detect_gpus(); cuda_available(); wants_cuda(); "
        "print(sorted(m for m in ('torch', 'llama_cpp', 'ctranslate2') if m in sys.modules)); "
        "print(len(r.gpus), bool(r.note or r.gpus))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1].endswith("True")  # a GPU count, or the reason there is none


def test_the_sweeper_picks_only_old_messages_nobody_holds() -> None:
    import json

    from workers.sweeper import stranded

    def message(task_id: str) -> str:
        return json.dumps([{"headers": {"id": task_id}, "body": ""}, "", "cpu"])

    unacked = {"t1": message("held"), "t2": message("orphan"), "t3": message("fresh"), "t4": "x"}
    index = [("t1", 10.0), ("t2", 10.0), ("t3", 99.0), ("t4", 10.0)]
    assert stranded(unacked, index, {"held"}, older_than=50.0) == ["t2"]


@pytest.mark.usefixtures("redis_url")  # the spoken audio also goes to the blob store
def test_tts_never_writes_into_the_package_or_the_caches() -> None:
    """speech.tts out= used to overwrite a packaged knowledge-base file (and could overwrite
    cached models and artifacts): readable places are not all writable ones."""
    faq = EXAMPLES / "kb" / "faq.md"
    before = faq.read_bytes()
    for target in (faq, data_dir("models") / "x.gguf", data_dir("artifacts") / "x"):
        with pytest.raises(PermissionError, match="may read but not write"):
            tts("hello", out=str(target))
    assert faq.read_bytes() == before
    answer = data_dir("answers") / "a.wav"
    tts("hello", out=str(answer))
    assert answer.read_bytes()[:4] == b"RIFF"
