"""Generation: KV-cache parity with the full forward pass, greedy equality with transformers,
left-padded batches, streaming, stop tokens and stop strings, and bad input."""

import string

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2LMHeadModel, GptOssConfig, GptOssForCausalLM

from gptoss import GPT, GPTConfig
from gptoss.inference import cpu_kernel
from gptoss.inference.prepare import onednn_packs
from gptoss.inference import InferenceLinear, generate, generate_batch, prepare_for_inference, stream, stream_text
from gptoss.checkpoints.hf import config_to_hf_gpt2, config_to_hf_gpt_oss, gpt2_state_from_hf, gpt_oss_state_from_hf
from gptoss.data.tokenizers import build_tokenizer

# the sequences below (up to 40 tokens) are longer than the gpt-oss window (6), so its ring buffers wrap
CONFIGS = {
    "gpt2": GPTConfig.preset("tiny", vocab_size=97, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_seq_len=64),
    "gpt-oss": GPTConfig.preset(
        "gpt-oss-tiny", vocab_size=97, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8,
        d_ff=16, num_experts=4, experts_per_token=2, sliding_window=6, max_seq_len=64,
    ),
}


def random_model(config: GPTConfig, seed: int = 0) -> GPT:
    """A model with random weights, sinks included (they are zero at init)."""
    torch.manual_seed(seed)
    model = GPT(config).eval()
    with torch.no_grad():
        for block in model.transformer.h:
            if block.attn.sinks is not None:
                block.attn.sinks.normal_()
    return model


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model(request):
    return random_model(CONFIGS[request.param])


# ------------------------------------------------------------------------------ cache parity
@pytest.mark.parametrize("prefill", [1, 5, 17])
def test_cached_logits_equal_full_forward_at_every_step(model, prefill):
    """Prefill a prompt into the cache, then feed one token at a time: each step's logits equal
    those of one full forward pass over the whole sequence (40 tokens, beyond the window)."""
    seq = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(prefill))
    with torch.no_grad():
        full = model(seq)  # (2, 40, vocab)
        cache = model.new_cache(2)
        steps = [model(seq[:, :prefill], cache=cache)]
        steps += [model(seq[:, t : t + 1], cache=cache) for t in range(prefill, 40)]
    cached = torch.cat(steps, dim=1)
    assert (cached - full).abs().max() <= 1e-5


def test_chunked_prefill_equals_full_forward(model):
    """Chunks longer than the window (a ring buffer gets more tokens than it holds at once)."""
    seq = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(seq)
        cache = model.new_cache(1)
        cached = torch.cat([model(seq[:, a : a + 13], cache=cache) for a in range(0, 40, 13)], dim=1)
    assert (cached - full).abs().max() <= 1e-5


def test_cache_is_preallocated_and_ring_buffers_hold_the_window():
    model = random_model(CONFIGS["gpt-oss"])
    cache = model.new_cache(1, capacity=40)
    sizes = [layer.k.shape[2] for layer in cache.layers]
    assert sizes == [6, 40, 6]  # sliding layers (even) keep only their window
    pointers = [(layer.k.data_ptr(), layer.v.data_ptr()) for layer in cache.layers]
    with torch.no_grad():
        model(torch.randint(0, 97, (1, 9)), cache=cache)
        for _ in range(20):
            model(torch.randint(0, 97, (1, 1)), cache=cache)
    assert [(layer.k.data_ptr(), layer.v.data_ptr()) for layer in cache.layers] == pointers


# ------------------------------------------------------------------------------ generation
def greedy_without_cache(model, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """The reference: one full forward pass per new token, argmax of the last position."""
    idx = prompt
    with torch.no_grad():
        for _ in range(n):
            idx = torch.cat([idx, model(idx)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def test_greedy_with_and_without_cache_agree(model):
    prompt = torch.randint(0, 97, (3, 5), generator=torch.Generator().manual_seed(2))
    assert torch.equal(generate(model, prompt, 30, temperature=0), greedy_without_cache(model, prompt, 30))


@pytest.fixture
def pack_every_linear(monkeypatch):
    """prepare_for_inference leaves small weights alone; these tiny models' are packed too."""
    import gptoss.inference.prepare

    monkeypatch.setattr(gptoss.inference.prepare, "MIN_PACKED_WEIGHT", 0)


@pytest.fixture(params=["C kernel", "oneDNN"])
def linear_path(request, monkeypatch):
    """Each way InferenceLinear multiplies in fp32: the C kernel on its tiles, and oneDNN on its
    packed copy (the fallback where the kernel cannot be built)."""
    if request.param == "oneDNN":
        monkeypatch.setattr(cpu_kernel, "library", lambda: None)
    elif cpu_kernel.library() is None:
        pytest.skip("the C kernel is off or cannot be built here (see its warning; tests/test_cpu_kernel.py)")
    return request.param


def test_prepared_model_generates_the_same_tokens(model, pack_every_linear, linear_path):
    """prepare_for_inference swaps nn.Linear for InferenceLinear: same state dict, tied weights still
    tied, same greedy tokens."""
    prompt = torch.randint(0, 97, (2, 4), generator=torch.Generator().manual_seed(3))
    fast = random_model(model.config)
    state = {k: v.clone() for k, v in fast.state_dict().items()}
    prepare_for_inference(fast)
    assert isinstance(fast.lm_head, InferenceLinear) and isinstance(fast.transformer.h[0].attn.c_attn, InferenceLinear)
    assert (fast.lm_head.tiles is not None) == (linear_path == "C kernel")
    assert fast.state_dict().keys() == state.keys()
    assert all(torch.equal(state[k], v) for k, v in fast.state_dict().items())
    if fast.config.tie_embeddings:
        assert fast.lm_head.weight is fast.transformer.wte.weight
    assert torch.equal(generate(fast, prompt, 20, temperature=0), generate(model, prompt, 20, temperature=0))


@pytest.mark.parametrize("threads", [1, 3])
def test_prepared_model_at_batch_1_gives_the_cached_logits_of_a_full_forward(model, pack_every_linear, linear_path, threads):
    """At batch 1 in fp32 (3 threads: 97 vocab rows and 32 model rows split unevenly between them),
    each cached step's logits equal those of an unprepared full forward pass within 1e-5, and
    greedy tokens are the same."""
    seq = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(4))
    fast = prepare_for_inference(random_model(model.config))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            full = model(seq)  # (1, 30, vocab), unprepared
            cache = fast.new_cache(1)
            steps = [fast(seq[:, :5], cache=cache)] + [fast(seq[:, t : t + 1], cache=cache) for t in range(5, 30)]
        assert (torch.cat(steps, dim=1) - full).abs().max() <= 1e-5
        assert torch.equal(generate(fast, seq[:, :3], 25, temperature=0), generate(model, seq[:, :3], 25, temperature=0))
    finally:
        torch.set_num_threads(previous)


def test_prepared_model_copies_and_pickles_without_its_packed_copy(model, pack_every_linear, linear_path):
    import copy
    import pickle

    fast = prepare_for_inference(random_model(model.config))
    prompt = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(7))
    expected = generate(fast, prompt, 10, temperature=0)
    weight_bytes = fast.lm_head.weight.numel() * 4
    assert len(pickle.dumps(fast.lm_head)) < 1.5 * weight_bytes  # the weight, not the weight twice
    for twin in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):
        assert torch.equal(generate(twin, prompt, 10, temperature=0), expected)


def test_bf16_and_casts_take_the_matching_path(model, pack_every_linear, linear_path):
    """bf16 weights are read in place by the C kernel (oneDNN's copy without it); a prepared model
    cast to bf16 and back repacks each time."""
    fast = prepare_for_inference(random_model(model.config), dtype=torch.bfloat16)
    idx = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(8))
    reference = random_model(model.config).to(torch.bfloat16)
    reference.load_state_dict(fast.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fast(idx), reference(idx))
        assert fast.lm_head.tiles is None and fast.lm_head.in_place == (linear_path == "C kernel")
        # without the kernel, oneDNN's copy where it can pack bf16 on this CPU (else F.linear)
        assert (fast.lm_head.packed_weight is None) == (linear_path == "C kernel" or not onednn_packs(torch.bfloat16))
        fast.float()
        torch.testing.assert_close(fast(idx), reference.float()(idx), rtol=1e-5, atol=1e-5)
    assert (fast.lm_head.tiles is not None) == (linear_path == "C kernel")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_weights_give_the_logits_of_the_dequantised_model(model, pack_every_linear, dtype):
    """weights="int8": every packed layer computes with its int8 weights and per-row scales; the
    logits equal those of the same model whose linear weights were replaced by the dequantised
    values (fp32 rounding; bf16 activations: bf16 rounding), and the state dict is the original's."""
    if cpu_kernel.library() is None:
        pytest.skip("the C kernel is off or cannot be built here: int8 needs it")
    fast = prepare_for_inference(random_model(model.config), dtype=dtype, weights="int8")
    assert fast.lm_head.int8 is not None and fast.transformer.h[0].attn.c_attn.int8 is not None
    original = random_model(model.config).to(dtype)
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in fast.state_dict().items())
    dequantised = random_model(model.config).to(dtype)
    with torch.no_grad():
        for name, module in fast.named_modules():
            if isinstance(module, InferenceLinear):
                q, scale = module.int8
                dequantised.get_submodule(name).weight.copy_(scale[:, None] * q)
        if model.config.tie_embeddings:  # the embedding keeps the original table; only the unembedding is int8
            dequantised.lm_head.weight = torch.nn.Parameter(dequantised.lm_head.weight.clone())
            dequantised.transformer.wte.weight.copy_(original.transformer.wte.weight)
        idx = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(8))
        tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(fast(idx), dequantised(idx), **tolerance)


def test_weights_option_is_checked(model):
    with pytest.raises(ValueError, match="choose one of auto, fp32, bf16, int8"):
        prepare_for_inference(random_model(model.config), weights="int4")
    with pytest.raises(ValueError, match="disagree"):
        prepare_for_inference(random_model(model.config), dtype=torch.float32, weights="bf16")
    assert prepare_for_inference(random_model(model.config), weights="bf16").lm_head.weight.dtype == torch.bfloat16


def test_small_weights_stay_plain_linear(model):
    """Below MIN_PACKED_WEIGHT, the packed paths' call overhead outweighs their faster reads."""
    prepared = prepare_for_inference(random_model(model.config))
    assert not any(isinstance(m, InferenceLinear) for m in prepared.modules())


def test_prepared_model_follows_weight_changes_and_still_trains(model, pack_every_linear, linear_path):
    """The packed copy is rebuilt when the weight changes (loaded, trained); with autograd on the
    layers are plain nn.Linear, so a training step works and matches an unprepared model."""
    fast = prepare_for_inference(random_model(model.config, seed=1))
    fast.load_state_dict(model.state_dict())
    idx = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(fast(idx), model(idx), rtol=1e-5, atol=1e-5)
    fast.train()
    _, loss = fast(idx, idx)
    loss.backward()
    torch.optim.SGD(fast.parameters(), lr=1.0).step()
    reference = random_model(model.config, seed=1)
    reference.load_state_dict(fast.state_dict())
    fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(idx), reference(idx), rtol=1e-5, atol=1e-5)


def test_left_padded_batch_gives_each_prompt_its_own_tokens(model):
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (3, 11, 7, 1)]
    batched = generate_batch(model, prompts, 25, temperature=0)
    alone = [generate_batch(model, [p], 25, temperature=0)[0] for p in prompts]
    assert batched == alone
    assert all(len(out) == 25 for out in batched)


def test_padded_batch_with_repetition_penalty_matches_alone(model):
    """The penalty counts each row's own tokens, never its padding (id 0, made a frequent choice
    here, so that a penalty on padding would change the short prompts' continuations)."""
    model = random_model(model.config)
    with torch.no_grad():
        model.lm_head.weight[0] *= 2
    options = dict(temperature=0, repetition_penalty=1.5)
    g = torch.Generator().manual_seed(10)
    prompts = [torch.randint(1, 97, (2,), generator=g).tolist() for _ in range(12)] + [list(range(1, 10))]
    assert generate_batch(model, prompts, 8, **options) == [generate_batch(model, [p], 8, **options)[0] for p in prompts]


def test_past_the_context_learned_positions_crop():
    """GPT-2 (learned positions) past max_seq_len: the cache until the context is full, then the
    seed's sliding crop of the last 64 tokens."""
    model = random_model(CONFIGS["gpt2"])
    prompt = torch.randint(0, 97, (1, 60), generator=torch.Generator().manual_seed(5))
    widths = []
    hook = model.register_forward_pre_hook(lambda module, args: widths.append(args[0].shape[1]))
    out = generate(model, prompt, 10, temperature=0)
    hook.remove()
    assert widths == [60, 1, 1, 1, 1] + [64] * 5  # prefill, 4 cached steps up to 64 tokens, then crops
    idx = prompt
    with torch.no_grad():
        for _ in range(10):
            idx = torch.cat([idx, model(idx[:, -64:])[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, idx)


def test_sampling_with_a_seed_reproduces(model):
    prompt = torch.randint(0, 97, (2, 3))
    options = dict(temperature=0.9, top_k=20, top_p=0.9, min_p=0.01, repetition_penalty=1.2)
    a = generate(model, prompt, 20, seed=11, **options)
    assert torch.equal(a, generate(model, prompt, 20, seed=11, **options))
    assert not torch.equal(a, generate(model, prompt, 20, seed=12, **options))


# ------------------------------------------------------------------------------ transformers oracle
def hf_gpt2(config: GPTConfig):
    hf_config = GPT2Config(**{k: v for k, v in config_to_hf_gpt2(config).items() if k not in ("model_type", "architectures")})
    return GPT2LMHeadModel(hf_config).eval()


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_tokens_equal_transformers_gpt2(penalty, pack_every_linear):
    config = GPTConfig.preset("tiny", vocab_size=211, d_model=48, num_layers=3, num_heads=4, d_ff=96, max_seq_len=96)
    torch.manual_seed(6)
    hf = hf_gpt2(config)
    model = GPT(config).eval()
    model.load_state_dict(gpt2_state_from_hf(hf.state_dict()))
    prompt = torch.randint(0, 211, (2, 7), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = hf.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40, do_sample=False,
            repetition_penalty=penalty, pad_token_id=0,
        )
    assert torch.equal(generate(prepare_for_inference(model), prompt, 40, temperature=0, repetition_penalty=penalty), expected)


def hf_gpt_oss_and_ours() -> tuple[GptOssForCausalLM, GPT]:
    """transformers' GptOssForCausalLM with random weights (sinks included), and ours with the same."""
    config = CONFIGS["gpt-oss"]
    hf_config = GptOssConfig(**{k: v for k, v in config_to_hf_gpt_oss(config).items() if k not in ("model_type", "architectures")})
    torch.manual_seed(8)
    hf = GptOssForCausalLM(hf_config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.normal_(0, 0.5 if "sinks" in name else 0.1)
    model = GPT(config).eval()
    model.load_state_dict(gpt_oss_state_from_hf(hf.state_dict(), config))
    return hf, model


def test_greedy_tokens_equal_transformers_gpt_oss():
    hf, model = hf_gpt_oss_and_ours()
    prompt = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=30, do_sample=False, pad_token_id=0)
    assert torch.equal(generate(model, prompt, 30, temperature=0), expected)


# ------------------------------------------------------------------------------ streaming and stops
def test_stream_yields_each_token_as_it_is_produced(model):
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        steps = stream(model, [[1, 2, 3]], 5, temperature=0)
        first = next(steps)
        assert len(calls) == 1 and len(first) == 1 and len(first[0]) == 1  # one forward, one token
        rest = list(steps)
    finally:
        hook.remove()
    assert len(calls) == 5 and [s[0] for s in rest] == [[t] for t in generate_batch(model, [[1, 2, 3]], 5, temperature=0)[0][1:]]


def test_stop_token_ends_generation_and_is_not_emitted(model):
    prompts = [[4, 5, 6], [9]]
    free = generate_batch(model, prompts, 20, temperature=0)
    stop = free[0][6]
    stopped = generate_batch(model, prompts, 20, temperature=0, stop_token_ids=[stop])
    for out, full in zip(stopped, free):
        expected = full[: full.index(stop)] if stop in full else full
        assert out == expected


@pytest.fixture(scope="module")
def char_model_and_tokenizer():
    tokenizer = build_tokenizer("char", text=string.ascii_letters + " .,:!\n")
    config = GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_seq_len=128)
    return random_model(config, seed=3), tokenizer


def test_stop_string_ends_generation_and_is_not_emitted(char_model_and_tokenizer):
    model, tokenizer = char_model_and_tokenizer
    options = dict(temperature=1.0, seed=5)
    free = "".join(stream_text(model, tokenizer, "the ", 60, **options))
    assert len(free) == 60
    stop = free[20:23]
    expected = free[: free.index(stop)]
    assert "".join(stream_text(model, tokenizer, "the ", 60, stop_strings=[stop], **options)) == expected
    tokens = generate_batch(model, [tokenizer.encode("the ")], 60, stop_strings=[stop], tokenizer=tokenizer, **options)[0]
    assert tokenizer.decode(tokens) == expected


def test_a_model_padded_beyond_its_tokenizer_samples_only_ids_the_tokenizer_has():
    """A vocabulary padded past the tokenizer's (like 50304 for gpt2's 50257): with the tokenizer
    given, the padded ids are never drawn, even at a temperature that makes them most of the mass."""
    tokenizer = build_tokenizer("char", text="abc ")
    model = random_model(GPTConfig.preset("tiny", vocab_size=64, d_model=32, num_layers=1, num_heads=4, d_ff=64))
    tokens = generate_batch(model, [tokenizer.encode("ab")], 200, temperature=50.0, seed=0, tokenizer=tokenizer)[0]
    assert len(tokens) == 200 and max(tokens) < tokenizer.vocab_size
    assert len("".join(stream_text(model, tokenizer, "ab", 100, temperature=50.0, seed=1))) == 100
    assert max(generate_batch(model, [tokenizer.encode("ab")], 50, temperature=50.0, seed=0)[0]) >= tokenizer.vocab_size


def test_partial_stop_string_is_held_back_then_released(char_model_and_tokenizer):
    """A text that starts like the stop string but does not finish it is emitted in full."""
    model, tokenizer = char_model_and_tokenizer
    options = dict(temperature=1.0, seed=6)
    free = "".join(stream_text(model, tokenizer, "the ", 40, **options))
    near_miss = free[10:13] + "\x00"  # never generated: the char vocabulary has no NUL
    pieces = list(stream_text(model, tokenizer, "the ", 40, stop_strings=[near_miss], **options))
    assert "".join(pieces) == free
    # the three characters of the near miss came out together, once the fourth ruled the stop out
    assert any(free[10:13] in piece for piece in pieces)
    tokens = generate_batch(model, [tokenizer.encode("the ")], 40, stop_strings=[near_miss, free[-2:] + "\x00"], tokenizer=tokenizer, **options)[0]
    assert tokenizer.decode(tokens) == free  # held at the very end, then flushed


def test_stop_string_inside_a_multi_character_token(tokenizer_dir):
    """GPT-2 BPE: the stop string may start in the middle of a token; the text stops exactly there
    and the token-level output keeps only tokens wholly before it."""
    tokenizer = build_tokenizer("gpt2", files_dir=tokenizer_dir)
    config = GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, d_model=16, num_layers=1, num_heads=2, d_ff=32, max_seq_len=64)
    model = random_model(config, seed=4)
    options = dict(temperature=1.0, seed=8)
    tokens = generate_batch(model, [tokenizer.encode("Hello")], 30, **options)[0]
    lengths = [len(tokenizer.decode([t])) for t in tokens]
    i = next(i for i, n in enumerate(lengths) if n >= 3 and "\ufffd" not in tokenizer.decode(tokens[: i + 1]))
    text = tokenizer.decode(tokens)
    start = len(tokenizer.decode(tokens[:i])) + 1  # one character into token i
    stop = text[start : start + 2]
    expected_text = text[: text.index(stop)]
    assert "".join(stream_text(model, tokenizer, "Hello", 30, stop_strings=[stop], **options)) == expected_text
    stopped = generate_batch(model, [tokenizer.encode("Hello")], 30, stop_strings=[stop], tokenizer=tokenizer, **options)[0]
    assert expected_text.startswith(tokenizer.decode(stopped)) and len(stopped) < len(tokens)
    assert stop not in tokenizer.decode(stopped)


def test_no_token_is_released_while_its_character_is_unfinished(tokenizer_dir):
    """'a🙂b' in GPT-2 BPE: 🙂's first byte is a token of its own, decoded as U+FFFD; with the stop
    string '🙂' that token must be held back, as it is the start of the stop string."""
    from gptoss.inference.stops import StopStringWatcher

    tokenizer = build_tokenizer("gpt2", files_dir=tokenizer_dir)
    ids = tokenizer.encode("a🙂b")  # [64, 8582, 25081, 65]
    watcher = StopStringWatcher(tokenizer, ["🙂"])
    assert [watcher.push(token) for token in ids[:3]] == [[ids[0]], [], []] and watcher.stopped


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    from conftest import shared_data_path

    return build_tokenizer("gpt2", files_dir=shared_data_path("tokenizers/encoder.json").parent)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="ab é🙂\n", max_size=30), stop=st.text(alphabet="ab é🙂\n", min_size=1, max_size=3))
def test_stop_string_watcher_releases_exactly_the_tokens_before_the_stop(gpt2_tokenizer, text, stop):
    """Fed GPT-2 BPE tokens one at a time (multi-byte characters split across tokens), the watcher
    releases every token whose text lies wholly before the first stop string and no other; without
    a stop string, every token, once flushed."""
    from gptoss.inference.stops import StopStringWatcher

    ids = gpt2_tokenizer.encode(text)
    watcher = StopStringWatcher(gpt2_tokenizer, [stop])
    released = []
    for token in ids:
        released += watcher.push(token)
        if watcher.stopped:
            break
    if stop not in text:
        held = watcher.flush()  # at most a possible start of the stop string (<= 4 byte tokens a character)
        assert not watcher.stopped and released + held == ids and len(held) <= 4 * len(stop)
        return
    before = text[: text.index(stop)]
    assert watcher.stopped
    assert before.startswith(gpt2_tokenizer.decode(released))
    more = range(len(released) + 1, len(ids) + 1)  # no longer run of tokens lies wholly before the stop
    assert not any(before.startswith(gpt2_tokenizer.decode(ids[:k])) for k in more)


def test_generation_stats_of_a_reused_object_start_over(model):
    from gptoss.inference import GenerationStats

    stats = GenerationStats()
    for _ in range(2):
        generate_batch(model, [[1, 2, 3]], 5, temperature=0, stats=stats)
        assert (stats.prompt_tokens, stats.new_tokens, stats.decode_tokens) == (3, 5, 4)


# ------------------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def gpt_oss_model():
    return random_model(CONFIGS["gpt-oss"])


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m: generate(m, torch.zeros(1, 0, dtype=torch.long), 3), ValueError, "empty"),
        (lambda m: generate_batch(m, [[1, 2], []], 3), ValueError, "prompt 1 is empty"),
        (lambda m: generate_batch(m, [], 3), ValueError, "no prompts"),
        (lambda m: generate_batch(m, [1, 2, 3], 3), TypeError, "list of token-id lists"),
        (lambda m: generate(m, torch.tensor([[1, 97]]), 3), ValueError, "outside \\[0, 97\\)"),
        (lambda m: generate_batch(m, [[1, -2]], 3), ValueError, "token id -2"),
        (lambda m: generate(m, torch.tensor([[1, 2]]), 63), ValueError, "exceeds this model's context of max_seq_len=64"),
        (lambda m: generate(m, torch.tensor([[1, 2]]), 3, top_p=0), ValueError, "top_p must be in \\(0, 1\\]"),
        (lambda m: generate(m, torch.tensor([[1, 2]]), 3, top_p=1.5), ValueError, "top_p must be in \\(0, 1\\]"),
        (lambda m: generate(m, torch.tensor([[1, 2]]), 3, min_p=-0.1), ValueError, "min_p"),
        (lambda m: generate(m, torch.tensor([[1, 2]]), 3, repetition_penalty=0), ValueError, "repetition_penalty"),
        (lambda m: generate(m, torch.tensor([[1, 2]]), 3, temperature=0, top_p=0.9), ValueError, "conflicting options"),
        (lambda m: generate(m, torch.tensor([[1, 2]]), 3, seed=1, generator=torch.Generator()), ValueError, "conflicting options"),
        (lambda m: generate(m, torch.tensor([[1, 2]]), 2.5), TypeError, "max_new_tokens must be an int"),
        (lambda m: generate(m, torch.tensor([[1, 2]]), 3, top_q=0.5), TypeError, "top_q"),
        (lambda m: generate_batch(m, [[1]], 3, stop_strings=["x"]), ValueError, "need the tokenizer"),
        (lambda m: generate_batch(m, [[1]], 3, stop_strings="x", tokenizer=object()), TypeError, "list of strings"),
        (lambda m: generate_batch(m, [[1]], 3, stop_token_ids=[97]), ValueError, "stop_token_ids"),
    ],
)
def test_bad_input_is_a_clear_error(gpt_oss_model, call, error, match):
    with pytest.raises(error, match=match):
        call(gpt_oss_model)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m, c: m(torch.tensor([[1, 2, 3]]), cache=c), "holds 2 sequences, not 1"),
        (lambda m, c: m(torch.ones(2, 9, dtype=torch.long), cache=c), "exceed its capacity of 8"),
        (lambda m, c: m(torch.ones(2, 3, dtype=torch.long), cache=c, padding_mask=torch.tensor([[True, True, False]] * 2)), "left padding"),
        (lambda m, c: m(torch.ones(2, 3, dtype=torch.long), cache=c, padding_mask=torch.ones(2, 2, dtype=torch.bool)), "padding_mask must have"),
        (lambda m, c: m(torch.ones(2, 3, dtype=torch.long), logits_to_keep=-1), "logits_to_keep must be >= 0"),
        (lambda m, c: m(torch.ones(2, 0, dtype=torch.long), cache=c), "token ids are empty"),
        (lambda m, c: m(torch.ones(2, 3, dtype=torch.int16)), "torch.long"),
    ],
)
def test_bad_forward_input_is_a_clear_error_and_leaves_the_cache_as_it_was(model, call, match):
    """Checked before any layer writes: after the error the cache goes on as if it never happened."""
    seq = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(seq)
        cache = model.new_cache(2, capacity=8)
        first = model(seq[:, :5], cache=cache)
        with pytest.raises((ValueError, TypeError), match=match):
            call(model, cache)
        rest = model(seq[:, 5:], cache=cache)
    assert (torch.cat([first, rest], dim=1) - expected).abs().max() <= 1e-5


def test_padding_after_the_first_chunk_is_refused(model):
    with torch.no_grad():
        cache = model.new_cache(1)
        model(torch.tensor([[1, 2]]), cache=cache)
        model(torch.tensor([[3]]), cache=cache, padding_mask=torch.tensor([[True]]))  # no padding: fine
        with pytest.raises(ValueError, match="first chunk"):
            model(torch.tensor([[3, 4]]), cache=cache, padding_mask=torch.tensor([[False, True]]))


def test_empty_text_prompt(char_model_and_tokenizer):
    model, tokenizer = char_model_and_tokenizer
    with pytest.raises(ValueError, match="empty"):
        next(stream_text(model, tokenizer, "", 5))


# ------------------------------------------------------------------------------ chat
class ScriptedModel(GPT):
    """A real GPT (cache, checks and all) whose logits are overridden to emit a fixed script of
    tokens, one per forward call; it records the prompt of each prefill."""

    def __init__(self, config: GPTConfig, script: list[int]):
        super().__init__(config)
        self.script, self.prompts = iter(script), []

    def forward(self, idx, *args, cache=None, **kwargs):
        if cache is not None and cache.length == 0:
            self.prompts.append(idx[0].tolist())
        logits = super().forward(idx, *args, cache=cache, **kwargs)
        scripted = torch.full_like(logits, -1e9)
        scripted[..., next(self.script)] = 0.0
        return scripted


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet="ab é🙂\n", min_size=1, max_size=20), stop=st.text(alphabet="ab é🙂\n", min_size=1, max_size=3))
def test_stream_text_ends_exactly_before_the_first_stop_string(gpt2_tokenizer, text, stop):
    """A model scripted to write `text` (GPT-2 BPE: multi-byte characters split across tokens):
    stream_text shows exactly the text before the first stop string, or all of it."""
    ids = gpt2_tokenizer.encode(text)
    config = GPTConfig.preset("tiny", vocab_size=gpt2_tokenizer.vocab_size, d_model=16, num_layers=1, num_heads=2,
                              d_ff=32, max_seq_len=64)  # fmt: skip
    model = ScriptedModel(config, ids).eval()
    shown = "".join(stream_text(model, gpt2_tokenizer, "x", len(ids), stop_strings=[stop], temperature=0))
    assert shown == (text[: text.index(stop)] if stop in text else text)


@pytest.fixture
def harmony(tokenizer_dir, monkeypatch):
    from gptoss.inference.chat_format import HarmonyFormat

    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(tokenizer_dir))  # openai-harmony, offline

    return HarmonyFormat(build_tokenizer("o200k_harmony", files_dir=tokenizer_dir))


def harmony_completion(harmony, analysis: str, final: str) -> list[int]:
    """What gpt-oss writes after "<|start|>assistant": an analysis message, then the final answer."""
    h = harmony.harmony
    thought = harmony.encoding.render(h.Message.from_role_and_content(h.Role.ASSISTANT, analysis).with_channel("analysis"))
    answer = harmony.encoding.render(h.Message.from_role_and_content(h.Role.ASSISTANT, final).with_channel("final"))
    return_token = harmony.encoding.encode("<|return|>", allowed_special="all")
    return thought[2:] + answer[:-1] + return_token  # drop the "<|start|>assistant" given by the prompt


@pytest.mark.parametrize("show_analysis", [False, True])
def test_harmony_chat_shows_the_final_channel_and_keeps_history(harmony, show_analysis):
    import io

    from gptoss.cli.chat import chat_loop

    script = harmony_completion(harmony, "The user greets.", "Hello there!") + harmony_completion(harmony, "Fine.", "Very well.")
    config = GPTConfig.preset("gpt-oss-tiny", vocab_size=201088, d_model=16, num_layers=2, num_heads=2, num_kv_heads=1,
                              head_dim=8, d_ff=8, num_experts=2, experts_per_token=1)
    model = ScriptedModel(config, script).eval()
    output = io.StringIO()
    history = chat_loop(model, harmony, 64, io.StringIO("Hi\nHow are you?\n"), output, show_analysis=show_analysis, temperature=0)
    text = output.getvalue()
    assert history == [("user", "Hi"), ("assistant", "Hello there!"), ("user", "How are you?"), ("assistant", "Very well.")]
    assert "Hello there!" in text and "Very well." in text
    assert ("The user greets." in text) == show_analysis
    if show_analysis:
        assert "[analysis] The user greets.\nHello there!" in text
    second_prompt = harmony.encoding.decode(model.prompts[1])
    assert "Hi" in second_prompt and "Hello there!" in second_prompt and "How are you?" in second_prompt
    assert "The user greets." not in second_prompt  # earlier analysis is not carried over


def test_harmony_reply_without_a_final_answer_says_so_and_is_not_kept(harmony):
    """All of max_new_tokens spent in the analysis channel: a note, and the question is dropped."""
    import io

    from gptoss.cli.chat import chat_loop

    thinking = harmony_completion(harmony, "Let me think about this at great length " * 4, "")[:20]
    script = thinking + harmony_completion(harmony, "Easy.", "Hello!")
    config = GPTConfig.preset("gpt-oss-tiny", vocab_size=201088, d_model=16, num_layers=2, num_heads=2, num_kv_heads=1,
                              head_dim=8, d_ff=8, num_experts=2, experts_per_token=1)
    model = ScriptedModel(config, script).eval()
    output = io.StringIO()
    history = chat_loop(model, harmony, 20, io.StringIO("Hard question\nHi\n"), output, temperature=0)
    assert "[no answer within 20 new tokens" in output.getvalue()
    assert history == [("user", "Hi"), ("assistant", "Hello!")]


def test_plain_chat_stops_at_the_next_user_line():
    import io

    from gptoss.cli.chat import chat_loop
    from gptoss.inference.chat_format import PlainFormat

    tokenizer = build_tokenizer("char", text=string.ascii_letters + " .,:!\n")
    script = tokenizer.encode(" Hello.\nUser:") + tokenizer.encode(" Bye!\nUser:")  # each reply ends at "\nUser:"
    config = GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, d_model=16, num_layers=1, num_heads=2, d_ff=16)
    model = ScriptedModel(config, script).eval()
    output = io.StringIO()
    history = chat_loop(model, PlainFormat(tokenizer), 20, io.StringIO("Hi\nAnd\n/quit\n"), output, temperature=0)
    assert history == [("user", "Hi"), ("assistant", "Hello."), ("user", "And"), ("assistant", "Bye!")]
    assert output.getvalue() == "> Hello.\n> Bye!\n> "
    assert tokenizer.decode(model.prompts[1]) == "User: Hi\nAssistant: Hello.\nUser: And\nAssistant:"


def test_a_message_too_long_for_the_context_keeps_the_conversation():
    import io

    from gptoss.cli.chat import chat_loop
    from gptoss.inference.chat_format import PlainFormat

    tokenizer = build_tokenizer("char", text=string.ascii_letters + " .,:!\n")
    script = tokenizer.encode(" Hi.\nUser:") * 2  # 10 tokens per reply
    config = GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, d_model=16, num_layers=1, num_heads=2, d_ff=16, max_seq_len=64)
    model = ScriptedModel(config, script).eval()
    output = io.StringIO()
    history = chat_loop(model, PlainFormat(tokenizer), 10, io.StringIO("Hi\n" + "x" * 60 + "\nAnd\n"), output, temperature=0)
    assert "more than the 54 the context leaves" in output.getvalue()
    assert history == [("user", "Hi"), ("assistant", "Hi."), ("user", "And"), ("assistant", "Hi.")]


# ------------------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def char_checkpoint(tmp_path_factory, char_model_and_tokenizer):
    from gptoss.checkpoints import save_model

    model, tokenizer = char_model_and_tokenizer
    return save_model(model, tmp_path_factory.mktemp("checkpoint") / "char-model", tokenizer)


def test_generate_command_streams_the_continuation(char_checkpoint, char_model_and_tokenizer, capsys):
    from gptoss.cli import main

    args = ["generate", "--checkpoint", str(char_checkpoint), "--prompt", "the ", "--max-new-tokens", "30"]
    assert main(args + ["--temperature", "0.8", "--top-k", "10", "--seed", "3", "--stop", "xq"]) == 0
    out, err = capsys.readouterr()
    model, tokenizer = char_model_and_tokenizer
    fast = prepare_for_inference(random_model(model.config, seed=3))  # the same weights, prepared as the command does
    expected = "".join(stream_text(fast, tokenizer, "the ", 30, temperature=0.8, top_k=10, seed=3, stop_strings=["xq"]))
    assert out == "the " + expected + "\n"
    assert "prompt tokens at" in err and "decoding at" in err and "tokens/s" in err
    assert main(args[:-1] + ["1", "--greedy"]) == 0  # one new token: no decoding step to time
    assert "decoding at n/a (one step)" in capsys.readouterr().err


def test_generate_command_with_int8_weights(char_checkpoint, char_model_and_tokenizer, capsys, pack_every_linear):
    """--weights int8: the tokens of the model prepared with weights="int8"."""
    from gptoss.cli import main

    if cpu_kernel.library() is None:
        pytest.skip("the C kernel is off or cannot be built here: int8 needs it")
    args = ["generate", "--checkpoint", str(char_checkpoint), "--prompt", "the ", "--max-new-tokens", "30", "--greedy"]
    assert main(args + ["--weights", "int8"]) == 0
    out, err = capsys.readouterr()
    model, tokenizer = char_model_and_tokenizer
    fast = prepare_for_inference(random_model(model.config, seed=3), weights="int8")
    assert out == "the " + "".join(stream_text(fast, tokenizer, "the ", 30, temperature=0)) + "\n"
    assert "int8 linear weights" in err
    assert main(args + ["--weights", "bf16", "--dtype", "float32"]) == 2
    assert "disagree" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt", ""], "the prompt is empty"),
        (["--prompt", "the", "--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["--prompt", "the", "--top-p", "0"], "top_p must be in (0, 1]"),
        (["--prompt", "the", "--greedy", "--top-k", "5"], "conflicting options"),
        (["--prompt", "the", "--stop-token-id", "999"], "stop_token_ids must be ids in [0, 58)"),
        (["--prompt", "the ~"], "not in this char tokenizer's vocabulary"),
        (["--prompt", "the", "--max-new-tokens", "-1"], "max_new_tokens must be >= 0"),
        (["--prompt-file", "/nonexistent/prompt.txt"], "No such file"),
        (["--prompt", "the", "--device", "gpu"], "device must be auto, cpu, cuda or cuda:N"),
        (["--prompt", "the", "--device", "cuda:99"], "device 'cuda:99'"),  # no CUDA, or no 100th GPU
    ],
)
def test_generate_command_bad_input(char_checkpoint, capsys, extra, message):
    from gptoss.cli import main

    assert main(["generate", "--checkpoint", str(char_checkpoint)] + extra) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--temperature", "-1"], "temperature"), (["--top-p", "2"], "top_p"), (["--max-new-tokens", "128"], "leaves no room"),
        (["--show-analysis"], "apply to gpt-oss (harmony) chats only"), (["--reasoning-effort", "high"], "harmony"),
    ],
)
def test_chat_command_checks_its_options_before_the_first_message(char_checkpoint, char_model_and_tokenizer, capsys, monkeypatch, extra, message):
    import io

    from gptoss.cli import main

    assert char_model_and_tokenizer[0].config.max_seq_len == 128
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n"))
    assert main(["chat", "--checkpoint", str(char_checkpoint)] + extra) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra", [["--greedy", "--temperature", "0.5"], ["--prompt-file", "a.txt"], ["--preset", "tiny"]]
)
def test_generate_command_conflicting_flags(char_checkpoint, capsys, extra):
    from gptoss.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--checkpoint", str(char_checkpoint), "--prompt", "the"] + extra)
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_generate_command_past_the_context_of_a_rotary_model(tokenizer_dir, capsys):
    from gptoss.cli import main

    args = ["generate", "--preset", "gpt-oss-tiny", "--tokenizer-files", str(tokenizer_dir), "--prompt", "Hi", "--max-new-tokens", "5000"]
    assert main(args) == 2
    assert "exceeds this model's context of max_seq_len=1024" in capsys.readouterr().err


@pytest.mark.parametrize("harmony_chat", [False, True])
def test_chat_command_with_piped_input(char_checkpoint, tokenizer_dir, harmony_chat):
    """`gptoss chat` as a real process, stdin piped: a plain-transcript model, and a random gpt-oss
    (harmony; its random reply is rarely valid harmony, which must not end the session)."""
    import os
    import subprocess
    import sys

    model = ["--preset", "gpt-oss-tiny", "--tokenizer-files", str(tokenizer_dir)] if harmony_chat else ["--checkpoint", str(char_checkpoint)]
    env = dict(os.environ, TIKTOKEN_ENCODINGS_BASE=str(tokenizer_dir), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "gptoss", "chat", *model, "--max-new-tokens", "8", "--seed", "1"],
        input="hello there\nand again\n", capture_output=True, text=True, timeout=120, env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("> ") and result.stdout.count("> ") >= 3  # two replies, then end of input
