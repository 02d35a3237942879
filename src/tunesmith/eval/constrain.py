"""Constrained decoding: answers from a closed set are decoded inside that set.

The set is read from the training answers (tunesmith.data.answers, rule in the README's config reference):
- **labels**: the answers are a small set of short strings (intent names, categories). Generation walks a
  prefix tree over each label's token ids as training encoded them (content and end-of-turn token), so
  every output is one of the labels, chosen greedily token by token.
- **json**: every answer is a JSON object of one shape. A JSON schema is derived from them (keys, value
  types, closed-set string values as `enum`) and lm-format-enforcer (pure Python, MIT) keeps generation
  inside it. Chosen over outlines (a Rust core and a much larger dependency tree) and xgrammar (compiled,
  CUDA-first): the eval and serve paths here run on CPU too, through transformers' logits processors.
  Its own transformers integration imports a module transformers 5 removed, so the token table and the
  logits processor are built here from its core (`TokenEnforcer`), which is what that integration does.
- **free**: anything else; generation is unconstrained.

A constraint is a transformers `LogitsProcessor` that sees only the generated tokens (the prompt is cut
off at `offset`), so rows of one left-padded batch share the tree or parser states of equal prefixes.
"""

from __future__ import annotations

import functools
import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunesmith.data.answers import AnswerSpace
from tunesmith.data.formats import Message
from tunesmith.data.tokenize import IGNORE, encode_chat


def answer_ids(tok: Any, answer: str, stop_ids: Sequence[int]) -> list[int]:
    """`answer`'s token ids as training puts them under the loss (encode_chat): the content and the
    end-of-turn token, nothing after it."""
    msgs: list[Message] = [{"role": "user", "content": "x"}, {"role": "assistant", "content": answer}]
    enc = encode_chat(tok, msgs, max_length=1 << 30, stop_ids=stop_ids)
    return [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]


class LabelTrie:
    """A prefix tree over token sequences: which tokens may follow a generated prefix."""

    def __init__(self, sequences: Sequence[Sequence[int]]):
        self.root: dict[int, Any] = {}
        for seq in sequences:
            node = self.root
            for t in seq:
                node = node.setdefault(int(t), {})

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """The next tokens after `prefix`; empty once it is a whole label (or left the tree)."""
        node: dict[int, Any] | None = self.root
        for t in prefix:
            node = node.get(int(t)) if node is not None else None
        return list(node) if node is not None else []


class _Constraint:
    """A LogitsProcessor masking every token but the allowed ones; rows whose prefix allows nothing (a
    finished answer, padded by generate) are left alone."""

    def __init__(self, offset: int):
        self.offset = offset

    def allowed(self, new: list[int]) -> Any:
        """The allowed next token ids: a list, or a tensor of ids."""
        raise NotImplementedError

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        mask = scores.new_full(scores.shape, -math.inf)
        rows = input_ids[:, self.offset :].tolist()
        for row, new in enumerate(rows):
            allowed = self.allowed(new)
            if len(allowed):
                mask[row, allowed] = 0.0
            else:
                mask[row] = 0.0
        return scores + mask


class LabelConstraint(_Constraint):
    def __init__(self, trie: LabelTrie, offset: int):
        super().__init__(offset)
        self.trie = trie

    def allowed(self, new: list[int]) -> list[int]:
        return self.trie.allowed(new)


class JsonConstraint(_Constraint):
    def __init__(self, space: JsonSpace, offset: int):
        super().__init__(offset)
        self.space = space

    def allowed(self, new: list[int]) -> Any:
        return self.space.allowed(new)


class JsonSpace:
    """One JSON schema's lm-format-enforcer, shared by every answer decoded in it (every row of a batch,
    every request a server answers): the enforcer caches parser states by generated prefix, and answers of
    one shape share most prefixes (`{"queue": "`...), so a shared one parses each prefix once. A fresh
    enforcer per answer re-parsed them all: ~10% of a serving step at 8 rows, measured on the tickets run.

    The state cache grows with every distinct answer, so past `max_states` the enforcer starts over; a row
    in the middle of its answer then has its prefix replayed (the enforcer takes a prefix it has not seen,
    whose parent it has not seen either, for the start of a new answer)."""

    def __init__(self, table: Any, schema: dict[str, Any], max_states: int = 200_000):
        self.table, self.schema, self.max_states = table, schema, max_states
        self._lock = threading.Lock()
        self._fresh()

    def _fresh(self) -> None:
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer

        self.enforcer = TokenEnforcer(self.table, JsonSchemaParser(self.schema))
        # Inside a free-text string nearly the whole vocabulary is allowed: indexing with that Python list
        # took 90% of decoding time (measured on the tiny model). The enforcer hands out one token list per
        # parser state and reuses it, so each becomes an index tensor once (the list is kept with it: its
        # id stays unique while it lives).
        self._index: dict[int, tuple[Any, Any]] = {}

    def allowed(self, new: list[int]) -> Any:
        """The allowed next token ids after the generated tokens `new`, as a tensor of ids."""
        import torch

        with self._lock:
            if len(self.enforcer.prefix_states) > self.max_states:
                self._fresh()
            states = self.enforcer.prefix_states
            if new and tuple(new[:-1]) not in states and tuple(new) not in states:
                for k in range(len(new)):  # replay the prefix the fresh enforcer has not seen
                    self.enforcer.get_allowed_tokens(new[:k])
            tokens = self.enforcer.get_allowed_tokens(new).allowed_tokens
            hit = self._index.get(id(tokens))
            if hit is None:
                hit = self._index[id(tokens)] = (tokens, torch.tensor(list(tokens), dtype=torch.long))
            return hit[1]


@functools.lru_cache(maxsize=4)
def _token_table(tok: Any, stops: tuple[int, ...]) -> Any:
    """lm-format-enforcer's view of the vocabulary (each token's text, and whether it starts a word), as
    its transformers integration builds it: ~1 s for a 50k vocabulary, so it is kept per tokenizer."""
    from lmformatenforcer import TokenEnforcerTokenizerData

    zero = tok.encode("0", add_special_tokens=False)[-1]
    special = set(tok.all_special_ids)
    vocab = len(tok)
    regular = []
    for idx in range(vocab):
        if idx in special:
            continue
        after_zero = tok.decode([zero, idx])[1:]
        regular.append((idx, after_zero, len(after_zero) > len(tok.decode([idx]))))

    def decode(ids: list[int]) -> str:
        return str(tok.decode(ids)).rstrip("\ufffd")

    return TokenEnforcerTokenizerData(regular, decode, list(stops), False, vocab)


class Decoder:
    """Builds the logits processor of one generate() call for an answer space (None when free)."""

    def __init__(self, space: AnswerSpace, tok: Any, stop_ids: Sequence[int]):
        self.space = space
        self.tok = tok
        self.stops = tuple(int(s) for s in stop_ids)
        # Each label tokenized once: the tree and the unconstrained pass's budget both read them.
        self.label_ids = (
            [answer_ids(tok, lab, self.stops) for lab in space.labels] if space.kind == "labels" else []
        )
        self.trie = LabelTrie(self.label_ids) if self.label_ids else None
        self._json: JsonSpace | None = None  # built on first use: the token table takes ~1 s

    def max_answer_tokens(self) -> int | None:
        """Labels: the longest label's tokens (an unconstrained pass needs no more to be told valid)."""
        return max(len(ids) for ids in self.label_ids) if self.label_ids else None

    def processor(self, offset: int) -> _Constraint | None:
        if self.trie is not None:
            return LabelConstraint(self.trie, offset)
        if self.space.kind == "json":
            if self._json is None:
                self._json = JsonSpace(_token_table(self.tok, self.stops), self.space.schema)
            return JsonConstraint(self._json, offset)
        return None


def run_decoder(run_dir: Path, constrain: str, tok: Any, stop_ids: Sequence[int]) -> Decoder | None:
    """The decoder a run's eval used (its pre-flight's answer space, `eval.constrain`), or None for free
    text: serve and export verification decode as eval did."""
    pre = run_dir / "data" / "preflight.json"
    if constrain != "auto" or not pre.is_file():
        return None
    space = AnswerSpace.from_dict(json.loads(pre.read_text(encoding="utf-8")).get("answer_space"))
    return Decoder(space, tok, stop_ids) if space.kind != "free" else None


__all__ = ["Decoder", "LabelTrie", "answer_ids", "run_decoder"]
