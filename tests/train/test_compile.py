"""torch.compile of the model, as the trainer's `compile = true` runs it (gptoss.train.distributed)."""

from __future__ import annotations

import torch

from gptoss import GPT, GPTConfig


def test_compiled_gpt2_step_is_one_graph_and_matches_eager():
    """fullgraph=True: the whole GPT-2 forward and loss trace as one graph (the id-range checks,
    which read values, are skipped inside torch.compile); its loss and gradients match eager's."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=17, d_model=32, num_layers=2, num_heads=2, d_ff=64, max_seq_len=16, dropout=0.0))
    x, y = torch.randint(0, 17, (2, 16)), torch.randint(0, 17, (2, 16))
    losses, grads = [], []
    for forward in (model, torch.compile(model, fullgraph=True)):
        loss = forward(x, y)[1]
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
        model.zero_grad(set_to_none=True)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for compiled, eager in zip(grads[1], grads[0]):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-6)
