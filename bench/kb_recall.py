"""Retrieval on the shipped questions, dense against hybrid (docs/quality.md, round 5).

The example knowledge base is chunked as ``kb_build.yaml`` chunks it (700 characters) and
embedded with the agent's all-MiniLM-L6-v2; each shipped question with a source document is
the query, as spoken (or, with ``--heard``, as the agent heard it in a saved
``fleet eval --json``). Per question: the rank of the first chunk of its source document by
cosine similarity alone (dense, the agent before round 5), by BM25 alone, and by the two
fused by reciprocal rank (``memory.search`` with ``text``); recall@k is the share of
questions whose source is among the first k. Then the agent's quote choice from the first 3
chunks of dense or hybrid retrieval (``text.sentences``, ``memory.rank`` with the agent's
away-from directions, k 2, min_score 0.3, one passage), and with ``memory.rank`` hybrid too
(``text``): the share of questions whose quote is from the source only and holds an expected
phrase. The held-out set is not read here.

    python bench/kb_recall.py [--heard eval.json] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the quote choice: (name, the retrieval its passages come from, memory.rank with text)
QUOTES = (
    ("quote_dense", "dense", False),
    ("quote_hybrid_search", "hybrid", False),
    ("quote_hybrid_both", "hybrid", True),
)
LOST_PARCEL = ("b03", "k18")  # the lost-parcel questions of the shipped set
ORDER_QUESTIONS = [
    "Where is my order 1234?",
    "What is the status of my order?",
    "Can you check my order for me?",
]


def chunks() -> list[dict[str, str]]:
    from fleet.paths import EXAMPLES
    from workers.ops.memory import _chunks

    return [
        {"id": f"{f.stem}#{i}", "text": c}
        for f in sorted((EXAMPLES / "kb").glob("*.md"))
        for i, c in enumerate(_chunks(f.read_text(), 700))
    ]


def measure(heard: dict[str, str]) -> dict[str, Any]:
    import numpy as np

    from fleet.evaluation.questions import load_questions
    from fleet.evaluation.scoring import has_expected, knowledge_base, quoted_documents
    from workers.ops.general import sentences
    from workers.ops.memory import bm25_ranking, fuse, rank
    from workers.ops.models import embedder

    docs = chunks()
    model = embedder()

    def embed(texts: list[str]) -> Any:
        return model.encode(texts, normalize_embeddings=True, show_progress_bar=False)

    matrix, away = embed([d["text"] for d in docs]), embed(ORDER_QUESTIONS).tolist()
    kb = knowledge_base()
    rows = []
    for q in load_questions("shipped"):
        if q.source is None:
            continue
        text = heard.get(q.id, q.text)
        vector = embed([text])[0]
        dense = [int(i) for i in np.argsort(-(matrix @ vector), kind="stable")]
        lexical = bm25_ranking([d["text"] for d in docs], text)
        rankings = {"dense": dense, "bm25": lexical, "hybrid": list(fuse([dense, lexical]))}
        row: dict[str, Any] = {"id": q.id, "query": text, "source": q.source}
        for name, order in rankings.items():
            ranks = [r for r, i in enumerate(order, 1) if docs[i]["id"].startswith(q.source + "#")]
            row[name] = ranks[0] if ranks else None
        for name, search, hybrid in QUOTES:
            top = [docs[i]["text"] for i in rankings[search][:3]]
            cand = sentences(top)
            chosen = rank(
                vector.tolist(),
                embed(cand["sentences"]).tolist(),
                cand["sentences"],
                k=2,
                away_from=away,
                min_score=0.3,
                groups=cand["origins"],
                text=text if hybrid else None,
            )["text"]
            quoted = quoted_documents(chosen, kb)
            ok = bool(quoted) and set(quoted) == {q.source} and has_expected(chosen, q.expect)
            row[name] = ok
            row[name + "_text"] = chosen
        rows.append(row)
    summary: dict[str, Any] = {"questions": len(rows)}
    for name in ("dense", "bm25", "hybrid"):
        for k in (1, 2, 3):
            hits = [r[name] is not None and r[name] <= k for r in rows]
            summary[f"{name}_recall@{k}"] = round(sum(hits) / len(hits), 3)
    for name, _, _ in QUOTES:
        summary[name] = round(sum(r[name] for r in rows) / len(rows), 3)
    summary["lost_parcel"] = [r for r in rows if r["id"] in LOST_PARCEL]
    summary["changed"] = [
        {k: r[k] for k in ("id", "query", "dense", "hybrid", *(n for n, _, _ in QUOTES))}
        for r in rows
        if r["dense"] != r["hybrid"] or len({r[n] for n, _, _ in QUOTES}) > 1
    ]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heard", type=Path, help="a shipped fleet eval --json: its transcripts")
    parser.add_argument("--json", action="store_true", help="print everything as JSON")
    args = parser.parse_args()
    heard: dict[str, str] = {}
    if args.heard:
        verdicts = json.loads(args.heard.read_text())["verdicts"]
        heard = {v["id"]: v["heard"] for v in verdicts if v["heard"]}
    result = measure(heard)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for key, value in result.items():
        if not isinstance(value, list):
            print(f"{key:22s} {value}")
    for row in result["lost_parcel"] + result["changed"]:
        print(re.sub(r"\s+", " ", json.dumps(row))[:400])


if __name__ == "__main__":
    main()
