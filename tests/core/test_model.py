"""The model: shapes, parameter counts, causality, batch independence, generation, bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gptoss import GPT, GPTConfig, create_gpt_oss_20b

# a GPT-2 style and a gpt-oss style model, both tiny; the latter with a window shorter than the tests' sequences
TINY_CONFIGS = {
    "gpt2": GPTConfig.preset("tiny", vocab_size=97, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_seq_len=64),
    "gpt-oss": GPTConfig.preset(
        "gpt-oss-tiny", vocab_size=97, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8,
        d_ff=16, num_experts=4, experts_per_token=2, sliding_window=6, max_seq_len=64,
    ),
}


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def tiny_model(request):
    torch.manual_seed(0)
    return GPT(TINY_CONFIGS[request.param]).eval()


def test_forward_shape_and_dtype(tiny_model):
    idx = torch.randint(0, 97, (3, 17))
    logits = tiny_model(idx)
    assert logits.shape == (3, 17, 97) and logits.dtype == torch.float32


def test_seed_default_is_gpt2_small_count():
    assert create_gpt_oss_20b().num_parameters() == 124_439_808
    assert sum(p.numel() for p in create_gpt_oss_20b(device="meta").parameters()) == 124_439_808


@pytest.mark.parametrize(
    "preset, count",
    [("gpt2-small", 124_439_808), ("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)],
)
def test_gpt2_family_counts_on_meta(preset, count):
    # the counts of OpenAI's released GPT-2 checkpoints
    assert GPT(GPTConfig.preset(preset), device="meta").num_parameters() == count


def test_gpt3_20b_builds_on_meta_without_memory():
    model = create_gpt_oss_20b(preset="gpt3-20b", device="meta")
    assert model.transformer.wte.weight.device.type == "meta"
    assert model.num_parameters() == 20_249_929_728  # ~20.2B


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_causality(tiny_model, data):
    """Changing tokens after position t never changes logits at or before t."""
    T = data.draw(st.integers(2, 40))
    t = data.draw(st.integers(0, T - 2))
    seed = data.draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 97, (1, T), generator=g)
    b = a.clone()
    b[0, t + 1 :] = torch.randint(0, 97, (T - t - 1,), generator=g)
    with torch.no_grad():
        la, lb = tiny_model(a), tiny_model(b)
    torch.testing.assert_close(la[:, : t + 1], lb[:, : t + 1], rtol=0, atol=1e-5)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(2, 4))
def test_batch_independence(tiny_model, seed, batch):
    """A sequence's logits do not depend on the other sequences of its batch."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 97, (batch, 24), generator=g)
    with torch.no_grad():
        together = tiny_model(idx)
        alone = torch.cat([tiny_model(idx[i : i + 1]) for i in range(batch)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)


def test_loss_is_cross_entropy(tiny_model):
    idx = torch.randint(0, 97, (2, 10))
    targets = torch.randint(0, 97, (2, 10))
    logits, loss = tiny_model(idx, targets)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 97), targets.reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_generate_greedy_top1_and_argmax_agree(tiny_model):
    prompt = torch.randint(0, 97, (2, 5))
    greedy = tiny_model.generate(prompt, 12, temperature=0)
    top1 = tiny_model.generate(prompt, 12, temperature=1.0, top_k=1)
    assert torch.equal(greedy, top1)
    # the same tokens, one argmax at a time over the full sequence (no cache)
    idx = prompt
    for _ in range(12):
        idx = torch.cat([idx, tiny_model(idx)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(greedy, idx)


def test_seeded_sampling_is_reproducible(tiny_model):
    prompt = torch.randint(0, 97, (1, 4))
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append(tiny_model.generate(prompt, 20, temperature=1.0, top_k=10))
    assert torch.equal(*runs)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(tiny_model.generate(prompt, 20, generator=g1), tiny_model.generate(prompt, 20, generator=g2))


def test_generate_past_max_seq_len_crops_the_context():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=50, max_seq_len=16)).eval()
    out = model.generate(torch.randint(0, 50, (1, 10)), 20, temperature=0)
    assert out.shape == (1, 30)


# ------------------------------------------------------------------------------ bad input
def test_ids_out_of_range(tiny_model):
    with pytest.raises(ValueError, match="outside \\[0, 97\\)"):
        tiny_model(torch.tensor([[1, 97]]))
    with pytest.raises(ValueError, match="token id -1"):
        tiny_model(torch.tensor([[-1, 3]]))


def test_non_integer_ids(tiny_model):
    with pytest.raises(TypeError, match="torch.long or torch.int32"):
        tiny_model(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        tiny_model([[1, 2]])


def test_targets_are_checked_and_int32_works(tiny_model):
    idx = torch.tensor([[1, 2, 3]])
    _, loss = tiny_model(idx, idx.int())  # int32 targets, like int32 ids
    torch.testing.assert_close(loss, tiny_model(idx, idx)[1])
    with pytest.raises(ValueError, match="-1 marks a position to ignore .not -100"):
        tiny_model(idx, torch.tensor([[1, -100, 3]]))
    with pytest.raises(ValueError, match=r"targets must have the logits' shape \(1, 1\)"):
        tiny_model(idx, idx, logits_to_keep=1)
    with pytest.raises(TypeError, match="targets must be a torch.long"):
        tiny_model(idx, idx.float())


def test_sequence_longer_than_max_seq_len(tiny_model):
    with pytest.raises(ValueError, match="exceeds max_seq_len=64"):
        tiny_model(torch.zeros(1, 65, dtype=torch.long))


def test_d_model_not_divisible_by_heads():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        GPTConfig(d_model=100, num_heads=12)


@pytest.mark.parametrize(
    "field, value",
    [("vocab_size", 0), ("num_layers", -1), ("dropout", 1.5), ("norm", "batchnorm"), ("mlp", "relu"), ("sliding_window", 8.0)],
)
def test_bad_config_values(field, value):
    with pytest.raises(ValueError, match=field):
        GPTConfig(**{field: value})


@pytest.mark.parametrize(
    "change, match",
    [(dict(beta_fast=1, beta_slow=32), "beta_fast > beta_slow > 0"), (dict(beta_slow=0), "beta_fast > beta_slow > 0"),
     (dict(original_max_seq_len=0), "original_max_seq_len")],
)
def test_bad_yarn_values(change, match):
    scaling = dict(GPTConfig.preset("gpt-oss-20b").rope_scaling, **change)
    with pytest.raises(ValueError, match=match):
        GPTConfig.preset("gpt-oss-20b", rope_scaling=scaling)


def test_every_bias_starts_at_zero_and_the_factory_keeps_a_preset_sizes():
    model = GPT(GPTConfig.preset("gpt-oss-tiny", num_layers=1))
    biases = {name: p for name, p in model.named_parameters() if name.endswith("bias") or "sinks" in name}
    assert "transformer.h.0.mlp.experts.gate_up_proj_bias" in biases and all(not p.any() for p in biases.values())
    config = create_gpt_oss_20b(preset="gpt-oss-20b", device="meta").config
    assert (config.vocab_size, config.max_seq_len) == (201088, 131072)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        GPTConfig.preset("gpt5")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_new_tokens=5, top_k=0), "top_k"),
        (dict(max_new_tokens=5, temperature=-0.5), "temperature"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
    ],
)
def test_bad_generation_arguments(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_model.generate(torch.tensor([[1, 2]]), **kwargs)


def test_empty_prompt(tiny_model):
    with pytest.raises(ValueError, match="empty"):
        tiny_model.generate(torch.zeros(1, 0, dtype=torch.long), 3)
