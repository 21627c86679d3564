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


def test_hybrid_search_fuses_bm25_with_the_embedding() -> None:
    """With ``text``, a document that names the customer's words is found though the
    embedding ranks it last; without, the dense ranking is as before."""
    from workers.ops.memory import bm25_ranking, fuse

    docs = [
        {"id": "faq#0", "text": "After it ships, the carrier can redirect the parcel."},
        {"id": "returns#0", "text": "You can return any item within 30 days."},
        {"id": "shipping#0", "text": "If it is lost, we trace the parcel and send a replacement."},
    ]
    vecs = _unit(3, seed=3)
    index_documents("t-hybrid", docs, vecs)
    query = vecs[1]  # the embedding alone: returns first
    dense = search("t-hybrid", query, k=3)["ids"]
    assert dense[0] == "returns#0" and search("t-hybrid", query, k=3, text="  ")["ids"] == dense
    assert bm25_ranking([d["text"] for d in docs], "What if my parcel is lost?") == [2, 0]
    hybrid = search("t-hybrid", query, k=3, text="What if my parcel is lost?")
    ranks = {i: dense.index(d["id"]) + 1 for i, d in enumerate(docs)}
    expected = fuse([sorted(ranks, key=ranks.__getitem__), [2, 0]])
    assert hybrid["ids"] == [docs[i]["id"] for i in expected]
    assert hybrid["ids"][0] == "shipping#0"  # BM25 first, dense not last: 1/61 + 1/63 wins
    assert hybrid["hits"][0]["score"] == pytest.approx(round(expected[2], 4))
    assert {"dense_score", "score"} <= set(hybrid["hits"][0])
    # min_score is on the cosine similarity; a word no document has changes nothing
    assert search("t-hybrid", query, k=3, text="zzz")["ids"] == dense
    assert search("t-hybrid", query, k=3, text="parcel", min_score=0.99)["ids"] == ["returns#0"]
    with pytest.raises(ValueError, match="rrf_k must be within"):
        search("t-hybrid", query, text="lost", rrf_k=0)


def test_reciprocal_rank_fusion() -> None:
    from workers.ops.memory import fuse

    fused = fuse([[0, 1, 2], [2, 1]], rrf_k=60)
    assert list(fused) == [2, 1, 0]  # in both rankings beats first in one only
    assert fused[2] == pytest.approx(1 / 63 + 1 / 61) and fused[0] == pytest.approx(1 / 61)
    assert list(fuse([[3, 4], []])) == [3, 4]
