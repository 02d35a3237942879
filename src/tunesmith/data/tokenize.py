"""Chat template rendering with an exact loss mask.

Three properties hold by construction and are tested:
1. Loss only on assistant tokens, plus the end-of-turn token that closes each trained assistant turn,
   so the tuned model learns to stop.
2. The prompt rendered at inference (`encode_prompt`) is token-for-token a prefix of the training
   render: both are built from the same segments, each tokenized on its own.
3. Nothing is truncated silently: an example longer than `max_length` raises.

The conversation is rendered with the model's own chat template at each assistant turn boundary and
split into segments (prompt text, assistant text). Tokenizing segments separately, instead of the whole
string at once, is what makes (2) exact; `render_parity` measures how often the two differ.

An encoder (BERT family, `classify` only) has no chat template: `encode_plain` gives it the prompt as one
plain sequence, `[CLS] text [SEP]` with the tokenizer's own special tokens. The system turn is left out
(a classifier has no instructions to follow; a prompt shared by every row only costs positions).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunesmith.data.formats import Example, Message

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE = -100


class TemplateError(ValueError):
    pass


class TooLongError(ValueError):
    def __init__(self, length: int, max_length: int):
        super().__init__(f"is {length} tokens long, over train.max_length={max_length}")
        self.length = length
        self.max_length = max_length


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE where not under the loss

    @property
    def n_loss(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def _strip(messages: Sequence[Message]) -> list[dict[str, str]]:
    # Templates see only role/content: our `weight` key must not leak into the rendered text.
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def render(tok: PreTrainedTokenizerBase, messages: Sequence[Message], add_generation_prompt: bool) -> str:
    text = tok.apply_chat_template(
        _strip(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert isinstance(text, str)
    return text


def stop_token_ids(tok: PreTrainedTokenizerBase, generation_config: Any = None) -> list[int]:
    """Token ids that end an assistant turn: the tokenizer's EOS plus the model's generation EOS ids."""
    ids: list[int] = []
    if tok.eos_token_id is not None:
        ids.append(int(tok.eos_token_id))
    gen = getattr(generation_config, "eos_token_id", None)
    if gen is not None:
        ids += [int(x) for x in (gen if isinstance(gen, list) else [gen])]
    return sorted(set(ids))


def segments(tok: PreTrainedTokenizerBase, messages: Sequence[Message]) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, is_trained_assistant_turn) pieces."""
    out: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render(tok, messages[:i], add_generation_prompt=True)
        full = render(tok, messages[: i + 1], add_generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise TemplateError(
                "the chat template does not render turns as prefixes of each other (it rewrites earlier "
                "turns); tunesmith cannot place the loss mask exactly for this template"
            )
        if len(prompt) > len(done):
            out.append((prompt[len(done) :], False))
        out.append((full[len(prompt) :], m.get("weight", 1.0) > 0))
        done = full
    return out


def _ids(tok: PreTrainedTokenizerBase, text: str) -> list[int]:
    # The template already wrote every special token it wants (BOS included); adding more would double them.
    return list(tok(text, add_special_tokens=False)["input_ids"])


def encode_chat(
    tok: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    max_length: int,
    stop_ids: Sequence[int] | None = None,
) -> Encoded:
    stops = set(stop_ids if stop_ids is not None else stop_token_ids(tok))
    input_ids: list[int] = []
    labels: list[int] = []
    segs = segments(tok, messages)
    for n, (text, trained) in enumerate(segs):
        ids = _ids(tok, text)
        if not trained:
            input_ids += ids
            labels += [IGNORE] * len(ids)
            continue
        # Loss on the content and the end-of-turn token; template filler after it (a newline) is not
        # something the model generates, since generation stops at the end-of-turn token.
        end = next((k for k, t in enumerate(ids) if t in stops), None)
        if end is None:
            # Templates without an end-of-turn token after the answer: append EOS so the model learns to stop.
            if n == len(segs) - 1 and tok.eos_token_id is not None:
                ids = ids + [int(tok.eos_token_id)]
                end = len(ids) - 1
            else:
                end = len(ids) - 1
        input_ids += ids
        labels += ids[: end + 1] + [IGNORE] * (len(ids) - end - 1)
    if len(input_ids) > max_length:
        raise TooLongError(len(input_ids), max_length)
    return Encoded(input_ids, labels)


def encode_prompt(tok: PreTrainedTokenizerBase, messages: Sequence[Message]) -> list[int]:
    """Token ids fed to the model at inference: everything up to the assistant header of the last turn."""
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    segs = segments(tok, [*messages, {"role": "assistant", "content": "x"}])
    ids: list[int] = []
    for text, _ in segs[:-1]:
        ids += _ids(tok, text)
    return ids


def reads_plain_text(tok: PreTrainedTokenizerBase) -> bool:
    """An encoder's tokenizer: models.load_tokenizer lets one through without a chat template only for an
    encoder (and drops any template an encoder's tokenizer carries)."""
    return not getattr(tok, "chat_template", None)


def plain_text(messages: Sequence[Message]) -> str:
    """The prompt of a conversation as one text for an encoder: every turn before the final assistant
    answer except the system turn, in order, one per line (one user turn for a labelled row)."""
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    return "\n".join(m["content"] for m in messages if m["role"] != "system")


def encode_plain(
    tok: PreTrainedTokenizerBase, messages: Sequence[Message], max_length: int | None = None
) -> list[int]:
    """`[CLS] text [SEP]` (the tokenizer's special tokens); `max_length`: cut the text so that the whole
    sequence fits, closing [SEP] kept."""
    text = plain_text(messages)
    if max_length is None:
        return list(tok(text)["input_ids"])
    return list(tok(text, truncation=True, max_length=max_length)["input_ids"])


def render_parity(tok: PreTrainedTokenizerBase, messages: Sequence[Message]) -> bool:
    """True when segment-wise tokens equal the tokens of the whole rendered string.

    A mismatch is not an error (training stays prefix-exact), but it means serving stacks that tokenize
    the whole prompt string would see slightly different ids than training did; the pre-flight reports it.
    """
    whole = _ids(tok, render(tok, messages, add_generation_prompt=False))
    pieces: list[int] = []
    for text, _ in segments(tok, messages):
        pieces += _ids(tok, text)
    return whole == pieces


# The encoded forms of the other objectives (sft and pretrain use Encoded itself).
@dataclass(frozen=True)
class PairEncoded:
    """A preference pair: the same prompt with the chosen and with the rejected answer."""

    chosen: Encoded
    rejected: Encoded

    @property
    def input_ids(self) -> list[int]:  # the longer side, for length grouping and padding estimates
        return max(self.chosen.input_ids, self.rejected.input_ids, key=len)


def encode_pair(
    tok: PreTrainedTokenizerBase, ex: Example, max_length: int, stop_ids: Sequence[int]
) -> PairEncoded:
    rejected: list[Message] = [*ex.messages[:-1], {"role": "assistant", "content": ex.rejected}]
    return PairEncoded(
        encode_chat(tok, ex.messages, max_length, stop_ids), encode_chat(tok, rejected, max_length, stop_ids)
    )


@dataclass(frozen=True)
class ClassEncoded:
    """A classification example: the prompt's tokens (up to the assistant header) and the label's index."""

    input_ids: list[int]
    label_id: int


def pack_texts(tok: PreTrainedTokenizerBase, texts: Iterable[str], block: int) -> list[Encoded]:
    """Documents -> token stream (each document with the tokenizer's own BOS/EOS handling, then EOS) ->
    blocks of exactly `block` tokens; a final shorter block is kept when it holds at least a quarter block.
    Every token is under the loss."""
    eos = tok.eos_token_id
    stream: list[int] = []
    for text in texts:
        ids = list(tok(text)["input_ids"])
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(int(eos))
        stream += ids
    blocks = [stream[i : i + block] for i in range(0, len(stream), block)]
    if blocks and len(blocks[-1]) < max(2, block // 4):
        blocks.pop()
    return [Encoded(b, list(b)) for b in blocks]


# What one prepared example (or packed block) is after tokenizing, for any objective.
EncodedExample = Encoded | PairEncoded | ClassEncoded
