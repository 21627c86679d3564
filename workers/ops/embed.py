"""Sentence embeddings (all-MiniLM-L6-v2, offline from PyPI), batched."""

from __future__ import annotations

from typing import Any

from fleet.sdk import op
from workers.ops.general import SAMPLE_TEXT
from workers.ops.models import DEFAULT_EMBEDDER, LOADS, TORCH, device_lock, embedder

MAX_TEXTS = 10_000


def _texts(texts: Any) -> list[str]:
    items = [texts] if isinstance(texts, str) else texts
    if not isinstance(items, list) or not items:
        raise ValueError("texts must be a non-empty string or list of strings")
    if len(items) > MAX_TEXTS:
        raise ValueError(f"{len(items)} texts is more than the {MAX_TEXTS} one step may embed")
    bad = [i for i, t in enumerate(items) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(f"texts[{bad[0]}] is empty or not a string")
    return items


@op(
    "embed.texts",
    kind="model",
    classes=("npu-lite", "gpu", "cpu"),
    outputs=("vectors", "dim", "count", "loads"),
    runtime=TORCH,
    units=lambda a: float(len(a["texts"])) if isinstance(a.get("texts"), list) else 1.0,
    unit="text",
    samples=[{"texts": [SAMPLE_TEXT] * 2}, {"texts": [SAMPLE_TEXT] * 16}],
)
def embed_texts(texts: Any, batch_size: int = 32, model: str = DEFAULT_EMBEDDER) -> dict[str, Any]:
    """Embed one text or a list of texts into unit-length vectors."""
    items = _texts(texts)
    encoder = embedder(model)
    with device_lock():
        vectors = encoder.encode(
            items, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
        )
    return {
        "vectors": [[round(float(x), 6) for x in row] for row in vectors],
        "dim": int(vectors.shape[1]),
        "count": len(items),
        "loads": LOADS[f"embed:{model}"],
    }
