"""The forward pass never reads a tensor's values on the host (`.item()`, `int(t)`, `bool(t)`,
`.tolist()`): on an accelerator each such read makes the host wait for the device.

Tensors on the meta device have shapes but no values, so any such read raises there: a training
step (forward and backward) and a cached decode step that complete on meta read nothing. The one
deliberate read is the mixture of experts' per-expert token counts, the split sizes that group the
tokens by expert (one per MoE layer); it is checked to be the only one.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gptoss import GPT, GPTConfig
from gptoss.model import Experts

DENSE = {
    "gpt2": GPTConfig.preset("gpt2-small", d_model=64, num_heads=4, num_layers=2, d_ff=128),
    "tiny": GPTConfig.preset("tiny"),
    # every gpt-oss attention feature (GQA, RoPE/YaRN, sliding window, sinks) with a dense MLP
    "gpt-oss attention": GPTConfig.preset("gpt-oss-tiny", mlp="gelu"),
}


@pytest.mark.parametrize("name", DENSE)
def test_a_training_step_reads_no_value_on_the_host(name):
    config = DENSE[name]
    model = GPT(config, device="meta").train()
    idx = torch.randint(0, config.vocab_size, (2, 16), device="meta")
    _, cross_entropy, aux_loss = model(idx, idx, return_aux_loss=True)
    model.objective(cross_entropy, aux_loss).backward()
    assert model.lm_head.weight.grad is not None


def test_a_cached_decode_step_reads_no_value_on_the_host():
    config = DENSE["gpt-oss attention"]
    model = GPT(config, device="meta").eval()
    cache = model.new_cache(2, 32)
    with torch.no_grad():
        model(torch.randint(0, config.vocab_size, (2, 8), device="meta"), cache=cache)  # prefill
        logits = model(torch.randint(0, config.vocab_size, (2, 1), device="meta"), cache=cache, logits_to_keep=1)
    assert logits.shape == (2, 1, config.vocab_size)


class HostReads(TorchDispatchMode):
    """Counts the scalar reads (`.item()`, `int(t)`, `bool(t)`) and, through a patched
    Tensor.tolist, the list reads made under it."""

    def __enter__(self):
        self.reads = []
        self.tolist = torch.Tensor.tolist
        reads, tolist = self.reads, self.tolist

        def counted_tolist(tensor):
            reads.append(f"tolist{tuple(tensor.shape)}")
            return tolist(tensor)

        torch.Tensor.tolist = counted_tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self.tolist
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads.append("scalar")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("padded", [True, False], ids=["padded batch", "per expert"])
def test_the_mixture_of_experts_reads_only_its_expert_counts(padded, monkeypatch):
    """On CPU, besides the id range checks (CPU tensors only: there is no device to wait for), a
    training step reads one list per MoE layer: its tokens per expert. Both ways of Experts.mix."""
    monkeypatch.setattr(Experts, "use_padded_batch", lambda self, sizes, tokens: padded)
    config = GPTConfig.preset("gpt-oss-tiny", num_layers=3)
    model = GPT(config).train()
    idx = torch.randint(0, config.vocab_size, (2, 16))
    with HostReads() as id_checks:
        model.check_input(idx)
        model.check_targets(idx, idx.shape)
    with HostReads() as step:
        _, cross_entropy, aux_loss = model(idx, idx, return_aux_loss=True)
        model.objective(cross_entropy, aux_loss).backward()
    assert sorted(step.reads) == sorted(id_checks.reads + [f"tolist({config.num_experts},)"] * config.num_layers)
