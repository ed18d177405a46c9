"""Choosing the next token from the model's logits: greedy, temperature, top-k, top-p, min-p and a
repetition penalty.

The steps run in the order Hugging Face `generate` uses, each on logits (B, vocab):

    repetition penalty -> greedy argmax (temperature 0) or:
    divide by temperature -> top-k -> top-p -> min-p -> softmax -> one random draw per row

A filter never renormalises by hand: it sets the logits of the tokens it drops to -inf, and the final
softmax spreads the probability over the tokens that are left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gptoss.util.checks import check_int

# below this, logits / temperature can overflow float32 (a tiny temperature is greedy: ask for 0)
MIN_TEMPERATURE = 1e-6


@dataclass(frozen=True)
class SamplingOptions:
    """How to pick each next token (see the module doc for the order of the steps).

    temperature: 0 picks the most likely token (greedy); otherwise logits are divided by it (< 1
        sharpens, > 1 flattens the distribution).
    top_k: keep only the k most likely tokens (ties with the k-th are kept too).
    top_p: keep the smallest set of most likely tokens whose probabilities sum to at least top_p
        ("nucleus" sampling); the most likely token is always kept.
    min_p: keep only tokens at least min_p times as likely as the most likely one.
    repetition_penalty: > 1 makes every token already in the prompt or the output less likely
        (a positive logit is divided by it, a negative one multiplied, as in the CTRL paper).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        def number(name: str) -> float | None:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            return value

        temperature, top_p, min_p, penalty = (number(n) for n in ("temperature", "top_p", "min_p", "repetition_penalty"))
        if temperature is None or not (temperature == 0 or MIN_TEMPERATURE <= temperature < math.inf):
            tiny = temperature is not None and 0 < temperature < MIN_TEMPERATURE
            raise ValueError(
                f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE:g}, inf), got {temperature}"
                + (": a smaller one overflows float32 in logits / temperature; use 0 for greedy decoding" if tiny else "")
            )
        check_int("top_k", self.top_k, minimum=1, optional=True)  # None: no limit
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 keeps every token), got {top_p}")
        if min_p is not None and not 0 <= min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1] (0 keeps every token), got {min_p}")
        if penalty is None or not 0 < penalty < math.inf:
            raise ValueError(f"repetition_penalty must be > 0 (1 means no penalty), got {penalty}")
        if temperature == 0 and (self.top_k, self.top_p, self.min_p) != (None, None, None):
            raise ValueError(
                "conflicting options: temperature=0 means greedy decoding, which ignores top_k, top_p "
                "and min_p; drop them, or sample with a temperature > 0"
            )

    @property
    def greedy(self) -> bool:
        """Whether the next token is the argmax (no randomness)."""
        return self.temperature == 0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Penalise tokens already seen: logits (B, vocab) float, seen (B, vocab) bool -> (B, vocab)."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def filter_logits(logits: torch.Tensor, options: SamplingOptions) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p: logits (B, vocab) -> float32 (B, vocab), with -inf
    for every token that may not be drawn. Expects options.temperature > 0."""
    logits = logits.float()
    if options.top_k is not None and options.top_k < logits.size(-1):
        # chosen before dividing by the temperature (which keeps the order): the division can round
        # two different logits to one value (tiny ones to 0), making a tie the logits do not have
        kth_largest = torch.topk(logits, options.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_largest, -math.inf)
    logits = logits / options.temperature
    if options.top_p is not None and options.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token once the more likely ones already reach top_p, i.e. once it and the less likely
        # ones hold at most 1 - top_p: that mass summed from the least likely up stays exact for a
        # top_p within float32 rounding of 1 (where 1 - mass of the more likely ones would not)
        tail_mass = probs.flip(-1).cumsum(dim=-1).flip(-1)  # (B, vocab)
        drop_sorted = tail_mass <= 1 - options.top_p
        drop_sorted[:, 0] = False  # the most likely token is always kept
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), -math.inf)
    if options.min_p is not None and options.min_p > 0:
        probs = logits.softmax(dim=-1)
        logits = logits.masked_fill(probs < options.min_p * probs.amax(dim=-1, keepdim=True), -math.inf)
    return logits


def sample_next(
    logits: torch.Tensor,
    options: SamplingOptions,
    generator: torch.Generator | None = None,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """The next token of each row: logits (B, vocab) -> (B,) long.

    seen (B, vocab) bool marks the tokens the repetition penalty applies to; generator makes the
    draws reproducible (None uses torch's global generator, seeded by torch.manual_seed).
    """
    if options.repetition_penalty != 1 and seen is not None:
        logits = apply_repetition_penalty(logits.float(), seen, options.repetition_penalty)
    if options.greedy:
        return logits.float().argmax(dim=-1)  # exact for bf16 too, and faster than its argmax on a CPU
    probs = filter_logits(logits, options).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
