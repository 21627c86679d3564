"""Vector memory on FAISS: build, add, top-k search, fetch by id -- on any host.

An index is an artifact (``fleet.store.artifacts``): ``index.faiss`` plus ``docs.json``,
stored in the fleet's Redis under a content-addressed version, ``latest`` naming the newest.
``memory.index`` returns the version it wrote; ``memory.search`` / ``memory.get`` read the
version they are given (so a workflow reads the index it built) or the latest, fetched once
per host into its cache. No step depends on another host's disk.
"""

from __future__ import annotations

import fnmatch
import io
import json
import re
import tarfile
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from fleet.sdk import BLOB_PREFIX, artifacts, blobs, op, safe_path

KIND = "index"


def _check_docs(documents: Any, vectors: Any) -> list[dict[str, Any]]:
    if not isinstance(documents, list) or not documents:
        raise ValueError("documents must be a non-empty list of {id, text} objects")
    for i, d in enumerate(documents):
        if not isinstance(d, dict) or not d.get("id") or not isinstance(d.get("text"), str):
            raise ValueError(f"documents[{i}] needs an 'id' and a 'text'")
    if not isinstance(vectors, list) or len(vectors) != len(documents):
        raise ValueError(
            f"got {len(vectors) if isinstance(vectors, list) else 0} vectors for "
            f"{len(documents)} documents"
        )
    return documents


@cache
def _load(folder: str) -> tuple[Any, list[dict[str, Any]]]:
    import faiss  # a version's folder never changes: cached by its path

    index = faiss.read_index(str(Path(folder) / "index.faiss"))
    docs = json.loads((Path(folder) / "docs.json").read_text())
    return index, docs


def load_index(name: str, version: str | None = None) -> tuple[str, Any, list[dict[str, Any]]]:
    """(version, index, documents) of index ``name``: ``version``, or the latest."""
    try:
        found, folder = artifacts().fetch(KIND, name, version)
    except KeyError:
        raise KeyError(f"no index named '{name}' (build it with memory.index first)") from None
    index, docs = _load(str(folder))
    return found, index, docs


def _save(name: str, index: Any, docs: list[dict[str, Any]]) -> str:
    import faiss

    data = faiss.serialize_index(index).tobytes()
    return artifacts().put(
        KIND, name, {"index.faiss": data, "docs.json": json.dumps(docs).encode()}
    )


@op("memory.index", kind="memory", classes=("cpu", "io"), outputs=("name", "count", "version"))
def index_documents(
    name: str, documents: list[dict[str, Any]], vectors: list[list[float]], mode: str = "replace"
) -> dict[str, Any]:
    """Build (``mode=replace``) or extend (``mode=add``) a cosine-similarity index."""
    import faiss
    import numpy as np

    docs = _check_docs(documents, vectors)
    matrix = np.asarray(vectors, dtype="float32")
    if mode == "add":
        _, index, existing = load_index(name)
        index = faiss.clone_index(index)
        known = {d["id"] for d in existing}
        dupes = [d["id"] for d in docs if d["id"] in known]
        if dupes:
            raise ValueError(f"document id(s) already in '{name}': {dupes[:5]}")
        docs = existing + docs
    elif mode == "replace":
        index = faiss.IndexFlatIP(matrix.shape[1])
    else:
        raise ValueError(f"mode must be 'replace' or 'add', not {mode!r}")
    if matrix.shape[1] != index.d:
        raise ValueError(f"vectors have dimension {matrix.shape[1]}, index '{name}' has {index.d}")
    index.add(matrix)
    return {"name": name, "count": int(index.ntotal), "version": _save(name, index, docs)}


@op(
    "memory.search",
    kind="memory",
    classes=("cpu", "io"),
    outputs=("hits", "context", "ids", "texts"),
)
def search(
    name: str,
    vector: list[float],
    k: int = 3,
    min_score: float | None = None,
    version: str | None = None,
    text: str | None = None,
    rrf_k: int = 60,
) -> dict[str, Any]:
    """Top-k documents by cosine similarity to ``vector`` (a list of one vector is accepted),
    in index ``version`` (default: the latest). ``context`` joins their texts; ``texts``
    lists them, one per hit.

    Hybrid with ``text`` (the query's words): the documents are also ranked by BM25 on
    ``text`` (``bm25s``, English stop words), and the two rankings are fused by reciprocal
    rank (each document scores the sum of 1 / (``rrf_k`` + its rank) in each ranking it is
    in; a document BM25 finds no query word in is not in BM25's): a document that names what
    the customer said ("lost", "parcel") is found where the embedding alone ranks it low.
    ``min_score`` applies to the cosine similarity (``dense_score`` of each hit)."""
    import numpy as np

    if isinstance(vector, list) and vector and isinstance(vector[0], list):
        vector = vector[0]
    _, index, docs = load_index(name, version)
    query = np.asarray([vector], dtype="float32")
    if query.shape[1] != index.d:
        raise ValueError(f"query has dimension {query.shape[1]}, index '{name}' has {index.d}")
    if not 1 <= rrf_k <= 1000:
        raise ValueError(f"rrf_k must be within 1..1000, got {rrf_k}")
    k = max(1, min(int(k), len(docs)))
    dense: dict[int, float] = {}
    scores, ids = index.search(query, len(docs) if text else k)
    for s, i in zip(scores[0], ids[0], strict=True):
        if i >= 0:
            dense[int(i)] = float(s)
    if text and text.strip():
        score_of = fuse([list(dense), bm25_ranking([d["text"] for d in docs], text)], rrf_k)
        order = list(score_of)[:k]
    else:
        order, score_of = list(dense)[:k], dense
    hits = [
        {**docs[i], "score": round(score_of[i], 4), "dense_score": round(dense.get(i, 0.0), 4)}
        for i in order
        if min_score is None or dense.get(i, -1.0) >= min_score
    ]
    return {
        "hits": hits,
        "context": "\n\n".join(h["text"] for h in hits),
        "ids": [h["id"] for h in hits],
        "texts": [h["text"] for h in hits],
    }


def fuse(rankings: list[list[int]], rrf_k: int = 60) -> dict[int, float]:
    """Reciprocal rank fusion: each item scores the sum of 1 / (``rrf_k`` + its 1-based rank)
    over the rankings it is in; best first (ties: the earlier ranking's order)."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank_, i in enumerate(ranking, 1):
            fused[i] = fused.get(i, 0.0) + 1.0 / (rrf_k + rank_)
    return dict(sorted(fused.items(), key=lambda item: -item[1]))


def bm25_ranking(texts: list[str], query: str) -> list[int]:
    """The indices of ``texts`` that share a word with ``query``, best BM25 score first
    (``bm25s``; English stop words)."""
    import bm25s

    retriever = _bm25(tuple(texts))
    words = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)
    ids, scores = retriever.retrieve(words, k=len(texts), show_progress=False)
    return [int(i) for i, s in zip(ids[0], scores[0], strict=True) if s > 0]


@lru_cache(maxsize=32)
def _bm25(texts: tuple[str, ...]) -> Any:
    """A BM25 index of ``texts`` (an index version's documents never change: kept)."""
    import bm25s

    retriever = bm25s.BM25()
    words = bm25s.tokenize(list(texts), stopwords="en", show_progress=False)
    retriever.index(words, show_progress=False)
    return retriever


@op("memory.rank", kind="memory", classes=("cpu", "io"), outputs=("items", "scores", "text"))
def rank(
    vector: Any,
    vectors: Any,
    items: list[Any],
    k: int = 2,
    away_from: Any = None,
    away_weight: float = 1.0,
    min_score: float | None = None,
    groups: list[Any] | None = None,
    text: str | None = None,
    rrf_k: int = 60,
) -> dict[str, Any]:
    """The ``k`` items whose vectors are most similar (cosine) to ``vector``, best first --
    e.g. the sentences of the retrieved documents that answer a question, to quote them.
    ``text`` joins them (in document order, so that they read as written).

    Relevance, not mere closeness: ``away_from`` (vectors of what every question of a kind
    says, e.g. "where is my order?") is taken out of the query first -- ``away_weight``
    times its projection on their mean direction -- so that what is left is what this
    question asks beyond that, and a sentence close to every order question ("have your
    order number ready") no longer wins; ``min_score`` drops items below it (none may
    remain); ``groups`` (one label per item, e.g. the passage it came from) keeps only items
    of the best item's group. Hybrid with ``text`` (the query's words): the cosine ranking
    is fused with the items' BM25 ranking by reciprocal rank, as in ``memory.search``
    (``min_score`` still applies to the cosine score)."""
    import numpy as np

    matrix, query = _vectors(vectors, items), _query(vector)
    if matrix.shape[1] != query.shape[-1]:
        raise ValueError(f"need vectors of the query's size: {matrix.shape}, query {query.shape}")
    if not 1 <= k <= 100:
        raise ValueError(f"k must be within 1..100, got {k}")
    if away_from is not None and len(away_from):
        away = np.asarray(away_from, dtype="f4").reshape(-1, matrix.shape[1])
        unit = np.mean([a / (np.linalg.norm(a) or 1.0) for a in away], axis=0)
        unit = unit / (np.linalg.norm(unit) or 1.0)
        query = query / (np.linalg.norm(query) or 1.0)
        query = query - away_weight * float(query @ unit) * unit
    scores = _cosine(matrix, query)
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    if text and text.strip():
        order = list(fuse([order, bm25_ranking([str(x) for x in items], text)], rrf_k))
    best = order[:k]
    if min_score is not None:
        best = [i for i in best if scores[i] >= min_score]
    if groups is not None:
        if len(groups) != len(items):
            raise ValueError(f"need one group per item: {len(items)} items, {len(groups)} groups")
        best = [i for i in best if groups[i] == groups[best[0]]]
    return {
        "items": [items[i] for i in best],
        "scores": [round(float(scores[i]), 4) for i in best],
        "text": " ".join(str(items[i]) for i in sorted(best)),
    }


def _query(vector: Any) -> Any:
    import numpy as np

    return np.asarray(vector[0] if vector and isinstance(vector[0], list) else vector, "f4")


def _vectors(vectors: Any, items: list[Any]) -> Any:
    import numpy as np

    matrix = np.asarray(vectors, dtype="f4")
    if matrix.ndim != 2 or len(matrix) != len(items):
        raise ValueError(f"need one vector per item: {len(items)} items, vectors {matrix.shape}")
    return matrix


def _cosine(matrix: Any, query: Any) -> Any:
    import numpy as np

    norms = np.linalg.norm(matrix, axis=1) * (np.linalg.norm(query) or 1.0)
    return matrix @ query / np.where(norms == 0, 1.0, norms)


@op("memory.get", kind="memory", classes=("cpu", "io"), outputs=("document",))
def get_document(name: str, doc_id: str, version: str | None = None) -> dict[str, Any]:
    """Fetch one stored document by id."""
    _, _, docs = load_index(name, version)
    for d in docs:
        if d["id"] == doc_id:
            return {"document": d}
    raise KeyError(f"index '{name}' has no document with id {doc_id!r}")


def _chunks(text: str, size: int) -> list[str]:
    """Split on blank lines, packing paragraphs into chunks of about ``size`` characters."""
    out: list[str] = []
    for para in [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]:
        if out and len(out[-1]) + len(para) + 2 <= size:
            out[-1] += "\n\n" + para
        else:
            out.append(para)
    return out


@op("memory.load_docs", kind="memory", classes=("io", "cpu"), outputs=("documents", "texts"))
def load_docs(path: str, chunk_chars: int = 800, pattern: str = "*.md") -> dict[str, Any]:
    """Chunk text files into documents ``{id, title, text}``. ``path`` is a folder the client
    uploaded (``Fleet.upload(folder)``: a ``tar`` blob reference), or a folder on the worker
    under the file roots."""
    if "/" in pattern or "\\" in pattern or ".." in pattern:
        raise ValueError(f"pattern {pattern!r} must name files in the folder, not a path")
    files = _uploaded(path, pattern) if path.startswith(BLOB_PREFIX) else _on_disk(path, pattern)
    docs = []
    for stem, text in files:
        title = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.strip()), stem)
        for i, chunk in enumerate(_chunks(text, chunk_chars)):
            docs.append({"id": f"{stem}#{i}", "title": title, "text": chunk})
    if not docs:
        raise ValueError(f"no documents matching {pattern} in {path}")
    return {"documents": docs, "texts": [d["text"] for d in docs]}


def _uploaded(ref: str, pattern: str) -> list[tuple[str, str]]:
    with tarfile.open(fileobj=io.BytesIO(blobs().get(ref)), mode="r:") as tar:
        members = sorted(tar.getmembers(), key=lambda m: m.name)
        found = []
        for m in members:  # regular files by their base name only: nothing is extracted
            if m.isfile() and "/" not in m.name and fnmatch.fnmatchcase(m.name, pattern):
                data = tar.extractfile(m)
                if data is not None:
                    found.append((Path(m.name).stem, data.read().decode("utf-8", "replace")))
        return found


def _on_disk(path: str, pattern: str) -> list[tuple[str, str]]:
    root = safe_path(path, "documents folder")
    if not root.is_dir():
        raise FileNotFoundError(f"documents folder {root} does not exist")
    found = []
    for file in sorted(root.glob(pattern)):
        file = safe_path(file, "document")  # a symlink in the folder may point anywhere
        if file.is_file():
            found.append((file.stem, file.read_text()))
    return found
