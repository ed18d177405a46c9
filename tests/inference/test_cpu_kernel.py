"""The C kernels behind InferenceLinear (gptoss/inference/cpu_kernel.c), fp32, bf16 and int8: each
product equals the exact one for any shape, batch and thread count, and the kernels are built once
per machine, or cleanly not at all."""

import platform

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gptoss.inference import cpu_kernel

needs_compiler = pytest.mark.skipif(
    cpu_kernel.compiler() is None, reason="no C compiler on this machine: InferenceLinear uses oneDNN in fp32"
)


@pytest.fixture(autouse=True)
def kernel_on(monkeypatch):
    """Whatever the environment says, these tests are about the kernel."""
    monkeypatch.delenv("GPTOSS_CPU_KERNEL", raising=False)
    cpu_kernel.library.cache_clear()
    yield
    cpu_kernel.library.cache_clear()


@pytest.fixture
def fresh_build(tmp_path, monkeypatch):
    """Builds kept in a temporary cache."""
    monkeypatch.setenv("GPTOSS_CACHE", str(tmp_path))
    return tmp_path / "kernels"


@needs_compiler
def test_kernel_builds_wherever_there_is_a_compiler():
    """Not a skip: with a C compiler on the machine, a failed build is a bug."""
    assert cpu_kernel.library() is not None


@needs_compiler
@settings(max_examples=60, deadline=None)
@given(
    out_features=st.integers(1, 40),  # around the tile of 16 rows: whole tiles and a partial last one
    in_features=st.integers(1, 50),  # around the 4 running sums of one row
    leading=st.lists(st.integers(0, 6), max_size=2),  # rows of x: 0 to 36, 4 at a time and 1 at a time
    bias=st.booleans(),
    threads=st.sampled_from([1, 2, 3]),
    seed=st.integers(0, 2**16),
)
def test_kernel_equals_the_exact_product(out_features, in_features, leading, bias, threads, seed):
    """Against the product in float64 of the same numbers, within fp32 rounding."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator)
    b = torch.randn(out_features, generator=generator) if bias else None
    x = torch.randn(*leading, in_features, generator=generator)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = cpu_kernel.linear(x, cpu_kernel.pack_tiles(weight), b, out_features)
    finally:
        torch.set_num_threads(previous)
    assert out.shape == (*leading, out_features)
    exact = F.linear(x.double(), weight.double(), None if b is None else b.double())
    torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-5)


def run_on_threads(threads, fn):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(previous)


def rounding_bound(products: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """How far an fp32 sum of these exact products (..., out, in) (and the bias) can be from the
    exact sum: each of the at most in + 1 additions errs by at most 2^-24 of a partial sum, and a
    partial sum is at most the sum of the magnitudes; twice that, for the order of the additions."""
    magnitude = products.abs().sum(-1) + (0 if bias is None else bias.abs())
    return 2 * (products.shape[-1] + 1) * 2.0**-24 * magnitude


shapes = dict(
    out_features=st.integers(1, 40),  # around the prompt's blocks of 4 rows of w
    in_features=st.integers(1, 300),  # around 16 / 32 columns per vector and 4 chains of them (64 / 128)
    rows=st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 63, 64, 70]),  # 4 rows of x at a time; prompts from 16; chunks of 64
    bias=st.booleans(),
    threads=st.sampled_from([1, 2, 3]),
    seed=st.integers(0, 2**16),
)


@needs_compiler
@settings(max_examples=60, deadline=None)
@given(**shapes)
def test_bf16_kernel_equals_the_exact_product_of_the_bf16_values(out_features, in_features, rows, bias, threads, seed):
    """Against the product in float64 of the same bf16 numbers. The products of two bf16 values are
    exact in fp32 (8 + 8 significant bits), so the kernel's only errors are its fp32 additions
    (rounding_bound) and the rounding of the result to bf16 (at most half its last place, 2^-9
    relative; 2^-8 allowed, the result's own size being within the first bound of the exact one)."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator).bfloat16()
    b = torch.randn(out_features, generator=generator).bfloat16() if bias else None
    x = torch.randn(rows, in_features, generator=generator).bfloat16()
    out = run_on_threads(threads, lambda: cpu_kernel.linear_bf16(x, weight, b))
    assert out.shape == (rows, out_features) and out.dtype == torch.bfloat16
    exact = F.linear(x.double(), weight.double(), None if b is None else b.double())
    products = x.double()[:, None, :] * weight.double()
    bound = rounding_bound(products, None if b is None else b.double()) + 2.0**-8 * exact.abs()
    assert ((out.double() - exact).abs() <= bound).all()


def test_int8_quantisation_is_per_row_and_within_half_a_step():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(37, 50, generator=generator) * torch.logspace(-3, 3, 37)[:, None]  # rows of very different sizes
    weight[5] = 0  # a zero row
    q, scale = cpu_kernel.quantize_int8(weight)
    assert q.dtype == torch.int8 and q.shape == weight.shape and scale.shape == (37,)
    assert q.abs().amax(dim=1).tolist() == [127] * 5 + [0] + [127] * 31  # each row's largest weight is +-127
    assert ((weight - scale[:, None] * q).abs() <= scale[:, None] / 2 * (1 + 1e-6)).all()
    assert not q[5].any() and scale[5] == 1


@needs_compiler
@settings(max_examples=60, deadline=None)
@given(**shapes, bf16_input=st.booleans())
def test_int8_kernel_equals_the_product_of_the_dequantised_weight(out_features, in_features, rows, bias, threads, seed, bf16_input):
    """Against x @ (scale * q).T in float64: the kernel's fused multiply-adds of int8 weights and
    fp32 activations round once per column (rounding_bound), the scaling and the bias once more
    each: twice rounding_bound covers them (and bf16 inputs give bf16 results, rounded once more)."""
    generator = torch.Generator().manual_seed(seed)
    q, scale = cpu_kernel.quantize_int8(torch.randn(out_features, in_features, generator=generator))
    b = torch.randn(out_features, generator=generator) if bias else None
    x = torch.randn(rows, in_features, generator=generator)
    if bf16_input:
        x = x.bfloat16()
    out = run_on_threads(threads, lambda: cpu_kernel.linear_int8(x, q, scale, b))
    assert out.shape == (rows, out_features) and out.dtype == x.dtype
    dequantised = scale.double()[:, None] * q.double()
    exact = F.linear(x.double(), dequantised, None if b is None else b.double())
    bound = 2 * rounding_bound(x.double()[:, None, :] * dequantised, None if b is None else b.double())
    if bf16_input:
        bound = bound + 2.0**-8 * exact.abs()  # the result rounded to bf16
    assert ((out.double() - exact).abs() <= bound).all()


@needs_compiler
@pytest.mark.parametrize("portable", [["-mno-avx512bf16"], ["-mno-avx512f"]])
def test_the_portable_loops_equal_the_exact_products_too(fresh_build, monkeypatch, portable):
    """Built for a CPU without the bf16 dot products (or without AVX-512 at all), the kernel takes
    its portable C loops: the same results, within the same bounds."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86 compiler flags")
    monkeypatch.setattr(cpu_kernel, "FLAGS", [*cpu_kernel.FLAGS, *portable])
    assert cpu_kernel.library() is not None
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(21, 77, generator=generator)
    x = torch.randn(18, 77, generator=generator)
    for rows in (1, 5, 18):
        w16, x16 = weight.bfloat16(), x[:rows].bfloat16()
        out = cpu_kernel.linear_bf16(x16, w16, None)
        exact = x16.double() @ w16.double().T
        assert ((out.double() - exact).abs() <= rounding_bound(x16.double()[:, None] * w16.double(), None) + 2.0**-8 * exact.abs()).all()
        q, scale = cpu_kernel.quantize_int8(weight)
        dequantised = scale.double()[:, None] * q.double()
        exact = x[:rows].double() @ dequantised.T
        out = cpu_kernel.linear_int8(x[:rows], q, scale, None)
        assert ((out.double() - exact).abs() <= 2 * rounding_bound(x[:rows].double()[:, None] * dequantised, None)).all()


@needs_compiler
def test_bf16_and_int8_kernels_refuse_mismatched_input():
    weight = torch.randn(20, 8).bfloat16()
    with pytest.raises(ValueError, match="rows of 8"):
        cpu_kernel.linear_bf16(torch.randn(2, 9).bfloat16(), weight, None)
    with pytest.raises(ValueError, match="rows of 8"):
        cpu_kernel.linear_bf16(torch.randn(2, 8), weight, None)
    with pytest.raises(ValueError, match="contiguous 2-D"):
        cpu_kernel.linear_bf16(torch.randn(2, 20).bfloat16(), weight.T, None)
    with pytest.raises(ValueError, match="bias"):
        cpu_kernel.linear_bf16(torch.randn(2, 8).bfloat16(), weight, torch.randn(20))
    q, scale = cpu_kernel.quantize_int8(weight)
    with pytest.raises(ValueError, match="rows of 8"):
        cpu_kernel.linear_int8(torch.randn(2, 9), q, scale, None)
    with pytest.raises(ValueError, match="scale"):
        cpu_kernel.linear_int8(torch.randn(2, 8), q, scale[:5], None)
    with pytest.raises(ValueError, match="fp32 or bf16"):
        cpu_kernel.linear_int8(torch.randn(2, 8).half(), q, scale, None)


@needs_compiler
def test_kernel_takes_strided_input_and_weight():
    """A column slice of a wider tensor, and a transposed weight, are read as their values."""
    weight, x = torch.randn(8, 32).T, torch.randn(3, 16)[:, ::2]  # weight (32, 8): a whole number of tiles
    torch.testing.assert_close(cpu_kernel.linear(x, cpu_kernel.pack_tiles(weight), None, 32), x @ weight.T)


@needs_compiler
def test_mismatched_input_is_refused_not_read_out_of_bounds():
    tiles = cpu_kernel.pack_tiles(torch.randn(20, 8))
    with pytest.raises(ValueError, match="rows of 8"):
        cpu_kernel.linear(torch.randn(2, 9), tiles, None, 20)
    with pytest.raises(ValueError, match="rows of 8"):
        cpu_kernel.linear(torch.randn(2, 8, dtype=torch.float64), tiles, None, 20)
    with pytest.raises(ValueError, match="does not fit"):
        cpu_kernel.linear(torch.randn(2, 8), tiles, None, 40)
    for bias in [torch.randn(21), torch.randn(20, dtype=torch.float64), torch.randn(40)[::2]]:
        with pytest.raises(ValueError, match="bias"):
            cpu_kernel.linear(torch.randn(2, 8), tiles, bias, 20)
    with pytest.raises(ValueError, match="not made by pack_tiles"):
        cpu_kernel.linear(torch.randn(2, 8), tiles.half(), None, 20)
    with pytest.raises(ValueError, match="2-D fp32 CPU weight"):
        cpu_kernel.pack_tiles(torch.randn(20, 8, dtype=torch.bfloat16))


def test_tiles_memory_is_zeroed_writable_and_outlives_its_mapping_object():
    import gc

    zeros = cpu_kernel.zeros_in_large_pages((3, 5, 16))
    gc.collect()  # the mmap object is referenced by the tensor only
    assert zeros.shape == (3, 5, 16) and zeros.dtype == torch.float32 and not zeros.any()
    zeros += 1
    assert zeros.sum() == 240
    assert cpu_kernel.zeros_in_large_pages((0, 4, 16)).shape == (0, 4, 16)  # no mapping of 0 bytes


def test_tiles_memory_without_large_pages_or_mappings(monkeypatch):
    """A kernel that refuses 2 MB pages, or a system without anonymous mappings: still zeros."""
    monkeypatch.setattr(cpu_kernel.mmap, "MADV_HUGEPAGE", -1, raising=False)  # refused: EINVAL
    assert not cpu_kernel.zeros_in_large_pages((2, 16)).any()

    def no_mappings(*args, **kwargs):
        raise OSError("no anonymous mappings")

    monkeypatch.setattr(cpu_kernel.mmap, "mmap", no_mappings)
    assert not cpu_kernel.zeros_in_large_pages((2, 16)).any()


@needs_compiler
def test_kernel_is_built_once_then_loaded(fresh_build):
    assert cpu_kernel.library() is not None
    (build,) = fresh_build.glob("cpu_kernel-*.so")  # one file, no temporary left behind
    built_at = build.stat().st_mtime_ns
    cpu_kernel.library.cache_clear()
    assert cpu_kernel.library() is not None
    assert [p.name for p in fresh_build.iterdir()] == [build.name] and build.stat().st_mtime_ns == built_at


@needs_compiler
def test_a_damaged_build_is_rebuilt(fresh_build, tmp_path, monkeypatch):
    """A file under the build's name that does not load is replaced by a fresh build."""
    assert cpu_kernel.library() is not None
    (build,) = fresh_build.glob("cpu_kernel-*.so")
    other_cache = tmp_path / "other"  # a path not loaded yet in this process (dlopen reuses those)
    damaged = other_cache / "kernels" / build.name
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not a shared library")
    monkeypatch.setenv("GPTOSS_CACHE", str(other_cache))
    cpu_kernel.library.cache_clear()
    assert cpu_kernel.library() is not None
    assert damaged.read_bytes().startswith(b"\x7fELF")


def test_without_a_compiler_a_warning_says_why(fresh_build, monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(fresh_build))  # no cc or gcc there
    with pytest.warns(RuntimeWarning, match="use oneDNN and decoding attention PyTorch, not the faster C kernel.*no C compiler found.*GPTOSS_CPU_KERNEL=0"):
        assert cpu_kernel.library() is None


def test_a_compiler_that_does_not_run_is_reported(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.warns(RuntimeWarning, match="use oneDNN and decoding attention PyTorch, not the faster C kernel.*nonexistent"):
        assert cpu_kernel.library() is None


@needs_compiler
def test_a_compiler_error_is_reported(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", f"{cpu_kernel.compiler()[0]} --no-such-option")
    with pytest.warns(RuntimeWarning, match="could not build cpu_kernel.c"):
        assert cpu_kernel.library() is None
    assert not list(fresh_build.glob("*"))  # no half-written build


def test_turned_off_by_environment(fresh_build, monkeypatch, recwarn):
    monkeypatch.setenv("GPTOSS_CPU_KERNEL", "0")
    assert cpu_kernel.library() is None
    assert not fresh_build.exists() and not recwarn.list  # chosen, so no warning
