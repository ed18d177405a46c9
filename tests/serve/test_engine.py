"""The serving engine: continuous batching gives every request the tokens it gets alone."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from gptoss.config import GPTConfig
from gptoss.inference.generation import generate_batch
from gptoss.inference.sampling import SamplingOptions
from gptoss.model import GPT
from gptoss.serve.engine import Engine, QueueFull, Request


def collect(engine, prompts, max_tokens, delay=0.02, **request_options):
    """Submit the prompts one after another (so that later ones join a running batch); wait for all."""
    outputs, finishes, done = [[] for _ in prompts], [None] * len(prompts), threading.Event()

    def emitter(i):
        def emit(tokens, finish):
            outputs[i].extend(tokens)
            if finish is not None:
                finishes[i] = finish
                if all(f is not None for f in finishes):
                    done.set()
        return emit

    for i, prompt in enumerate(prompts):
        engine.submit(Request(prompt, max_tokens, emitter(i), **request_options))
        time.sleep(delay)
    assert done.wait(60), "the engine did not finish every request"
    return outputs, finishes


@pytest.mark.parametrize("preset", ["tiny", "gpt-oss-tiny"])  # gpt-oss-tiny: ring buffers (window 32)
def test_joining_rows_get_the_tokens_they_get_alone(preset):
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset(preset, vocab_size=300)).eval()
    prompts = [list(range(1, 1 + n)) for n in (3, 40, 7, 50, 1)]  # longer than the window, too
    alone = [generate_batch(model, [p], 45, temperature=0)[0] for p in prompts]
    engine = Engine(model, max_batch=3).start()  # 5 requests, 3 rows: some wait, some join mid-batch
    try:
        outputs, finishes = collect(engine, prompts, 45, options=SamplingOptions(temperature=0))
    finally:
        engine.stop()
    assert outputs == alone
    assert finishes == ["length"] * 5
    assert engine.steps < 5 * 44  # decoded together, not one after another


def test_seeded_sampling_matches_generate_and_stop_tokens_end_a_row():
    torch.manual_seed(1)
    model = GPT(GPTConfig.preset("tiny", vocab_size=300)).eval()
    prompts = [[5, 6, 7], [9] * 12]
    options = dict(temperature=0.9, top_p=0.95)
    alone = [generate_batch(model, [p], 30, seed=3, **options)[0] for p in prompts]
    stop = alone[1][10]  # a token the second request samples: it ends there
    engine = Engine(model).start()
    try:
        outputs, finishes = collect(engine, prompts, 30, options=SamplingOptions(**options), seed=3,
                                    stop_token_ids=frozenset([stop]))  # fmt: skip
    finally:
        engine.stop()
    for output, reference, finish in zip(outputs, alone, finishes):
        end = reference.index(stop) if stop in reference else len(reference)
        assert output == reference[:end]
        assert finish == ("stop" if stop in reference else "length")


def test_cancelled_request_frees_its_row_and_a_full_queue_refuses_at_once():
    model = GPT(GPTConfig.preset("tiny", vocab_size=300)).eval()
    engine = Engine(model, max_batch=1, max_queue=1).start()
    finishes = []
    try:
        first = Request([1, 2], 200, lambda tokens, finish: finish and finishes.append(("first", finish)))
        engine.submit(first)
        while engine.active == 0:
            time.sleep(0.005)
        engine.submit(Request([3], 5, lambda tokens, finish: finish and finishes.append(("second", finish))))
        started = time.perf_counter()
        with pytest.raises(QueueFull):
            engine.submit(Request([4], 5, lambda tokens, finish: None))
        assert time.perf_counter() - started < 0.1
        first.cancel()  # the client went away: its row goes at the next step, the waiting one gets it
        deadline = time.monotonic() + 30
        while len(finishes) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        engine.stop()
    assert finishes == [("first", "cancelled"), ("second", "length")]
    assert first.completion_tokens < 200


def test_calls_run_between_steps_on_the_loops_thread():
    model = GPT(GPTConfig.preset("tiny", vocab_size=300)).eval()
    engine = Engine(model).start()
    try:
        finishes = []
        engine.submit(Request([1, 2], 100, lambda tokens, finish: finish and finishes.append(finish)))
        while engine.active == 0:
            time.sleep(0.005)
        steps = engine.steps
        assert engine.call(lambda: (threading.current_thread().name, engine.steps >= steps)).result(10) == ("gptoss-engine", True)
        with pytest.raises(ZeroDivisionError):  # the caller's error comes back to the caller; the loop goes on
            engine.call(lambda: 1 / 0).result(10)
        deadline = time.monotonic() + 30
        while not finishes and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        engine.stop()
    assert finishes == ["length"]
