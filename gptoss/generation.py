"""Autoregressive generation: prefill the prompts once into a KV cache, then one token per step.

Entry points, from the most basic to the most complete:

    generate(model, idx, n)               ids (B, T) -> ids (B, T + n): the seed's API
    stream(model, prompts, n, ...)        an iterator over steps, for prompts of different lengths
                                          (left-padded), with stop tokens and stop strings
    generate_batch(model, prompts, n)     stream() collected: one list of new ids per prompt
    stream_text(model, tokenizer, s, n)   text in, text pieces out as they are produced

All share one loop (`_token_steps`): the prompts sit left-padded in a preallocated buffer of
(B, T + n) ids, and each step writes one sampled column into it. Sampling options (temperature,
top_k, top_p, min_p, repetition_penalty) are gptoss.sampling.SamplingOptions fields, passed as
keywords.

Past the context limit (prompt + n > max_seq_len): a model with learned positions (GPT-2) falls
back to the seed's sliding crop once the text outgrows the context, re-reading the last
max_seq_len tokens at every step (slow, but unlimited; the cache serves the steps before that); a rotary (gpt-oss) model raises a ValueError, since cropping would silently
drop context that its 131k-token window was built to keep.

For speed on a CPU, call prepare_for_inference(model) once first (see its doc).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptoss import cpu_kernel
from gptoss.devices import DEVICE_HELP, resolve_device
from gptoss.sampling import SamplingOptions, sample_next

REPLACEMENT_CHARACTER = "\ufffd"  # what a decoder shows for the first bytes of an unfinished character


# ---------------------------------------------------------------------------------------- speed
class InferenceLinear(nn.Linear):
    """nn.Linear made fast at inference on a CPU. Same parameters, same state dict, same results (to
    float rounding); with autograd on (training), it is plain nn.Linear.

    Why: decoding one token multiplies a vector by every weight matrix, so its speed is the speed
    at which those matrices are read. F.linear reads them at about half the machine's bandwidth:
    in fp32 it calls MKL, whose matrix-vector product runs on one core; in bf16 it calls oneDNN,
    which re-lays the weight at every call. So the weight is laid out once, for reading, in a
    copy (docs/inference.md has the numbers):

    - fp32: the tiles of gptoss/cpu_kernel.c, whose C loop reads each thread's share of the
      weight in one stream, close to the memory's speed, for one row of input or many;
    - bf16, or fp32 where that kernel cannot be built (no C compiler): oneDNN's own layout, for
      its inner product (at batch 1 it reads at ~60-80% of the memory's speed).

    The costs: memory, the copy of each weight; and time, a few us more per call than F.linear,
    which is why small weights are left alone (see MIN_PACKED_WEIGHT).
    """

    def pack(self) -> None:
        """(Re)build the copy of the weight laid out for reading: the C kernel's tiles (fp32, when
        it is available), else oneDNN's layout."""
        weight = self.weight.detach()
        use_kernel = weight.dtype == torch.float32 and cpu_kernel.library() is not None
        self.tiles = cpu_kernel.pack_tiles(weight) if use_kernel else None
        self.packed_weight = None if use_kernel else torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        self.packed_from = (weight.data_ptr(), self.weight._version)

    def __getstate__(self) -> dict:
        """Copies and pickles leave out the packed copy (derived, as large as the weight): the
        first call rebuilds it."""
        return {**self.__dict__, "tiles": None, "packed_weight": None, "packed_from": None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ~9 us a call in all (F.linear: ~5), ~50 calls per decoding step: every attribute read counts
        weight = self.weight
        if torch.is_grad_enabled() or not (x.is_cpu and weight.is_cpu) or x.dtype != weight.dtype:
            return F.linear(x, weight, self.bias)
        if self.packed_from != (weight.data_ptr(), weight._version):
            self.pack()  # the weight was changed (trained, loaded, cast) since packing
        if self.tiles is not None:
            return cpu_kernel.linear(x, self.tiles, self.bias, self.out_features)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")


# Weights smaller than this (elements) stay plain nn.Linear: reading them takes less time than
# the packed paths' extra call overhead (a 768 x 768 fp32 matrix, 2.4 MB, takes ~90 us at 27 GB/s).
MIN_PACKED_WEIGHT = 2**18


@torch.no_grad()
def prepare_for_inference(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Make `model` fast at generating on a CPU, in place, and return it: eval mode, optionally
    cast to `dtype` (torch.bfloat16 halves the bytes read per token), and every fp32/bf16 CPU
    nn.Linear of at least MIN_PACKED_WEIGHT weights turned into an InferenceLinear (only its forward
    differs, so names, checkpoints and tied weights are untouched)."""
    model.eval()
    if dtype is not None:
        model.to(dtype)
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return model
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.numel() >= MIN_PACKED_WEIGHT:
            weight = module.weight
            if weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16):
                module.__class__ = InferenceLinear
                module.pack()
    return model


# ---------------------------------------------------------------------------------------- checks
def check_max_new_tokens(max_new_tokens: int) -> None:
    """Raise TypeError/ValueError unless max_new_tokens is an int >= 0."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise TypeError(f"max_new_tokens must be an int, got {type(max_new_tokens).__name__}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")


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
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    return torch.Generator(device=device).manual_seed(seed)


def left_pad(model, prompts: Sequence[Sequence[int]] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Batch prompts of different lengths: ids (B, T) left-padded with 0, on the model's device, and
    a (B, T) bool mask (False = padding), or None when no prompt is padded."""
    device = model.lm_head.weight.device
    if isinstance(prompts, torch.Tensor):
        model.check_input(prompts)  # also refuses an empty prompt
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
    ids = torch.tensor([[0] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long, device=device)
    model.check_input(ids)
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


@torch.inference_mode()  # no autograd bookkeeping at all: ~5% of a GPT-2 small decoding step here
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
    check_max_new_tokens(max_new_tokens)
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


# ---------------------------------------------------------------------------------------- stops
def scan_for_stop(text: str, stop_strings: Sequence[str]) -> tuple[int, bool]:
    """(how many leading characters of `text` are safe to show, whether a stop string occurs).

    Safe means before the first stop string, and before a tail that could still grow into one
    (text ending in "<|e" while "<|end|>" is a stop string): that tail is held back until the next
    tokens tell.
    """
    hits = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    if hits:
        return min(hits), True
    held = max((k for s in stop_strings for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return len(text) - held, False


def settled_tokens(tokenizer, tokens: Sequence[int], safe_text: str) -> int:
    """The most leading `tokens` whose text lies wholly inside `safe_text`, the start of their
    decoded text. A token that ends mid-character decodes to U+FFFD on its own, so it settles
    together with the token that finishes the character: every prefix is tried, not only up to the
    first that fails."""
    settled = 0
    for count in range(1, len(tokens) + 1):
        text = tokenizer.decode(tokens[:count])
        if len(text) > len(safe_text) + 1:  # past it (+1: an unfinished character shows as one U+FFFD)
            break
        if safe_text.startswith(text):
            settled = count
    return settled


class StopStringWatcher:
    """Per sequence: which generated tokens may be emitted, given stop strings on the decoded text.

    A token is released once its text lies wholly in the safe part of the continuation (see
    scan_for_stop). When a stop string appears, generation of this sequence ends; the tokens whose
    text reaches into the stop string are never released.

    Released text can never be where a stop string starts (it is neither one nor the start of one
    that the next text could complete), so only the pending tokens are decoded at each step: the
    work per token stays small however long the generation.
    """

    def __init__(self, tokenizer, stop_strings: Sequence[str]):
        self.tokenizer, self.stop_strings = tokenizer, stop_strings
        self.pending: list[int] = []  # generated tokens not released yet
        self.stopped = False

    def push(self, token: int) -> list[int]:
        """Add one generated token; return the tokens that became safe to emit."""
        self.pending.append(token)
        text = self.tokenizer.decode(self.pending)
        # an unfinished character at the end (decoded as U+FFFD for now) may complete a stop string,
        # or begin one: scan the text before it, so that a stop string's start is held back there too
        safe, self.stopped = scan_for_stop(text.rstrip(REPLACEMENT_CHARACTER), self.stop_strings)
        released = settled_tokens(self.tokenizer, self.pending, text[:safe])
        out, self.pending = self.pending[:released], self.pending[released:]
        return out

    def flush(self) -> list[int]:
        """Release every held token: generation ended without completing a stop string."""
        out, self.pending = self.pending, []
        return out


def check_stops(stop_token_ids: Iterable[int], stop_strings: Sequence[str], tokenizer, vocab_size: int) -> set[int]:
    """Validate the stop options; returns the stop ids as a set."""
    stop_ids = set(stop_token_ids)
    bad = [i for i in stop_ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"stop_token_ids must be ids in [0, {vocab_size}), got {bad}")
    if isinstance(stop_strings, str):
        raise TypeError("stop_strings must be a list of strings, e.g. ['\\n\\n'], not one string")
    if any(not isinstance(s, str) or not s for s in stop_strings):
        raise ValueError(f"stop_strings must be non-empty strings, got {list(stop_strings)!r}")
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need the tokenizer (tokenizer=...) to decode the generated tokens")
    return stop_ids


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


# ---------------------------------------------------------------------------------------- command line
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def add_model_arguments(parser) -> None:
    """The options that pick a model, its tokenizer and how it runs (shared with `gptoss chat`)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="DIR", help="a checkpoint directory: this project's, Hugging Face GPT-2 / gpt-oss, or OpenAI's gpt-oss")
    source.add_argument("--preset", help="a model preset with random weights (for speed checks; its text is noise), e.g. gpt2-small")
    parser.add_argument("--tokenizer", help="tokenizer kind (gpt2, o200k_harmony) or saved tokenizer folder; default: the checkpoint's own, "
                        "else gpt2 for GPT-2 models and o200k_harmony for gpt-oss ones")
    parser.add_argument("--tokenizer-files", metavar="DIR", help="folder with OpenAI's tokenizer files, for offline gpt2 / o200k_harmony")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="compute in this dtype (default: as stored; presets: float32)")
    parser.add_argument("--device", default="auto", help=f"where the model runs: {DEVICE_HELP} (default: auto)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's, one per core)")


def add_sampling_arguments(parser, max_new_tokens: int | str) -> None:
    """The sampling options (see gptoss.sampling.SamplingOptions). max_new_tokens: the default, or
    how the command chooses it (a str for the help; the option is then None when not given)."""
    default = max_new_tokens if isinstance(max_new_tokens, int) else None
    parser.add_argument("--max-new-tokens", type=int, default=default, help=f"at most this many new tokens (default: {max_new_tokens})")
    randomness = parser.add_mutually_exclusive_group()
    randomness.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: 1.0; 0 is greedy)")
    randomness.add_argument("--greedy", action="store_true", help="always pick the most likely token (temperature 0)")
    parser.add_argument("--top-k", type=int, help="sample among the k most likely tokens only")
    parser.add_argument("--top-p", type=float, help="sample among the most likely tokens that make up probability p, in (0, 1]")
    parser.add_argument("--min-p", type=float, help="drop tokens less likely than min_p times the most likely one")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages tokens already present (default: 1, none)")
    parser.add_argument("--seed", type=int, help="random seed, for reproducible sampling (and preset weights)")


def sampling_arguments(args) -> dict:
    """The keyword arguments of stream() chosen on the command line."""
    temperature = 0.0 if args.greedy else (1.0 if args.temperature is None else args.temperature)
    return dict(
        temperature=temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        repetition_penalty=args.repetition_penalty, seed=args.seed,
    )


def load_model_and_tokenizer(args):
    """The model (prepared for inference) and tokenizer that the command-line options describe."""
    from gptoss.config import GPTConfig
    from gptoss.model import GPT
    from gptoss.pretrained import load_checkpoint_tokenizer
    from gptoss.tokenizers import TIKTOKEN_KINDS, build_tokenizer, load_tokenizer

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype] if args.dtype else None
    device = resolve_device(args.device)

    def named_tokenizer(name: str):
        if name in TIKTOKEN_KINDS:
            return build_tokenizer(name, files_dir=args.tokenizer_files)
        if not Path(name).is_dir():
            raise ValueError(f"--tokenizer {name!r} is neither a kind ({', '.join(TIKTOKEN_KINDS)}) nor a saved tokenizer folder")
        return load_tokenizer(name, files_dir=args.tokenizer_files)

    if args.preset:
        tokenizer = named_tokenizer(args.tokenizer or ("gpt2" if GPTConfig.preset(args.preset).position == "learned" else "o200k_harmony"))
        torch.manual_seed(args.seed or 0)
        model = GPT(GPTConfig.preset(args.preset, vocab_size=tokenizer.vocab_size, dropout=0.0)).to(device)
        if args.seed is None:
            torch.seed()  # fixed weights, but sampling without --seed stays random
    else:
        model = GPT.from_pretrained(args.checkpoint, dtype=dtype, device=device)
        tokenizer = named_tokenizer(args.tokenizer) if args.tokenizer else load_checkpoint_tokenizer(args.checkpoint)
        if tokenizer is None:
            guess = {50257: "gpt2", 201088: "o200k_harmony"}.get(model.config.vocab_size)
            if guess is None:
                raise ValueError(f"{args.checkpoint} holds no tokenizer: name one with --tokenizer")
            tokenizer = named_tokenizer(guess)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"the {tokenizer.kind} tokenizer has {tokenizer.vocab_size:,} ids but the model only "
            f"{model.config.vocab_size:,}: use the tokenizer the model was trained with"
        )
    return prepare_for_inference(model, dtype), tokenizer


def read_prompt(args) -> str:
    """The prompt text: --prompt, or the contents of --prompt-file ('-' reads standard input)."""
    if args.prompt is not None:
        return args.prompt
    if args.prompt_file == "-":
        return sys.stdin.read()
    return Path(args.prompt_file).read_text(encoding="utf-8")


def register_cli(subparsers) -> None:
    """Add the `generate` verb: `gptoss generate --checkpoint DIR --prompt "Once upon a time"`."""
    parser = subparsers.add_parser(
        "generate",
        help="continue a prompt, streaming the text as it is produced",
        description="Continue a prompt with a model, streaming the new text to standard output as it is "
        "produced; then print the prefill and decode speed (tokens/s) to standard error.",
    )
    add_model_arguments(parser)
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the text to continue")
    prompt.add_argument("--prompt-file", metavar="FILE", help="read the text to continue from FILE ('-': standard input)")
    add_sampling_arguments(parser, max_new_tokens=200)
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT", help="end the text before TEXT (repeatable)")
    parser.add_argument("--stop-token-id", action="append", type=int, default=[], metavar="ID", help="end at token ID (repeatable)")
    parser.add_argument("--ignore-eot", action="store_true", help="do not stop at the tokenizer's end-of-text token (nor at gpt-oss's <|return|>, <|call|>)")
    parser.set_defaults(func=_run_generate)


def _run_generate(args) -> int:
    try:
        model, tokenizer = load_model_and_tokenizer(args)
        text = read_prompt(args)
        stop_ids = list(args.stop_token_id)
        if tokenizer.eot_id is not None and not args.ignore_eot:
            stop_ids.append(tokenizer.eot_id)
            if tokenizer.kind == "o200k_harmony":  # gpt-oss ends a message with <|return|> or <|call|>
                stop_ids += tokenizer.encode("<|return|><|call|>")
        stats = GenerationStats()
        pieces = stream_text(
            model, tokenizer, text, args.max_new_tokens, stop_strings=args.stop, stop_token_ids=stop_ids,
            stats=stats, **sampling_arguments(args),
        )
        first = next(pieces, "")  # bad options raise here, before any output
    except (ValueError, TypeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.preset:
        print(f"(random weights: preset {args.preset}; the text is noise)", file=sys.stderr)
    sys.stdout.write(text + first)
    sys.stdout.flush()
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    device = model.lm_head.weight.device
    where = f"cpu, {torch.get_num_threads()} threads" if device.type == "cpu" else str(device)
    decoding = f"{stats.decode_tokens_per_second:.1f} tokens/s" if stats.decode_tokens else "n/a (one step)"
    print(
        f"[{stats.prompt_tokens} prompt tokens at {stats.prefill_tokens_per_second:.1f} tokens/s, "
        f"{stats.new_tokens} new tokens sampled, decoding at {decoding}; {model.lm_head.weight.dtype}, {where}]",
        file=sys.stderr,
    )
    return 0
