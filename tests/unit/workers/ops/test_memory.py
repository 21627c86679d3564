"""FAISS memory ops with real indexes on disk (random vectors; no embedding model needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workers.ops.memory import get_document, index_documents, load_docs, search

pytestmark = pytest.mark.usefixtures("redis_url")  # indexes live in the artifact store

EXAMPLES = Path(__file__).resolve().parents[4] / "fleet" / "examples"


def _unit(rows: int, dim: int = 16, seed: int = 0) -> list[list[float]]:
    v = np.random.default_rng(seed).standard_normal((rows, dim)).astype("float32")
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).tolist()


def test_build_search_get_add() -> None:
    docs = [{"id": f"d{i}", "text": f"text {i}"} for i in range(5)]
    vecs = _unit(5)
    out = index_documents("t-mem", docs, vecs)
    assert out["count"] == 5 and len(out["version"]) == 16
    hits = search("t-mem", vecs[3], k=2)
    assert hits["ids"][0] == "d3" and hits["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert len(hits["ids"]) == 2 and "text 3" in hits["context"]
    assert get_document("t-mem", "d1")["document"]["text"] == "text 1"
    more = index_documents("t-mem", [{"id": "d9", "text": "new"}], _unit(1, seed=9), mode="add")
    assert more["count"] == 6
    assert search("t-mem", _unit(1, seed=9)[0], k=1)["ids"] == ["d9"]  # reloaded after the write


def test_bad_input_names_the_problem() -> None:
    index_documents("t-bad", [{"id": "a", "text": "x"}], _unit(1))
    with pytest.raises(KeyError, match="no document with id 'zzz'"):
        get_document("t-bad", "zzz")
    with pytest.raises(KeyError, match="no index named 'nope'"):
        search("nope", _unit(1)[0])
    with pytest.raises(ValueError, match="dimension 8, index 't-bad' has 16"):
        search("t-bad", _unit(1, dim=8)[0])
    with pytest.raises(ValueError, match="got 2 vectors for 1 documents"):
        index_documents("t-bad", [{"id": "a", "text": "x"}], _unit(2))
    with pytest.raises(ValueError, match="already in 't-bad'"):
        index_documents("t-bad", [{"id": "a", "text": "x"}], _unit(1), mode="add")
    with pytest.raises(ValueError, match=r"name '\.\./etc'"):
        search("../etc", _unit(1)[0])


def test_load_docs_chunks_the_knowledge_base() -> None:
    out = load_docs(str(EXAMPLES / "kb"), chunk_chars=400)
    ids = [d["id"] for d in out["documents"]]
    assert "returns#0" in ids and len(ids) > 4
    assert all(len(d["text"]) <= 400 or "\n\n" not in d["text"] for d in out["documents"])
    assert out["texts"] == [d["text"] for d in out["documents"]]
    with pytest.raises(PermissionError):
        load_docs("/no/such/folder")  # outside the file roots: not even looked at
    with pytest.raises(FileNotFoundError):
        load_docs(str(EXAMPLES / "no-such-folder"))


def test_an_index_is_read_on_another_host_and_by_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet.sdk import process as sdk
    from workers.ops import memory

    docs = [{"id": f"d{i}", "text": f"text {i}"} for i in range(3)]
    first = index_documents("t-hosts", docs, _unit(3))["version"]
    second = index_documents(
        "t-hosts", [{"id": "d9", "text": "new"}], _unit(1, seed=9), mode="add"
    )["version"]
    assert first != second
    # "host B": the same fleet (Redis), its own empty disk
    store = sdk.artifacts()
    other = sdk.ArtifactStore(store.client, tmp_path / "host-b", store.ttl)
    monkeypatch.setattr(memory, "artifacts", lambda: other)
    assert search("t-hosts", _unit(1, seed=9)[0], k=1)["ids"] == ["d9"]  # the latest
    old = search("t-hosts", _unit(1, seed=9)[0], k=5, version=first)["ids"]
    assert "d9" not in old and len(old) == 3  # the version a workflow built, not a newer one
    cached = tmp_path / "host-b" / "index" / "t-hosts"
    assert sorted(p.name for p in cached.iterdir() if p.is_dir()) == sorted([first, second])
    assert (cached / "LATEST").read_text() == second  # a version fetched by name stays put
