"""The page's Inspect tab: the views of `gptoss inspect` (gptoss.inspection) as JSON, for a text.

One recorded forward pass (gptoss.inspection.inspect) of the text's tokens gives, per layer: each
query's attention over the keys (mean over heads), the share it gave the sinks (gpt-oss), the
experts each token was routed to and their weights (gpt-oss), and the logit lens (the most likely
next token read from the residual stream after each block). The page draws them for the token
one clicks. It runs on the engine's thread (Engine.call), between two decode steps: recording puts
hooks on the one model in memory, which no decode step may meet.
"""

from __future__ import annotations

import torch

from gptoss.inspection import inspect, logit_lens
from gptoss.inspection.report import MAX_TOKENS, token_labels, model_summary


def rounded(tensor: torch.Tensor, digits: int = 3) -> list:
    """A float tensor as nested lists, rounded: the JSON stays small."""
    return (tensor.double() * 10**digits).round().div(10**digits).tolist()


@torch.no_grad()
def inspect_view(model, tokenizer, ids: list[int]) -> dict:
    """What the page's Inspect tab shows for token ids (at most MAX_TOKENS of them)."""
    if not 0 < len(ids) <= min(MAX_TOKENS, model.config.max_seq_len):
        raise ValueError(f"inspect 1 to {min(MAX_TOKENS, model.config.max_seq_len)} tokens (every token is shown), got {len(ids)}")
    _, rec = inspect(model, torch.tensor([ids], device=model.lm_head.weight.device))
    lens = []
    for layer in range(len(rec.residual)):
        probs = torch.softmax(logit_lens(model, rec, layer)[0].float(), dim=-1)  # (T, vocab)
        p, top = probs.max(-1)
        lens.append({"tokens": token_labels(tokenizer, top.tolist()), "probs": rounded(p)})
    sinks = [None if s is None else rounded(s[0].mean(0)) for s in rec.sink_share]  # (T,) per layer
    return {
        "model": model_summary(model.config),
        "tokens": token_labels(tokenizer, ids),
        "windows": rec.windows,
        "attention": [rounded(a[0].mean(0)) for a in rec.attention],  # per layer (T, T): mean over heads
        "sinks": sinks if any(s is not None for s in sinks) else None,
        "experts": None if rec.experts[0] is None else [e[0].tolist() for e in rec.experts],  # per layer (T, k)
        "expert_weights": None if rec.expert_weights[0] is None else [rounded(w[0]) for w in rec.expert_weights],
        "logit_lens": lens,  # per layer + 1 (the embeddings first): the top next token and its probability
    }
