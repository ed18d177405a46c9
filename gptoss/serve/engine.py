"""The one decode loop of the server: continuous batching over one KV cache.

Requests come in as token ids with their own sampling settings and limits. A thread runs the loop:

    1. admit waiting requests (up to max_batch rows): each new prompt is prefilled alone, in its
       own batch-1 KV cache, and its first token sampled;
    2. if the set of rows changed (one joined, one left), rebuild the batch's KV cache from the
       rows' caches (`merge_caches`): every row right-aligned, so that the next column is the next
       token of every row, and the columns before a short row are empty slots (position -1);
    3. one decode step for the whole batch: the last token of each row in, (B, vocab) logits out,
       each row sampled with its own options and generator;
    4. rows that finished (stop token, stop string, max_tokens) or whose client went away leave.

So a request that arrives while others are decoding joins the batch at the next step, and one that
ends leaves it at once: continuous batching. The model's attention masks come from the cache's slot
positions, so rows of different lengths never see each other's slots.

The engine knows token ids and callbacks only: no HTTP, no text beyond the tokenizer that stop
strings need. Each request's `emit(tokens, finish)` is called from the loop's thread.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from gptoss.inference.sampling import SamplingOptions, sample_next
from gptoss.inference.stops import StopStringWatcher
from gptoss.kv_cache import KVCache


class QueueFull(Exception):
    """The engine's waiting queue is full: the client should come back later."""


@dataclass(eq=False)
class Request:
    """One generation: prompt ids, limits and sampling, and where its tokens go.

    emit(tokens, finish): called with the new tokens that may be shown (a list, maybe empty) and
    None, then once with finish = "stop" | "length" | "cancelled" | "error". stop_token is the stop
    token that ended it (None otherwise), completion_tokens the tokens the model sampled for it.
    """

    prompt: list[int]
    max_tokens: int
    emit: Callable[[list[int], str | None], None]
    options: SamplingOptions = field(default_factory=SamplingOptions)
    seed: int | None = None
    stop_token_ids: frozenset[int] = frozenset()
    stop_strings: Sequence[str] = ()
    cancelled: bool = False
    stop_token: int | None = None
    completion_tokens: int = 0
    first_token_time: float | None = None

    def cancel(self) -> None:
        """Ask the engine to drop this request at its next step (the client has gone)."""
        self.cancelled = True


class _Row:
    """A request being decoded: its own cache until it is merged, its last token, its watcher."""

    def __init__(self, request: Request, cache: KVCache, token: int, generator, tokenizer):
        self.request, self.cache, self.index = request, cache, 0
        self.token = token
        self.generator = generator
        self.watcher = StopStringWatcher(tokenizer, request.stop_strings) if request.stop_strings else None
        self.finish: str | None = None


def cache_capacity(config, need: int) -> int:
    """The capacity of a cache that must hold `need` columns. With sliding layers, at least one more
    than the window, so that every cache the engine makes has the same kinds of layers (ring buffers
    for the sliding ones) and rows can move between them."""
    floor = config.sliding_window + 1 if config.sliding_window is not None else 1
    return min(config.max_seq_len, max(need, floor))


def merge_caches(model, rows: Sequence[tuple[KVCache, int]], room: int) -> KVCache:
    """One batch cache from rows of other caches: rows[i] = (cache, row index) becomes row i.

    Every row is right-aligned: a row with n tokens so far (its next position) fills the last n
    columns; the columns before it are empty slots (position -1), masked out by their position.
    Appending layers copy columns; a ring buffer (sliding layers) writes column c at slot c % window,
    so a row moved from a cache of length L0 to one of length L is rolled by L - L0. room: columns
    to leave free for the steps to come.
    """
    spans = [int(cache.next_position[r]) for cache, r in rows]
    length = max(spans)
    merged = model.new_cache(len(rows), cache_capacity(model.config, length + room))
    for kind, slots in merged.kinds.items():
        for i, (cache, r) in enumerate(rows):
            source = cache.kinds[kind]
            if slots.ring:
                slots.pos[i] = source.pos[r].roll(length - cache.length)
            else:
                slots.pos[i, length - spans[i] : length] = source.pos[r, cache.length - spans[i] : cache.length]
        slots.seen = length
    for number, (layer, kind) in enumerate(zip(merged.layers, merged.layer_kinds)):
        for i, (cache, r) in enumerate(rows):
            source = cache.layers[number]
            for name in ("k", "v"):
                target, values = getattr(layer, name), getattr(source, name)[r]  # (kv_heads, capacity, head_size)
                if merged.kinds[kind].ring:
                    target[i] = values.roll(length - cache.length, dims=1)
                else:
                    target[i, :, length - spans[i] : length] = values[:, cache.length - spans[i] : cache.length]
    merged.length = length
    merged.has_padding = True  # empty slots before the short rows: attention masks from positions
    merged.next_position = torch.tensor(spans, dtype=torch.long, device=merged.next_position.device)
    return merged


class Engine:
    """The decode loop over a model, in a thread of its own (start() / stop()).

    max_batch: rows decoded together; max_queue: requests that may wait for a row, beyond which
    submit() raises QueueFull. vocab_limit: sample only ids below it (a vocabulary padded beyond its
    tokenizer's). tokenizer: for stop strings.
    """

    def __init__(self, model, tokenizer=None, *, max_batch: int = 16, max_queue: int = 64, vocab_limit: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_queue, self.vocab_limit = max_batch, max_queue, vocab_limit
        self.device = model.lm_head.weight.device
        self.waiting: deque[Request] = deque()
        self.calls: deque[tuple[Callable, Future]] = deque()  # work for the model between steps (see call)
        self.rows: list[_Row] = []
        self.batch: KVCache | None = None  # the rows' merged cache; None when it must be rebuilt
        self.wake = threading.Condition()
        self.running = False
        self.thread: threading.Thread | None = None
        self.steps = 0  # decode steps run (for tests and stats)

    # ------------------------------------------------------------------ the HTTP side's interface
    def submit(self, request: Request) -> None:
        """Queue a request (checked by the caller: prompt + max_tokens fits the context)."""
        with self.wake:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"the server is busy: {len(self.waiting)} requests are already waiting")
            self.waiting.append(request)
            self.wake.notify()

    def call(self, fn: Callable) -> Future:
        """Run fn() on the loop's thread between two decode steps, so that it may use the model
        (no step runs meanwhile); its result, or its exception, comes in the Future."""
        future: Future = Future()
        with self.wake:
            self.calls.append((fn, future))
            self.wake.notify()
        return future

    @property
    def active(self) -> int:
        """Rows being decoded now."""
        return len(self.rows)

    def start(self) -> Engine:
        self.running = True
        self.thread = threading.Thread(target=self._loop, name="gptoss-engine", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.wake:
            self.running = False
            self.wake.notify()
        if self.thread is not None:
            self.thread.join()

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while True:
            with self.wake:
                while self.running and not self.rows and not self.waiting and not self.calls:
                    self.wake.wait()
                if not self.running:
                    break
                calls, self.calls = list(self.calls), deque()
            for fn, future in calls:
                try:
                    future.set_result(fn())
                except Exception as error:  # the caller's to handle
                    future.set_exception(error)
            try:
                with torch.inference_mode():
                    self._admit()
                    if self.rows:
                        self._step()
            except Exception as error:  # a bug, not bad input (that is refused before submit): fail the batch, keep serving
                for row in self.rows:
                    row.request.emit([], "error")
                self.rows, self.batch = [], None
                print(f"gptoss serve: decode step failed: {error!r}")
        for row in self.rows:
            row.request.emit([], "cancelled")
        for request in self.waiting:
            request.emit([], "cancelled")
        for _, future in self.calls:
            future.cancel()

    def _admit(self) -> None:
        """Move waiting requests into the batch while rows are free and they fit the context."""
        while len(self.rows) < self.max_batch:
            with self.wake:
                if not self.waiting:
                    return
                request = self.waiting[0]
                if not request.cancelled and not self._fits(request):
                    return  # it waits until rows leave
                self.waiting.popleft()
            if request.cancelled:
                request.emit([], "cancelled")
                continue
            self._prefill(request)

    def _fits(self, request: Request) -> bool:
        """Whether the merged cache with this request can hold every row's remaining tokens."""
        spans = [int(r.cache.next_position[r.index]) for r in self.rows] + [len(request.prompt)]
        rooms = [r.request.max_tokens - r.request.completion_tokens for r in self.rows] + [request.max_tokens]
        return max(spans) + max(rooms) <= self.model.config.max_seq_len

    def _prefill(self, request: Request) -> None:
        """Read the prompt into a batch-1 cache of its own and sample the first token."""
        cache = self.model.new_cache(1, cache_capacity(self.model.config, len(request.prompt) + 1))
        ids = torch.tensor([request.prompt], dtype=torch.long, device=self.device)
        logits = self.model(ids, cache=cache, logits_to_keep=1)[:, -1]
        generator = torch.Generator(device=self.device).manual_seed(request.seed) if request.seed is not None else None
        row = _Row(request, cache, 0, generator, self.tokenizer)
        self._take(row, self._sample(row, logits))
        if row.finish is None:
            self.rows.append(row)
            self.batch = None

    def _sample(self, row: _Row, logits: torch.Tensor) -> int:
        """The row's next token from its logits (1, vocab), with its own options and generator."""
        if self.vocab_limit is not None:
            logits[:, self.vocab_limit :] = -math.inf
        return int(sample_next(logits, row.request.options, row.generator))

    def _take(self, row: _Row, token: int) -> None:
        """Record a sampled token: emit what may be shown, decide whether the row is done."""
        request = row.request
        request.completion_tokens += 1
        if request.first_token_time is None:
            request.first_token_time = time.perf_counter()
        row.token = token
        if token in request.stop_token_ids:
            request.stop_token, row.finish = token, "stop"
            shown = row.watcher.flush() if row.watcher else []
        elif row.watcher:
            shown = row.watcher.push(token)
            row.finish = "stop" if row.watcher.stopped else None
        else:
            shown = [token]
        if row.finish is None and request.completion_tokens >= request.max_tokens:
            row.finish = "length"
            shown += row.watcher.flush() if row.watcher else []
        request.emit(shown, None)
        if row.finish is not None:
            request.emit([], row.finish)

    def _step(self) -> None:
        """One decode step for every row, then drop the rows that are done."""
        if self.batch is None:
            room = max(r.request.max_tokens - r.request.completion_tokens for r in self.rows)
            self.batch = merge_caches(self.model, [(r.cache, r.index) for r in self.rows], room)
            for i, row in enumerate(self.rows):
                row.cache, row.index = self.batch, i
        tokens = torch.tensor([[r.token] for r in self.rows], dtype=torch.long, device=self.device)
        logits = self.model(tokens, cache=self.batch, logits_to_keep=1)[:, -1]  # (B, vocab)
        self.steps += 1
        for i, row in enumerate(self.rows):
            if row.request.cancelled:
                row.finish = "cancelled"
                row.request.emit([], "cancelled")
            else:
                self._take(row, self._sample(row, logits[i : i + 1]))
        if any(r.finish is not None for r in self.rows):
            self.rows = [r for r in self.rows if r.finish is None]
            self.batch = None  # rebuilt without them (and trimmed) before the next step
