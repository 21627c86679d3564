"""General-purpose compute ops: templating, JSON field extraction, simple text and math."""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from typing import Any

import regex as regex_engine

from fleet.sdk import op, time_left

_WORD = re.compile(r"[A-Za-z0-9']+")
_WORDS_TO_IGNORE = (
    "a an and are as at be but by for from has have i if in is it its my of on or our so "
    "that the their this to was we were what when where which who will with you your"
)
_STOPWORDS = frozenset(_WORDS_TO_IGNORE.split())
_CPU_FIRST = ("cpu", "io", "npu-lite", "gpu")

# Representative text for profiling samples (fleet profile).
SAMPLE_TEXT = (
    "Orders placed before 2 pm on a working day leave our warehouse the same day. Standard "
    "shipping takes 3 to 5 working days and costs 4.90; it is free for orders over 50. "
)


class _DottedTemplate(string.Template):
    # ${order.status} reads a field of a JSON value; no attribute access, no code.
    idpattern = r"(?a:[_a-z][_a-z0-9]*(?:\.[_a-z0-9]+)*)"


MAX_TEXT = 4 << 20  # a filled template: what fits in a step's outputs (max_value_bytes)


class _Fields(dict[str, Any]):
    """The template's values; counts what each placeholder adds, so that a small template
    repeating a big value is refused before it grows (400 KB once became 100 MB)."""

    def __init__(self, values: dict[str, Any], budget: int) -> None:
        super().__init__(values)
        self.budget = budget

    def __getitem__(self, key: str) -> Any:
        value = _shown(super().__getitem__(key))  # a dotted key: through __missing__
        self.budget -= len(str(value))
        if self.budget < 0:
            raise ValueError(f"the filled template would be over {MAX_TEXT} characters")
        return value

    def __missing__(self, key: str) -> Any:
        head, _, rest = key.partition(".")
        if rest and head in self:
            found, value = _walk(dict.__getitem__(self, head), rest)
            if found:
                return value
        raise KeyError(key)


def _shown(value: Any) -> Any:
    """A list in a template reads as its items, comma-separated (``refund, broken``), not
    as Python writes a list (``['refund', 'broken']``)."""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return value


@op(
    "text.template",
    classes=_CPU_FIRST,
    outputs=("text",),
    samples=[{"template": "${a} ${b}", "a": 1, "b": "x"}],
)
def template(template: str, strip: bool = False, empty: str = "", **values: Any) -> dict[str, str]:
    """Fill ``${name}`` / ``${name.field}`` placeholders; a missing one is an error.
    ``strip`` removes the spaces an empty value leaves at either end; ``empty`` is the text
    when nothing is left (e.g. what an agent says when it has nothing relevant to quote)."""
    try:
        text = _DottedTemplate(template).substitute(_Fields(values, MAX_TEXT - len(template)))
        text = text.strip() if strip else text
        return {"text": text if text.strip() else (empty or text)}
    except KeyError as exc:
        raise ValueError(f"template needs a value for {exc.args[0]!r}") from None


REGEX_TIMEOUT_S = 2.0


@op("text.regex", classes=_CPU_FIRST, outputs=("match", "found"))
def regex(
    text: str, pattern: str, group: int = 0, default: Any = None, remove: str = ""
) -> dict[str, Any]:
    """The first match of ``pattern`` in ``text`` (``group`` selects a capture group), with
    the characters in ``remove`` taken out of it (e.g. "," from a spoken "1,042")."""
    limit = max(0.01, time_left(REGEX_TIMEOUT_S))
    try:
        # the regex engine, not re: it gives up after `timeout` and releases the GIL while it
        # matches, so a catastrophic pattern neither runs for ever nor freezes a thread-pool
        # worker (its heartbeat went silent for 42 s, and the sweeper re-sent its steps)
        m = regex_engine.search(pattern, text or "", timeout=limit, concurrent=True)
    except regex_engine.error as exc:
        raise ValueError(f"bad pattern {pattern!r}: {exc}") from None
    except TimeoutError:
        raise ValueError(
            f"pattern {pattern!r} did not finish within {limit:g} s on this text "
            "(catastrophic backtracking?)"
        ) from None
    if m is None:
        return {"match": default, "found": False}
    match = m.group(group)
    for ch in remove:
        match = match.replace(ch, "")
    return {"match": match, "found": True}


@op(
    "text.normalize",
    classes=_CPU_FIRST,
    outputs=("text",),
    samples=[{"text": SAMPLE_TEXT}, {"text": SAMPLE_TEXT * 40}],
)
def normalize(text: str, lower: bool = False) -> dict[str, str]:
    """Trim and collapse white space (and optionally lower-case)."""
    out = " ".join(text.split())
    return {"text": out.lower() if lower else out}


@op("text.upper", classes=_CPU_FIRST, outputs=("text",))
def upper(text: str) -> dict[str, str]:
    """Upper-case the text."""
    return {"text": text.upper()}


@op("text.stats", classes=_CPU_FIRST, outputs=("chars", "words", "lines"))
def stats(text: str) -> dict[str, int]:
    """Count characters, words and lines."""
    return {"chars": len(text), "words": len(_WORD.findall(text)), "lines": len(text.splitlines())}


@op(
    "text.keywords",
    classes=_CPU_FIRST,
    outputs=("keywords",),
    samples=[{"text": SAMPLE_TEXT}, {"text": SAMPLE_TEXT * 40}],
)
def keywords(text: str, top: int = 5) -> dict[str, list[str]]:
    """The most frequent non-stopwords, most frequent first (ties by first appearance)."""
    words = [w.lower() for w in _WORD.findall(text)]
    counts = Counter(w for w in words if w not in _STOPWORDS and len(w) > 2)
    return {"keywords": [w for w, _ in counts.most_common(top)]}


@op("text.contains", classes=_CPU_FIRST, outputs=("matched", "found"))
def contains(text: str, words: Any) -> dict[str, Any]:
    """Which of ``words`` (a list, or one word or number) occur in ``text`` (case-insensitive,
    whole words): e.g. whether the order number a tool call names was in what the customer
    said ("1,042" counts as 1042)."""
    present = {w.lower() for w in _WORD.findall(re.sub(r"(?<=\d),(?=\d{3}\b)", "", text or ""))}
    wanted = words if isinstance(words, list) else [words]
    matched = [w for w in wanted if w is not None and str(w).lower() in present]
    return {"matched": matched, "found": bool(matched)}


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"])")


@op("text.sentences", classes=_CPU_FIRST, outputs=("sentences", "count", "origins"))
def sentences(
    text: Any, max_sentences: int = 40, min_chars: int = 12, questions: bool = False
) -> dict[str, Any]:
    """Split a text (or a list of texts) into sentences, without Markdown headings (and
    without questions unless ``questions``): e.g. the candidates an ``llm.generate`` with
    ``choices`` picks from, so that an answer quotes the retrieved documents instead of
    paraphrasing them. ``origins``: for each sentence, the index of the text it came from."""
    texts = text if isinstance(text, list) else [text]
    out: list[str] = []
    origins: list[int] = []
    for index, t in enumerate(texts):
        lines = [x.strip() for x in str(t or "").splitlines() if not x.lstrip().startswith("#")]
        for s in _SENTENCE_END.split(" ".join(x for x in lines if x)):
            s = s.strip().lstrip("- ").strip()
            if len(s) >= min_chars and s not in out and (questions or not s.endswith("?")):
                out.append(s)
                origins.append(index)
    return {
        "sentences": out[:max_sentences],
        "count": len(out[:max_sentences]),
        "origins": origins[:max_sentences],
    }


@op("text.numbers", classes=_CPU_FIRST, outputs=("text",))
def numbers(text: str, language: str = "en") -> dict[str, str]:
    """Spelled-out numbers as digits ("order one thousand forty-three" -> "order 1043"):
    speech-to-text writes numbers in words when prompted to, which it hears more reliably
    than digits; tools and extraction want digits."""
    from text_to_num import alpha2digit  # type: ignore[import-untyped]

    return {"text": alpha2digit(str(text or ""), language)}


@op("text.join", classes=_CPU_FIRST, outputs=("text",))
def join(parts: list[Any], sep: str = "\n") -> dict[str, str]:
    """Join a list of values into one text."""
    return {"text": sep.join(str(p) for p in parts)}


@op("json.parse", classes=_CPU_FIRST, outputs=("value",))
def parse(text: str) -> dict[str, Any]:
    """Parse JSON text."""
    try:
        return {"value": json.loads(text)}
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"not valid JSON: {exc.msg} at line {exc.lineno} col {exc.colno}"
        ) from None


def _walk(value: Any, path: str) -> tuple[bool, Any]:
    for part in [p for p in path.split(".") if p]:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif (
            isinstance(value, list)
            and part.lstrip("-").isdigit()
            and -len(value) <= int(part) < len(value)
        ):
            value = value[int(part)]
        else:
            return False, None
    return True, value


@op("json.extract", classes=_CPU_FIRST, outputs=("value", "found"))
def extract(data: Any, path: str, default: Any = None) -> dict[str, Any]:
    """Pick a field by dotted path (``order.items.0.sku``) from a JSON value or JSON text."""
    if isinstance(data, str):
        data = parse(data)["value"]
    found, value = _walk(data, path)
    return {"value": value if found else default, "found": found}


@op("math.add", classes=_CPU_FIRST, outputs=("result",))
def add(a: float, b: float) -> dict[str, float]:
    """a + b."""
    return {"result": a + b}
