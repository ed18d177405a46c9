"""Muon: its Newton-Schulz orthogonalisation (against torch.linalg.svd), which parameters it takes,
exact resume after SIGKILL (test_trainer's test, parametrized over the optimizer), 2-process DDP
equal to one process, FSDP2 refused with a clear message."""

from __future__ import annotations


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gptoss import GPT, GPTConfig
from gptoss.cli import main
from gptoss.train.config import TrainConfig
from gptoss.train import optim
from gptoss.train.optim import Muon, muon, newton_schulz
from test_distributed import losses, torchrun
from test_trainer import corpus, data_dir, final_weights, metrics, tiny_config, write_toml  # noqa: F401 (fixtures)

# newton_schulz's documented band for the singular values of its output
BAND = (0.6, 1.25)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(2, 96), cols=st.integers(2, 96), batch=st.sampled_from([(), (3,)]), condition=st.floats(1, 100),
       seed=st.integers(0, 2**31 - 1))  # fmt: skip
def test_newton_schulz_keeps_the_singular_vectors_and_brings_the_values_into_its_band(rows, cols, batch, condition, seed):
    """For a matrix U S V^T whose singular values span at most `condition` (<= 100), the output is
    U S' V^T: U^T out V is diagonal (to 1e-4 of its scale) with every S' in the band."""
    g = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(*batch, rows, k, generator=g))
    v, _ = torch.linalg.qr(torch.randn(*batch, cols, k, generator=g))
    values = torch.logspace(0, -torch.log10(torch.tensor(condition)).item(), k) * 3.7  # any overall scale
    out = newton_schulz(u @ torch.diag_embed(values.expand(*batch, k)) @ v.mT)
    inner = u.mT @ out @ v  # (..., k, k): diagonal when the singular vectors are kept
    diagonal = inner.diagonal(dim1=-2, dim2=-1)
    assert (inner - torch.diag_embed(diagonal)).abs().max() < 1e-4
    assert BAND[0] <= diagonal.min() and diagonal.max() <= BAND[1], diagonal
    singular = torch.linalg.svdvals(out)  # and nothing outside the span of U, V
    assert BAND[0] <= singular[..., :k].min() and singular.max() <= BAND[1]


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = GPT(GPTConfig.preset("gpt-oss-tiny", num_layers=2))
    optimizer = muon(model, 1e-3, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    by_muon = {names[id(p)] for group in optimizer.param_groups if group["muon"] for p in group["params"]}
    assert by_muon == {n for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() >= 2 and not n.endswith("bias")}
    assert "transformer.h.0.mlp.experts.gate_up_proj" in by_muon and "transformer.h.0.attn.sinks" not in by_muon
    assert not by_muon & {"transformer.wte.weight", "lm_head.weight"}
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(model.parameters()))


def test_a_muon_update_is_orthogonal_and_scaled_to_adamw_rms():
    """The first step of a matrix with no weight decay moves it by lr * 0.2 * sqrt(max(m, n)) *
    newton_schulz(gradient) (the momentum starts at zero; Nesterov then looks at the gradient)."""
    weight = torch.nn.Parameter(torch.randn(48, 16))
    before = weight.detach().clone()
    weight.grad = torch.randn(48, 16)
    Muon([{"params": [weight], "muon": True}], lr=0.01, momentum=0.9).step()
    update = (before - weight.detach()) / (0.01 * 0.2 * 48**0.5)
    singular = torch.linalg.svdvals(update)
    assert BAND[0] <= singular.min() and singular.max() <= BAND[1]
    # the same direction as the gradient's orthogonalisation U V^T
    u, _, vh = torch.linalg.svd(weight.grad, full_matrices=False)
    assert torch.nn.functional.cosine_similarity(update.flatten(), (u @ vh).flatten(), dim=0) > 0.98


@pytest.mark.parametrize("batch_elements", [2**24, 48 * 16 * 2])
def test_matrices_of_one_shape_are_updated_as_if_each_were_alone(monkeypatch, batch_elements):
    """Muon orthogonalises the matrices of one shape as one batch (at most batch_elements per
    batch): each update equals the one it gets alone (fp32 rounding), and matrices of other shapes
    are unaffected by the grouping."""
    monkeypatch.setattr(optim, "NEWTON_SCHULZ_BATCH_ELEMENTS", batch_elements)
    generator = torch.Generator().manual_seed(0)
    shapes = [(48, 16), (16, 48), (48, 16), (3, 8, 24), (48, 16)]
    weights = [torch.nn.Parameter(torch.randn(*shape, generator=generator)) for shape in shapes]
    grads = [torch.randn(*shape, generator=generator) for shape in shapes]
    alone = []
    for weight, grad in zip(weights, grads):
        single = torch.nn.Parameter(weight.detach().clone())
        single.grad = grad.clone()
        Muon([{"params": [single], "muon": True, "weight_decay": 0.1}], lr=0.01).step()
        alone.append(single.detach())
    for weight, grad in zip(weights, grads):
        weight.grad = grad
    Muon([{"params": weights, "muon": True, "weight_decay": 0.1}], lr=0.01).step()
    for weight, expected in zip(weights, alone):
        torch.testing.assert_close(weight.detach(), expected, atol=1e-6, rtol=1e-5)


def test_muon_under_fsdp_is_refused_with_the_fix():
    with pytest.raises(ValueError, match='optimizer = "muon" needs each weight matrix whole.*parallel = "ddp"'):
        TrainConfig.from_dict({"optim": {"optimizer": "muon"}, "hardware": {"parallel": "fsdp"}})
    with pytest.raises(ValueError, match="optimizer must be adamw or muon"):
        TrainConfig.from_dict({"optim": {"optimizer": "sgd"}})


def test_muon_trains_the_tiny_model(corpus, data_dir, tmp_path):  # noqa: F811
    config = tiny_config(corpus, data_dir, tmp_path / "run", optimizer="muon", max_steps=30, learning_rate=1e-2,
                         checkpoint_every=0, eval_every=30)  # fmt: skip
    assert main(["train", "--config", str(write_toml(tmp_path / "run.toml", config))]) == 0
    rows = metrics(tmp_path / "run")
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"]) - 1.0


def test_muon_under_ddp_matches_one_process(corpus, data_dir, tmp_path):  # noqa: F811
    config = tiny_config(corpus, data_dir, tmp_path / "single", optimizer="muon", schedule="constant", max_steps=5,
                         checkpoint_every=0, eval_every=5)  # fmt: skip
    assert main(["train", "--config", str(write_toml(tmp_path / "single.toml", config))]) == 0
    # 2 processes x 2 accumulation steps x micro-batches of 2 = the same global batch of 8
    ddp = config.replace(run_dir=str(tmp_path / "ddp"), micro_batch_size=2)
    assert "2 processes (DDP)" in torchrun("--config", str(write_toml(tmp_path / "ddp.toml", ddp)))
    for column in ("train_loss", "grad_norm", "val_loss"):
        steps = range(5, 6) if column == "val_loss" else range(1, 6)
        expected = losses(tmp_path / "single", column, steps)
        assert losses(tmp_path / "ddp", column, steps) == pytest.approx(expected, abs=1e-5), column
    reference = final_weights(tmp_path / "single")
    for name, tensor in final_weights(tmp_path / "ddp").items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=1e-5, msg=name)


def test_a_muon_step_reads_no_value_on_the_host():
    """On the meta device any read of a tensor's value raises: a step that completes there reads none
    (no wait for an accelerator in the update)."""
    model = GPT(GPTConfig.preset("gpt-oss-tiny", num_layers=2), device="meta")
    for p in model.parameters():
        p.grad = torch.empty_like(p)
    optimizer = muon(model, 1e-3, 0.1)
    optimizer.step()
    optimizer.step()
    assert optimizer.param_groups[1]["step"] == 2
