"""Autoregressive generation: prefill the prompts once into a KV cache, then one token per step.

Entry points, from the most basic to the most complete:

    generate(model, idx, n)               ids (B, T) -> ids (B, T + n): the seed's API
    stream(model, prompts, n, ...)        an iterator over steps, for prompts of different lengths
                                          (left-padded), with stop tokens and stop strings
    generate_batch(model, prompts, n)     stream() collected: one list of new ids per prompt
    stream_text(model, tokenizer, s, n)   text in, text pieces out as they are produced

All share one loop (`_token_steps`): the prompts sit left-padded in a preallocated buffer of
(B, T + n) ids, and each step writes one sampled column into it. Sampling options (temperature,
top_k, top_p, min_p, repetition_penalty) are gptoss.inference.sampling.SamplingOptions fields,
passed as keywords; stop strings are watched by gptoss.inference.stops.

Past the context limit (prompt + n > max_seq_len): a model with learned positions (GPT-2) falls
back to the seed's sliding crop once the text outgrows the context, re-reading the last
max_seq_len tokens at every step (slow, but unlimited; the cache serves the steps before that); a
rotary (gpt-oss) model raises a ValueError, since cropping would silently drop context that its
131k-token window was built to keep.

For speed on a CPU, call gptoss.inference.prepare_for_inference(model) once first (see its doc).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from gptoss.inference.sampling import SamplingOptions, sample_next
from gptoss.inference.stops import REPLACEMENT_CHARACTER, StopStringWatcher, check_stops, scan_for_stop, settled_tokens
from gptoss.util.checks import check_int


# ---------------------------------------------------------------------------------------- checks
def check_context(model, prompt_length: int, max_new_tokens: int) -> None:
    """Raise ValueError when a rotary model would run past max_seq_len (learned positions crop)."""
    limit = model.config.max_seq_len
    if prompt_length + max_new_tokens > limit and model.config.position != "learned":
        raise ValueError(
            f"prompt ({prompt_length} tokens) + max_new_tokens ({max_new_tokens}) exceeds this model's "
            f"context of max_seq_len={limit} tokens; shorten the prompt or ask for at most "
            f"{max(limit - prompt_length, 0)} new tokens"
        )


def make_generator(seed: int | None, generator: torch.Generator | None, device) -> torch.Generator | None:
    """A torch.Generator seeded with `seed`, or `generator`, or None (torch's global generator)."""
    if seed is not None and generator is not None:
        raise ValueError("conflicting options: give seed or generator, not both")
    if seed is None:
        return generator
    check_int("seed", seed)
    return torch.Generator(device=device).manual_seed(seed)


def left_pad(model, prompts: Sequence[Sequence[int]] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Batch prompts of different lengths: ids (B, T) left-padded with 0, on the model's device, and
    a (B, T) bool mask (False = padding), or None when no prompt is padded."""
    device = model.lm_head.weight.device
    if isinstance(prompts, torch.Tensor):
        model.check_input(prompts)  # also refuses an empty prompt
        if not prompts.is_cpu:  # where ids enter: on an accelerator, the model's forward does not read them
            model.check_id_range(prompts)
        return prompts.to(device), None  # a CPU prompt for a model trained on the GPU, say
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not all(
        isinstance(p, Sequence) and not isinstance(p, (str, bytes)) for p in prompts
    ):
        raise TypeError("prompts must be a list of token-id lists (one per prompt), or a (B, T) tensor")
    if not prompts:
        raise ValueError("no prompts given: pass at least one list of token ids")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty: give at least one token id to start from")
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long)
    model.check_input(ids)  # on the CPU: the ids' range too
    ids = ids.to(device)
    if all(len(p) == width for p in prompts):
        return ids, None
    real = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts], device=device)
    return ids, real


# ---------------------------------------------------------------------------------------- the loop
def next_token_logits(model, ids: torch.Tensor, real: torch.Tensor | None, length: int, cache) -> torch.Tensor:
    """Logits (B, vocab) of the token that follows ids[:, :length].

    With a cache, only the columns it has not seen yet go through the model (the whole prompt at
    the first step, one column after). Once the text outgrows the cache (past the context limit,
    learned positions only), the last max_seq_len columns are recomputed: the seed's sliding crop.
    """
    if length <= cache.capacity:
        start = cache.length
        mask = real[:, start:length] if real is not None and start == 0 else None  # padding: prompt only
        return model(ids[:, start:length], cache=cache, padding_mask=mask, logits_to_keep=1)[:, -1]
    start = max(0, length - model.config.max_seq_len)
    mask = real[:, start:length] if real is not None else None
    return model(ids[:, start:length], padding_mask=mask, logits_to_keep=1)[:, -1]


@torch.inference_mode()  # no autograd bookkeeping at all (docs/inference.md measures what it saves)
def _token_steps(
    model,
    ids: torch.Tensor,
    real: torch.Tensor | None,
    prompt_length: int,
    options: SamplingOptions,
    generator: torch.Generator | None,
    vocab_limit: int | None = None,
) -> Iterator[torch.Tensor]:
    """Fill ids[:, prompt_length:] one column at a time, yielding each new column (B,).

    ids (B, total): the left-padded prompts, then room for the new tokens. real (B, total) bool:
    False marks padding (None: no padding). vocab_limit: sample only ids below it.
    """
    B, total = ids.shape
    cache = model.new_cache(B, capacity=min(total, model.config.max_seq_len))  # the crop takes over past it
    seen = None  # (B, vocab) bool: the tokens of each row so far, for the repetition penalty
    if options.repetition_penalty != 1:
        seen = torch.zeros(B, model.config.vocab_size, dtype=torch.bool, device=ids.device)
        prompts = ids[:, :prompt_length]
        if real is not None:  # count a padding slot as the row's last prompt token, which is real
            prompts = torch.where(real[:, :prompt_length], prompts, prompts[:, -1:])
        seen.scatter_(1, prompts, True)
    for length in range(prompt_length, total):
        logits = next_token_logits(model, ids, real, length, cache)
        if vocab_limit is not None:
            logits[:, vocab_limit:] = -math.inf
        token = sample_next(logits, options, generator, seen)  # (B,)
        ids[:, length] = token
        if seen is not None:
            seen.scatter_(1, token[:, None], True)
        yield token


def _start(model, prompts, max_new_tokens, seed, generator, sampling):
    """Check the arguments and set up: (ids buffer, padding mask, prompt length, options, generator)."""
    check_int("max_new_tokens", max_new_tokens, minimum=0)
    known = {field.name for field in dataclasses.fields(SamplingOptions)}
    if set(sampling) - known:
        raise TypeError(
            f"unknown generation option(s) {sorted(set(sampling) - known)}: sampling takes {sorted(known)} and "
            "seed or generator; stop_token_ids, stop_strings, tokenizer and stats are stream()/generate_batch() options"
        )
    options = SamplingOptions(**sampling)
    ids, real = left_pad(model, prompts)
    B, T = ids.shape
    check_context(model, T, max_new_tokens)
    buffer = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=ids.device)  # preallocated output
    buffer[:, :T] = ids
    if real is not None:
        real = torch.cat([real, real.new_ones(B, max_new_tokens)], dim=1).to(ids.device)
    return buffer, real, T, options, make_generator(seed, generator, ids.device)


def check_generation_options(model, max_new_tokens: int, *, seed: int | None = None, **sampling) -> None:
    """Raise the TypeError/ValueError that generating with these options would, without generating
    (for a command that checks its flags before the first prompt)."""
    _start(model, [[0]], max_new_tokens, seed, None, sampling)


@torch.no_grad()
def generate(
    model,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    **sampling,
) -> torch.Tensor:
    """Continue token ids `idx` (B, T) by `max_new_tokens` tokens; returns (B, T + max_new_tokens).

    temperature=0 is greedy. Other keywords: top_p, min_p, repetition_penalty (see
    SamplingOptions); seed or generator for reproducible draws. For prompts of different lengths,
    stop tokens or stop strings, use generate_batch or stream.
    """
    ids, real, T, options, generator = _start(
        model, idx, max_new_tokens, seed, generator, dict(sampling, temperature=temperature, top_k=top_k)
    )
    for _ in _token_steps(model, ids, real, T, options, generator):
        pass
    return ids


# ---------------------------------------------------------------------------------------- streams
@dataclass
class GenerationStats:
    """Timing of one stream(), filled in as it runs: the first step reads the prompt (prefill),
    the others one token per sequence each (decode). Time spent by the consumer between steps
    is not counted."""

    prompt_tokens: int = 0  # over the batch, padding excluded
    prefill_seconds: float = 0.0
    new_tokens: int = 0  # tokens sampled, over the batch (stop tokens and held-back ones included)
    decode_tokens: int = 0  # of which after the first step
    decode_seconds: float = 0.0

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0


@torch.no_grad()
def stream(
    model,
    prompts: Sequence[Sequence[int]] | torch.Tensor,
    max_new_tokens: int,
    *,
    stop_token_ids: Iterable[int] = (),
    stop_strings: Sequence[str] = (),
    tokenizer=None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    stats: GenerationStats | None = None,
    **sampling,
) -> Iterator[list[list[int]]]:
    """Generate for a batch of prompts (token-id lists of any lengths), yielding at each step the
    new tokens of every prompt: a list of B lists, usually [token] or [] (finished, or holding
    back a possible start of a stop string).

    A prompt's generation ends at one of stop_token_ids or at one of stop_strings (which need
    `tokenizer`); neither is emitted. Iteration ends when every prompt has ended or after
    max_new_tokens steps. Sampling keywords: see SamplingOptions. stats: a GenerationStats to
    fill in with the prefill and decode timings. With a tokenizer, only ids it can decode are
    sampled (a model's vocabulary may be padded beyond its tokenizer's, e.g. 50304 for gpt2).
    """
    stop_ids = check_stops(stop_token_ids, stop_strings, tokenizer, model.config.vocab_size)
    ids, real, T, options, generator = _start(model, prompts, max_new_tokens, seed, generator, sampling)
    B = ids.shape[0]
    watchers = [StopStringWatcher(tokenizer, stop_strings) if stop_strings else None for _ in range(B)]
    finished = [False] * B
    stats = stats if stats is not None else GenerationStats()
    stats.__init__(prompt_tokens=int(real[:, :T].sum()) if real is not None else B * T)  # a reused one starts over
    padded = tokenizer is not None and tokenizer.vocab_size < model.config.vocab_size
    steps = _token_steps(model, ids, real, T, options, generator, tokenizer.vocab_size if padded else None)
    while True:
        started = time.perf_counter()
        tokens = next(steps, None)
        if tokens is None:
            break
        tokens = tokens.tolist()  # on a GPU, this waits for the step's kernels: part of its time
        if stats.new_tokens == 0:
            stats.prefill_seconds = time.perf_counter() - started
        else:
            stats.decode_seconds += time.perf_counter() - started
            stats.decode_tokens += B
        stats.new_tokens += B
        step: list[list[int]] = [[] for _ in range(B)]
        for row, token in enumerate(tokens):
            if finished[row]:
                continue
            watcher = watchers[row]
            if token in stop_ids:
                finished[row] = True
                step[row] = watcher.flush() if watcher else []
            elif watcher:
                step[row] = watcher.push(token)
                finished[row] = watcher.stopped
            else:
                step[row] = [token]
        yield step
        if all(finished):
            return
    tail = [watcher.flush() if watcher and not done else [] for watcher, done in zip(watchers, finished)]
    if any(tail):
        yield tail


def generate_batch(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, **options) -> list[list[int]]:
    """The new tokens of each prompt (lists of ids, of any lengths): stream() collected.

    Prompts are left-padded into one batch; each gets the same tokens as it would alone.
    """
    outputs: list[list[int]] = [[] for _ in prompts]
    for step in stream(model, prompts, max_new_tokens, **options):
        for output, new in zip(outputs, step):
            output.extend(new)
    return outputs


def stream_text(
    model, tokenizer, prompt: str, max_new_tokens: int, *, stop_strings: Sequence[str] = (), **options
) -> Iterator[str]:
    """Continue `prompt` (text), yielding the new text piece by piece as it is produced.

    Text is held back while it ends in an unfinished multi-byte character or in what could be the
    start of a stop string; output ends just before a stop string. Other keywords: see stream().
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt:
        raise ValueError("the prompt is empty: give some text to continue")
    check_stops((), stop_strings, tokenizer, model.config.vocab_size)
    pending: list[int] = []  # tokens whose text is not all shown yet (see StopStringWatcher)
    shown = 0  # characters of their text already yielded
    for step in stream(model, [tokenizer.encode(prompt)], max_new_tokens, tokenizer=tokenizer, **options):
        pending += step[0]
        text = tokenizer.decode(pending)
        safe, stopped = scan_for_stop(text.rstrip(REPLACEMENT_CHARACTER), stop_strings)  # see StopStringWatcher
        if safe > shown:
            yield text[shown:safe]
            shown = safe
        if stopped:
            return
        settled = settled_tokens(tokenizer, pending, text[:shown])  # shown in full: decode them no more
        shown -= len(tokenizer.decode(pending[:settled]))
        pending = pending[settled:]
    text = tokenizer.decode(pending)
    if len(text) > shown:
        yield text[shown:]
