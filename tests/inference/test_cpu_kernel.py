"""The C kernel behind InferenceLinear in fp32 (gptoss/cpu_kernel.c): its product equals the exact
one for any shape, and it is built once per machine, or cleanly not at all."""

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
    with pytest.warns(RuntimeWarning, match="oneDNN, not the faster C kernel.*no C compiler found.*GPTOSS_CPU_KERNEL=0"):
        assert cpu_kernel.library() is None


def test_a_compiler_that_does_not_run_is_reported(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.warns(RuntimeWarning, match="oneDNN, not the faster C kernel.*nonexistent"):
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
