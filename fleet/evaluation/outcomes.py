"""The three outcomes of an answer, as a customer meets it.

- **right**: every answer check passes (:data:`fleet.evaluation.scoring.ANSWER_CHECKS`);
- **asked back**: not right, but the agent asked the customer instead of answering what it
  did not hear or cannot tell -- to say the question again, for the order number (on a
  question about an order), or handed over to a colleague -- and said nothing false:
  acceptable, not right;
- **wrong**: everything else -- a false fact (a wrong status, facts about an order the
  customer did not name, a lookup nobody asked for), an irrelevant quote, an unnecessary
  question (an order number asked for on a question that names no order), or an answer that
  is simply not the answer.

Pure functions of a finished verdict, so a saved ``fleet eval --json`` can be scored again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal, Protocol

from fleet.evaluation.questions import Question


class Judged(Protocol):
    """What an outcome is decided from: a verdict (fleet.evaluation.scoring.Verdict)."""

    answer: str
    answer_ok: bool
    tool_used: bool
    order_ok: bool | None
    error: str | None

    @property
    def checks(self) -> Mapping[str, bool | None]: ...


Outcome = Literal["right", "asked_back", "wrong"]
OUTCOMES: tuple[Outcome, ...] = ("right", "asked_back", "wrong")

# How the agent asks back (docs/quality.md lists its sentences); matched on the lower case
# answer. "Could you tell me the number again?" asks for an order number.
_ASKS = {
    "repeat": re.compile(r"\b(could|can|would) you (please )?(say|repeat)\b[^.?!]*\?"),
    "order_number": re.compile(
        r"\border number\b[^.?!]*\?|\b(could|can|would) you (please )?(tell|give) me\b"
        r"[^.?!]*\bnumber\b[^.?!]*\?"
    ),
    "hand_over": re.compile(r"\ba colleague will (get back|call you|contact)\b"),
}

# checks whose failure makes an answer wrong even when it asks back: it said something false
# or irrelevant, or asked what it had no reason to ask
_FALSE_OR_NEEDLESS = (
    "no_other_status",
    "quotes_relevant",
    "no_invented_lookup",
    "no_needless_question",
)


def asks_back(answer: str) -> str | None:
    """How the answer asks back (``repeat``, ``order_number``, ``hand_over``), or None."""
    text = answer.lower()
    return next((name for name, pattern in _ASKS.items() if pattern.search(text)), None)


def asks_order_number(answer: str) -> bool:
    return bool(_ASKS["order_number"].search(answer.lower()))


def outcome(v: Judged, q: Question) -> Outcome:
    """Right, asked back or wrong (the module's rules); a failed run is wrong."""
    if v.error is not None:
        return "wrong"
    if v.answer_ok:
        return "right"
    if any(v.checks.get(c) is False for c in _FALSE_OR_NEEDLESS):
        return "wrong"
    if q.order is not None and v.tool_used and v.order_ok is False:
        return "wrong"  # the facts of an order the customer did not name
    return "asked_back" if asks_back(v.answer) else "wrong"
