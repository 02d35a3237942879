"""Is an exported model the trained model? Logits on real test prompts, against base + adapter.

Each prompt is a test-split conversation with its reference answer (teacher forcing: every position of
prompt and answer is compared), so the check covers what the model reads and what it writes. Reported:
the largest absolute logit difference, the same relative to the largest reference logit (what the
tolerance bounds: logit scales differ by model, 0.5 for a random tiny model, 30 for SmolLM2), the share of
positions whose top-1 token agrees, and the share of prompts whose greedy continuation is identical.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunesmith.data.formats import Example
from tunesmith.data.tokenize import encode_chat, encode_prompt


@dataclass(frozen=True)
class Tolerance:
    max_rel_diff: float  # largest |logit difference| / largest |reference logit| allowed
    min_top1_agreement: float  # share of positions whose argmax must agree
    min_greedy_agreement: float  # share of prompts whose greedy continuation must be identical


# fp32 formats must be the same function up to summation order. GGUF rounds every weight (f16: 11
# significant bits; q8_0: 8-bit blocks of 32 with an f16 scale), so logits move; the top-1 choice
# rarely does. Measured margins are in README ("Export").
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(1e-4, 0.999, 0.85),
    "f16": Tolerance(1e-2, 0.98, 0.75),
    "q8_0": Tolerance(5e-2, 0.95, 0.5),
}


@dataclass(frozen=True)
class Probe:
    """One verification input: the full conversation's ids and where the prompt ends."""

    ids: list[int]
    prompt_len: int


def chat_tests(examples: Sequence[Example], n: int) -> list[Example]:
    """The first `n` test examples that are conversations with an answer: what exports are checked on."""
    return [ex for ex in examples if ex.kind == "chat" and len(ex.messages) >= 2][:n]


def probes(tok: Any, examples: Sequence[Example], n: int, max_length: int) -> list[Probe]:
    out = []
    for ex in chat_tests(examples, n):
        full = encode_chat(tok, ex.messages, max_length=max(max_length, 1 << 16)).input_ids
        prompt = encode_prompt(tok, ex.messages)
        out.append(Probe(full, len(prompt)))
    return out


def _logits(model: Any, ids: list[int]) -> Any:
    import torch

    with torch.inference_mode():
        x = torch.tensor([ids], device=model.device)
        return model(input_ids=x).logits[0].float().cpu()


def _greedy(model: Any, ids: list[int], max_new_tokens: int, stop_ids: Sequence[int]) -> list[int]:
    return greedy_answer(model, ids, max_new_tokens, stop_ids)[0]


def greedy_answer(
    model: Any, ids: list[int], max_new_tokens: int, stop_ids: Sequence[int]
) -> tuple[list[int], bool]:
    """The greedy continuation of `ids` up to its first stop token (not included), and whether one came."""
    import torch

    with torch.inference_mode():
        x = torch.tensor([ids], device=model.device)
        out = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=list(stop_ids),
            pad_token_id=int(stop_ids[0]),
        )
    new: list[int] = out[0, len(ids) :].tolist()
    cut = next((k for k, t in enumerate(new) if t in stop_ids), len(new))
    return new[:cut], cut < len(new)


def compare_models(
    reference: Any,
    exported: Any,
    items: Sequence[Probe],
    max_new_tokens: int,
    stop_ids: Sequence[int],
    tolerance: Tolerance,
) -> dict[str, Any]:
    """Compare two models on the probes; `passed` is False when any number is outside `tolerance`."""
    if not items:
        raise ValueError("no test prompts to verify the export on (the run's test split is empty)")
    reference.eval()
    exported.eval()
    max_diff = scale = 0.0
    agree = positions = greedy_same = 0
    per_prompt = []
    for p in items:
        a, b = _logits(reference, p.ids), _logits(exported, p.ids)
        diff = float((a - b).abs().max())
        if not math.isfinite(diff):
            diff = float("inf")
        max_diff = max(max_diff, diff)
        scale = max(scale, float(a.abs().max()))
        same = int((a.argmax(-1) == b.argmax(-1)).sum())
        agree += same
        positions += a.shape[0]
        g_ref = _greedy(reference, p.ids[: p.prompt_len], max_new_tokens, stop_ids)
        g_exp = _greedy(exported, p.ids[: p.prompt_len], max_new_tokens, stop_ids)
        greedy_same += g_ref == g_exp
        per_prompt.append(
            {
                "tokens": len(p.ids),
                "max_abs_diff": diff,
                "top1_agree": same / a.shape[0],
                "greedy_same": g_ref == g_exp,
            }
        )
    result: dict[str, Any] = {
        "prompts": len(items),
        "positions": positions,
        "max_abs_diff": max_diff,
        "max_rel_diff": max_diff / scale if scale else float("inf"),
        "max_abs_reference_logit": scale,
        "top1_agreement": agree / positions,
        "greedy_agreement": greedy_same / len(items),
        "greedy_max_new_tokens": max_new_tokens,
        "tolerance": {
            "max_rel_diff": tolerance.max_rel_diff,
            "min_top1_agreement": tolerance.min_top1_agreement,
            "min_greedy_agreement": tolerance.min_greedy_agreement,
        },
        "per_prompt": per_prompt,
    }
    problems = []
    if not result["max_rel_diff"] <= tolerance.max_rel_diff:
        problems.append(
            f"max |logit diff| {max_diff:.3g} is {result['max_rel_diff']:.3g} of the largest logit "
            f"({scale:.3g}), over the tolerance of {tolerance.max_rel_diff:g}"
        )
    if result["top1_agreement"] < tolerance.min_top1_agreement:
        problems.append(f"top-1 agreement {result['top1_agreement']:.3f} < {tolerance.min_top1_agreement:g}")
    if result["greedy_agreement"] < tolerance.min_greedy_agreement:
        problems.append(
            f"greedy-output agreement {result['greedy_agreement']:.3f} < {tolerance.min_greedy_agreement:g}"
        )
    result["passed"] = not problems
    result["problems"] = problems
    return result
