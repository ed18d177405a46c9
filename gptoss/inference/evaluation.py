"""Measuring a checkpoint: loss, perplexity and bits per byte on a text, and answer accuracy on prompts.

`text_metrics` counts every token of the text: the ids are cut into consecutive windows of seq_len
predictions (window k predicts ids[k * seq_len + 1 : (k + 1) * seq_len + 1] from the ids before,
within the window; the last window may be shorter), so each id but the first is predicted exactly
once. loss is the mean cross-entropy (nats) over them, perplexity exp(loss), bits per byte the
summed loss / ln 2 over the UTF-8 bytes of the predicted text.

`answer_accuracy` reads a JSONL of {"messages": [...], "answer": "..."} (or {"prompt": "...",
"answer": ...}), renders each prompt in the model's chat format (gptoss.data.conversations), lets the
model reply greedily and counts the replies whose final answer (not the reasoning), stripped, equals
the expected answer.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gptoss.data.conversations import check_messages, read_jsonl, renderer_for
from gptoss.inference.generation import generate_batch


@torch.no_grad()
def text_metrics(model, tokenizer, text: str, seq_len: int | None = None, batch_size: int = 8, progress: bool = False) -> dict:
    """{"loss", "perplexity", "bits_per_byte", "tokens", "windows"} of `model` on `text` (see the module doc)."""
    seq_len = seq_len or model.config.max_seq_len
    if not 1 <= seq_len <= model.config.max_seq_len:
        raise ValueError(f"seq_len must be in [1, {model.config.max_seq_len}] (the model's context), got {seq_len}")
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.int64)
    if len(ids) < 2:
        raise ValueError("the text is shorter than two tokens: there is nothing to predict")
    starts = list(range(0, len(ids) - 1, seq_len))
    total, device = 0.0, next(model.parameters()).device
    for first in tqdm(range(0, len(starts), batch_size), desc="eval", unit="batch", disable=not progress):
        group = starts[first : first + batch_size]
        length = min(seq_len, len(ids) - 1 - group[0])
        x = torch.zeros(len(group), length, dtype=torch.int64)
        y = torch.full((len(group), length), -1, dtype=torch.int64)  # -1: no target (a short last window)
        for row, start in enumerate(group):
            n = min(seq_len, len(ids) - 1 - start)
            x[row, :n], y[row, :n] = ids[start : start + n], ids[start + 1 : start + n + 1]
        logits = model(x.to(device))
        losses = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), ignore_index=-1, reduction="sum")
        total += losses.double().item()
    predicted = len(ids) - 1
    loss = total / predicted
    text_bytes = len(tokenizer.decode(ids[1:]).encode("utf-8"))
    return {"loss": loss, "perplexity": math.exp(min(loss, 700)), "bits_per_byte": total / math.log(2) / text_bytes,
            "tokens": predicted, "windows": len(starts)}  # fmt: skip


def read_answer_file(path: str | Path) -> list[tuple[list[dict], str]]:
    """(messages, expected answer) of each line of a JSONL answers file; bad lines name their number."""
    items = []
    for where, record in read_jsonl(path, "answers"):
        if not isinstance(record, dict) or "answer" not in record or not ("messages" in record or "prompt" in record):
            raise ValueError(f"{where}: each line must be an object with \"answer\" and \"messages\" (or \"prompt\")")
        messages = record.get("messages") or [{"role": "user", "content": record["prompt"]}]
        # the prompt's messages, checked like a conversation's (with a placeholder reply to satisfy the check)
        checked = check_messages(messages + [{"role": "assistant", "content": "-"}], where)[:-1]
        items.append((checked, str(record["answer"]).strip()))
    if not items:
        raise ValueError(f"{path} holds no prompts")
    return items


@torch.no_grad()
def answer_accuracy(model, tokenizer, path: str | Path, max_new_tokens: int = 64, batch_size: int = 32, progress: bool = False) -> dict:
    """{"accuracy", "correct", "total", "replies"} of greedy replies on an answers file (module doc)."""
    renderer = renderer_for(tokenizer)
    items = read_answer_file(path)
    stops = set(renderer.stop_ids())
    replies = []
    for first in tqdm(range(0, len(items), batch_size), desc="answers", unit="batch", disable=not progress):
        group = items[first : first + batch_size]
        prompts = [renderer.prompt(messages) for messages, _ in group]
        room = model.config.max_seq_len - max(map(len, prompts))
        if room < 1:
            raise ValueError(f"a prompt of {path} fills the model's context of {model.config.max_seq_len} tokens")
        outputs = generate_batch(model, prompts, min(max_new_tokens, room), temperature=0.0, stop_token_ids=sorted(stops))
        for (_, expected), output in zip(group, outputs):
            end = next((i + 1 for i, token in enumerate(output) if token in stops), len(output))
            reply = renderer.parse_reply(output[:end])
            replies.append({"expected": expected, "answer": reply["content"].strip(), "thinking": reply["thinking"]})
    correct = sum(r["answer"] == r["expected"] for r in replies)
    return {"accuracy": correct / len(replies), "correct": correct, "total": len(replies), "replies": replies}
