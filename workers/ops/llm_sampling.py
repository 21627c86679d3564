"""Sampling a token, under a grammar that can never abort the process.

llama.cpp's grammar sampler ends the whole process when it is told to accept a token its
grammar does not allow: ``std::terminate`` on "Unexpected empty grammar stack after accepting
piece", or ``GGML_ABORT`` for an end-of-text token while the grammar is unfinished. And
``llama_sampler_sample`` accepts whatever its chain selected -- also when the grammar had left
every token at -inf: a literal that no token can spell (``root ::= "\\x00"``: a piece starting
with NUL is never allowed), or a state the vocabulary cannot continue. On a batching worker
that one request killed the process and failed every other run in its batch.

So a grammar never goes into a chain that ``llama_sampler_sample`` runs. :class:`Sampler`
applies it alone to the candidates; when it allows none, the request fails with
:class:`GrammarDeadEnd` (a ValueError: its own step fails, nothing else); the rest of the
chain picks among the allowed tokens; and only a token the grammar allowed is accepted.
:func:`check_grammar` refuses up front a grammar that does not parse, holds a NUL, or whose
start no token of the model can spell.
"""

from __future__ import annotations

import ctypes
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

GREEDY_EPSILON = 1e-6
TOP_K, TOP_P, MIN_P = 40, 0.95, 0.05  # llama-cpp-python's completion defaults
MAX_GRAMMAR_CHARS = 64_000

# llama_token_data {int32 id; float logit; float p}: one candidate, as llama.cpp lays it out
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class GrammarDeadEnd(ValueError):
    """The grammar allows no token of the model here: the request cannot go on."""


def _grammar_sampler(vocab: Any, text: str) -> Any:
    """A llama.cpp grammar sampler for ``text``; ValueError (naming the param) when refused."""
    import llama_cpp as lc

    if "\x00" in text:
        raise ValueError("grammar contains a NUL character, which no token can produce")
    if len(text) > MAX_GRAMMAR_CHARS:
        raise ValueError(f"grammar is {len(text)} characters (limit {MAX_GRAMMAR_CHARS})")
    grammar = lc.llama_sampler_init_grammar(vocab, text.encode(), b"root")
    if not grammar:
        raise ValueError("grammar does not parse (GBNF, with a rule named root)")
    return grammar


class _Candidates:
    """Every token of the vocabulary with its logit, as a llama_token_data_array."""

    def __init__(self, logits: np.ndarray) -> None:
        import llama_cpp as lc

        self.buf = np.empty(len(logits), dtype=_TOKEN_DATA)
        self.buf["id"] = np.arange(len(logits), dtype=np.int32)
        self.buf["logit"] = logits
        self.buf["p"] = 0.0
        self.array = lc.llama_token_data_array(
            data=self.buf.ctypes.data_as(ctypes.POINTER(lc.llama_token_data)),
            size=len(logits),
            selected=-1,
            sorted=False,
        )

    def apply(self, sampler: Any) -> None:
        import llama_cpp as lc

        lc.llama_sampler_apply(sampler, ctypes.byref(self.array))

    def selected(self) -> int:
        return int(self.array.data[int(self.array.selected)].id)


def _allowed(grammar: Any, logits: np.ndarray) -> np.ndarray:
    """Which tokens ``grammar`` allows next (a mask indexed by token id); nothing accepted."""
    candidates = _Candidates(logits)
    candidates.apply(grammar)
    mask: np.ndarray = np.isfinite(candidates.buf["logit"])
    return mask


def _allowed_one(grammar: Any, token: int, logit: float) -> bool:
    """Whether ``grammar`` allows ``token`` next: one candidate checked, not the vocabulary."""
    import llama_cpp as lc

    data: Any = (lc.llama_token_data * 1)()
    data[0].id, data[0].logit, data[0].p = token, logit, 0.0
    one = lc.llama_token_data_array(
        data=ctypes.cast(data, ctypes.POINTER(lc.llama_token_data)),
        size=1,
        selected=-1,
        sorted=False,
    )
    lc.llama_sampler_apply(grammar, ctypes.byref(one))
    return bool(np.isfinite(data[0].logit))


class Sampler:
    """One request's sampling: greedy or temperature (top-k, top-p, min-p, seed), under an
    optional grammar that is applied and accepted by the rules above."""

    def __init__(
        self, vocab: Any, n_vocab: int, grammar: str | None, temperature: float, seed: int
    ) -> None:
        import llama_cpp as lc

        self._lc = lc
        self.n_vocab = n_vocab
        self.greedy = temperature <= GREEDY_EPSILON
        self.grammar = _grammar_sampler(vocab, grammar) if grammar else None
        self.chain: Any = None
        if not self.greedy:
            chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(TOP_K))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(TOP_P, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_min_p(MIN_P, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(temperature))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
            self.chain = chain

    @property
    def plain(self) -> bool:
        """Greedy without a grammar: the argmax of the logits, nothing to keep."""
        return self.greedy and self.grammar is None

    def sample(self, ctx: Any, index: int) -> int:
        """The next token from the logits of ``ctx``'s output ``index`` (accepted);
        :class:`GrammarDeadEnd` when the grammar allows none."""
        lc = self._lc
        logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, index), shape=(self.n_vocab,))
        if self.grammar is None:
            if self.greedy:
                return int(logits.argmax())
            # no grammar in the chain: llama.cpp's own sampling cannot abort
            return int(lc.llama_sampler_sample(self.chain, ctx, index))
        if self.greedy:
            # When the grammar allows the plain argmax, it is the argmax of the allowed
            # tokens too: one token checked instead of the vocabulary (33 ms a token for
            # Gemma's 262k)
            token = int(logits.argmax())
            if not _allowed_one(self.grammar, token, float(logits[token])):
                allowed = _allowed(self.grammar, logits)
                if not allowed.any():
                    raise GrammarDeadEnd(self._dead_end())
                token = int(np.where(allowed, logits, -np.inf).argmax())
        else:
            candidates = _Candidates(logits)
            candidates.apply(self.grammar)
            allowed = np.isfinite(candidates.buf["logit"])
            if not allowed.any():
                raise GrammarDeadEnd(self._dead_end())
            candidates.apply(self.chain)
            token = candidates.selected()
            if not allowed[token]:  # never expected: a token the grammar refused
                token = int(np.where(allowed, logits, -np.inf).argmax())
            lc.llama_sampler_accept(self.chain, token)
        lc.llama_sampler_accept(self.grammar, token)  # an allowed token: it cannot abort
        return token

    @staticmethod
    def _dead_end() -> str:
        return (
            "grammar allows no token of the model here: no text of its vocabulary can "
            "continue it (a literal no token spells, or a rule that can never end)"
        )

    def close(self) -> None:
        for sampler in (self.grammar, self.chain):
            if sampler is not None:
                self._lc.llama_sampler_free(sampler)
        self.grammar = self.chain = None


_CHECKED: OrderedDict[tuple[int, str], None] = OrderedDict()
_CHECKED_MAX = 64
_CHECKED_LOCK = threading.Lock()


def check_grammar(vocab: Any, n_vocab: int, text: str) -> None:
    """Refuse, before it reaches a batch, a grammar that does not parse, holds a NUL, or
    allows no token of this vocabulary at its start (it could never be satisfied). A
    grammar that dead-ends later fails its own request (:class:`GrammarDeadEnd`)."""
    key = (int(ctypes.cast(vocab, ctypes.c_void_p).value or 0), text)
    with _CHECKED_LOCK:
        if key in _CHECKED:
            _CHECKED.move_to_end(key)
            return
    grammar = _grammar_sampler(vocab, text)
    try:
        if not _allowed(grammar, np.zeros(n_vocab, dtype=np.float32)).any():
            raise ValueError(
                "grammar can never be satisfied: no token of the model can start it (a "
                "literal no token spells, such as a NUL character)"
            )
    finally:
        import llama_cpp as lc

        lc.llama_sampler_free(grammar)
    with _CHECKED_LOCK:
        _CHECKED[key] = None
        while len(_CHECKED) > _CHECKED_MAX:
            _CHECKED.popitem(last=False)
