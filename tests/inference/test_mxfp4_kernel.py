"""The MXFP4 kernel (gptoss/inference/mxfp4_kernel.c): its products equal dequantise-then-matmul
in fp32, its MoE layer equals the PyTorch path's, and a model whose experts it computes gives the
current path's logits and greedy tokens. Every build this CPU can run: AVX512_BF16, AVX2 (with
-mno-avx512f) and the portable loop (-mno-avx2)."""

import copy
import platform
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gptoss import GPT, GPTConfig
from gptoss.checkpoints.mxfp4 import PackedExperts, dequantize_mxfp4
from gptoss.inference import generate, mxfp4_kernel, prepare_for_inference
from gptoss.inference.mxfp4_kernel import KernelExperts
from gptoss.util.c_build import compiler
from test_cpu_kernel import run_on_threads

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C compiler: MXFP4 experts decode in PyTorch")
BUILDS = mxfp4_kernel.BUILD_FLAGS
X86 = platform.machine().lower() in ("x86_64", "amd64")  # the flags are an x86 compiler's
CPU_FLAGS = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()


@pytest.fixture(autouse=True)
def kernel_on(monkeypatch):
    """Whatever the environment says, these tests are about the kernel."""
    monkeypatch.delenv("GPTOSS_CPU_KERNEL", raising=False)
    mxfp4_kernel.library.cache_clear()
    yield
    mxfp4_kernel.library.cache_clear()


def build(name: str):
    if name != "native" and not X86:
        pytest.skip(f"the {name} build is made with an x86 flag")
    if name == "avx2" and not {"avx2", "fma"} <= CPU_FLAGS:
        pytest.skip("this CPU has no AVX2 and FMA")
    lib = mxfp4_kernel.library(BUILDS[name])
    assert lib is not None  # not a skip: with a C compiler on the machine, a failed build is a bug
    return lib


def test_native_build_takes_the_best_path_this_cpu_has():
    if not CPU_FLAGS:
        pytest.skip("no /proc/cpuinfo to say what this CPU has")
    expected = "avx512_bf16" if "avx512_bf16" in CPU_FLAGS else "avx2" if {"avx2", "fma"} <= CPU_FLAGS else "portable"
    assert mxfp4_kernel.instructions(build("native")) == expected
    assert mxfp4_kernel.instructions(build("portable")) == "portable"
    if {"avx2", "fma"} <= CPU_FLAGS:
        assert mxfp4_kernel.instructions(build("avx2")) == "avx2"


def random_packed(shape, generator, scales=(118, 124)):
    blocks = torch.randint(0, 256, (*shape, 16), dtype=torch.uint8, generator=generator)
    return blocks, torch.randint(*scales, shape, dtype=torch.uint8, generator=generator)


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    """max |out - reference| / max |reference|: the product's error against its scale."""
    return ((out.double() - reference).abs().max() / reference.abs().max()).item()


@pytest.mark.parametrize("which", BUILDS)
@settings(max_examples=40, deadline=None)
@given(
    out_features=st.integers(1, 40),  # around the 16 rows handed to a thread at a time
    groups=st.integers(1, 40),  # blocks per row: odd counts leave the last pair half empty; 16 share a scale load
    tokens=st.integers(1, 9),  # around the 4 tokens that share each decoded pair of blocks
    lowest_scale=st.integers(8, 216),  # where in the E8M0 range (results stay normal fp32: 0 in test_every_scale_byte) ...
    scale_spread=st.integers(0, 14),  # ... and how far the scales of one matrix spread
    bias=st.booleans(),
    threads=st.sampled_from([1, 2, 3]),
    seed=st.integers(0, 2**16),
)
def test_linear_equals_dequantise_then_matmul(which, out_features, groups, tokens, lowest_scale, scale_spread, bias, threads, seed):
    """fp32-accurate (3 bf16 terms per input value) within 1e-5 of the float64 product of the
    decoded weights; x rounded to bf16 (1 term), within bf16's rounding."""
    lib = build(which)
    g = torch.Generator().manual_seed(seed)
    blocks, scales = random_packed((out_features, groups), g, (lowest_scale, lowest_scale + scale_spread + 1))
    x = torch.randn(tokens, groups * 32, generator=g)
    b = torch.randn(out_features, generator=g) * torch.ldexp(torch.ones(1), torch.tensor(lowest_scale - 127)) if bias else None
    weight = dequantize_mxfp4(blocks, scales, torch.float32)  # (out, in), exact
    expected = x.double() @ weight.double().T + (0 if b is None else b.double())
    # the error of an fp32 sum is relative to the sum of the magnitudes it adds (a product of a
    # few outputs can cancel to far below them)
    magnitude = (x.double().abs() @ weight.double().abs().T + (0 if b is None else b.double().abs())).max()
    exact = run_on_threads(threads, lambda: mxfp4_kernel.linear(x, blocks, scales, b, terms=3, lib=lib))
    assert exact.shape == (tokens, out_features)
    assert ((exact.double() - expected).abs().max() / magnitude).item() <= 1e-5
    rounded = run_on_threads(threads, lambda: mxfp4_kernel.linear(x, blocks, scales, b, terms=1, lib=lib))
    x_bf16 = x.bfloat16().double()
    expected_bf16 = x_bf16 @ weight.double().T + (0 if b is None else b.double())
    assert ((rounded.double() - expected_bf16).abs().max() / magnitude).item() <= 1e-5


@pytest.mark.parametrize("which", BUILDS)
def test_every_scale_byte(which):
    """Row r of the matrix has scale byte r, for r = 0 (2^-127) .. 254 (2^127), each row within 1e-5
    of its exact product (x is made small or large so that every row's result is a normal fp32)."""
    lib = build(which)
    g = torch.Generator().manual_seed(0)
    blocks, _ = random_packed((255, 3), g)
    scales = torch.arange(255, dtype=torch.uint8)[:, None].expand(255, 3).contiguous()
    # decoded in float64 (in fp32, 6 * 2^126 would overflow): the FP4 values times 2^(s - 127)
    unscaled = dequantize_mxfp4(blocks, torch.full_like(scales, 127), torch.float32).double()
    weight = unscaled * torch.ldexp(torch.ones(1, dtype=torch.float64), scales.double() - 127).repeat_interleave(32, -1)
    for rows, x_scale in ((slice(0, 128), 2.0**100), (slice(128, 255), 2.0**-100)):
        x = torch.randn(3, 96, generator=g) * x_scale
        out = mxfp4_kernel.linear(x, blocks[rows].contiguous(), scales[rows].contiguous(), lib=lib)
        expected = x.double() @ weight[rows].T
        error = (out.double() - expected).abs().amax(0) / expected.abs().amax(0)  # per row
        assert error.max().item() <= 1e-5


def random_packed_experts(config: GPTConfig, seed: int, dtype=torch.float32) -> PackedExperts:
    """Experts of random bytes (weights 2^-9..2^-4 times the FP4 values) and random biases."""
    g = torch.Generator().manual_seed(seed)
    experts = PackedExperts(config)
    for name in PackedExperts.PACKED:
        blocks, scales = random_packed(getattr(experts, f"{name}_scales").shape, g, (118, 124))
        setattr(experts, f"{name}_blocks", blocks)
        setattr(experts, f"{name}_scales", scales)
    with torch.no_grad():
        experts.gate_up_proj_bias.copy_(torch.randn(experts.gate_up_proj_bias.shape, generator=g) * 0.5)
        experts.down_proj_bias.copy_(torch.randn(experts.down_proj_bias.shape, generator=g) * 0.5)
    return experts.to(dtype)


@pytest.mark.parametrize("which", BUILDS)
@settings(max_examples=25, deadline=None)
@given(
    blocks_in=st.sampled_from([1, 2, 3, 19]),  # d_model / 32: odd, even, more than the 16 of a scale load
    blocks_hidden=st.sampled_from([1, 2, 3, 17]),  # d_ff / 32
    top_k=st.integers(1, 4),
    extra_experts=st.integers(0, 3),
    tokens=st.integers(1, 9),
    threads=st.sampled_from([1, 2, 3]),
    seed=st.integers(0, 2**16),
)
def test_moe_layer_equals_the_pytorch_path(which, blocks_in, blocks_hidden, top_k, extra_experts, tokens, threads, seed):
    """One MoE layer after its router (gate_up, clamps, SwiGLU, down, routing weights, the sum over
    k experts), fp32: the kernel within 1e-5 of PackedExperts.mix, which decodes every expert and
    multiplies in PyTorch. Inputs large enough that the clamps are reached."""
    lib = build(which)
    config = GPTConfig.preset("gpt-oss-tiny", d_model=32 * blocks_in, d_ff=32 * blocks_hidden,
                              num_experts=top_k + extra_experts, experts_per_token=top_k)  # fmt: skip
    experts = random_packed_experts(config, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(tokens, config.d_model, generator=g) * 4
    logits = torch.randn(tokens, config.num_experts, generator=g)
    top_logits, top_experts = logits.topk(top_k, dim=-1)
    top_weights = top_logits.softmax(-1)
    with torch.no_grad():
        expected = experts.mix(x.double().float(), top_experts, top_weights).double()
        out = run_on_threads(threads, lambda: mxfp4_kernel.experts(experts, x, top_experts, top_weights, lib=lib))
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert relative_error(out, expected) <= 1e-5


def test_bad_expert_index_is_refused():
    config = GPTConfig.preset("gpt-oss-tiny")
    experts = random_packed_experts(config, 0)
    x = torch.randn(2, config.d_model)
    bad = torch.tensor([[0, config.num_experts]] * 2)
    with pytest.raises(ValueError, match="outside"):
        mxfp4_kernel.experts(experts, x, bad, torch.full((2, 2), 0.5))


def random_tiny_gpt_oss(dtype: torch.dtype, seed: int = 0) -> GPT:
    """A random gpt-oss-tiny with MXFP4-packed experts, as gpt-oss-20b loads (experts kept packed)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig.preset("gpt-oss-tiny", dropout=0.0))
    for layer, block in enumerate(model.transformer.h):
        block.mlp.experts = random_packed_experts(model.config, seed * 100 + layer)
    return model.to(dtype).eval()


def test_prepare_for_inference_computes_the_packed_experts_from_their_bytes():
    """The packed bytes move into 2 MB pages, unchanged; the state dict holds the moved buffers, the
    ones the kernel reads (no second copy is kept), and nothing else changes."""
    model = random_tiny_gpt_oss(torch.bfloat16)
    before = {name: t.clone() for name, t in model.state_dict().items() if name.endswith(("_blocks", "_scales"))}
    names = list(model.state_dict())
    prepare_for_inference(model)
    assert all(type(block.mlp.experts) is KernelExperts for block in model.transformer.h)
    assert list(model.state_dict()) == names
    state = model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in before.items())
    experts = model.transformer.h[0].mlp.experts
    assert state["transformer.h.0.mlp.experts.gate_up_proj_blocks"].data_ptr() == experts.gate_up_proj_blocks.data_ptr()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logits_equal_the_current_path(dtype):
    """fp32: within 1e-5 (the kernel is fp32-accurate). bf16: the current path rounds every step to
    bf16 (gate_up, hidden, each expert's output and their sum), the kernel sums in fp32 and rounds
    once per layer, so neither equals the other; the kernel's logits must be at least as close to
    the fp32 model's as the current bf16 path's are (within 1.5x, and 1% of the logits' scale)."""
    reference = random_tiny_gpt_oss(torch.float32)
    ids = torch.randint(0, reference.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        truth = reference(ids).double()
        current = random_tiny_gpt_oss(dtype)
        fast = copy.deepcopy(current)
        assert mxfp4_kernel.use_kernel_experts(fast) == reference.config.num_layers
        current_logits, fast_logits = current(ids).double(), fast(ids).double()
    if dtype == torch.float32:
        assert relative_error(fast_logits, current_logits) <= 1e-5
    else:
        current_error = (current_logits - truth).abs().max().item()
        fast_error = (fast_logits - truth).abs().max().item()
        assert fast_error <= 1.5 * current_error
        assert (fast_logits - current_logits).abs().max().item() <= 0.01 * truth.abs().max().item() + 2 * current_error


def test_greedy_tokens_equal_the_current_path():
    """64 greedy steps after prepare_for_inference (every fast path on) give the current path's
    tokens, in fp32. (In bf16 a random model's logits tie or nearly tie within bf16's rounding
    at some step, and either path's rounding picks one: test_logits_equal_the_current_path bounds
    the bf16 difference instead.)"""
    model = random_tiny_gpt_oss(torch.float32, seed=1)
    prompt = torch.randint(0, model.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(1))
    expected = generate(model, prompt, 64, temperature=0)
    fast = prepare_for_inference(copy.deepcopy(model))
    assert type(fast.transformer.h[0].mlp.experts) is KernelExperts
    assert torch.equal(generate(fast, prompt, 64, temperature=0), expected)


def test_with_autograd_it_is_the_pytorch_path():
    """Training through packed experts is not supported by the kernel: it steps aside."""
    model = prepare_for_inference(random_tiny_gpt_oss(torch.float32))
    ids = torch.randint(0, model.config.vocab_size, (1, 6))
    with torch.no_grad():
        fast = model(ids)
    assert torch.allclose(model(ids), fast, rtol=1e-4, atol=1e-5)


def test_turned_off_leaves_packed_experts(monkeypatch):
    monkeypatch.setenv("GPTOSS_CPU_KERNEL", "0")
    mxfp4_kernel.library.cache_clear()
    model = prepare_for_inference(random_tiny_gpt_oss(torch.float32))
    assert type(model.transformer.h[0].mlp.experts) is PackedExperts
