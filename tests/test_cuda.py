"""The CUDA paths: the same logits, cache and tokens as on the CPU; training in fp32, bf16 and fp16
(autocast and the grad scaler), compiled, checkpointed and resumed; the seed's train_model; MXFP4
experts; `gptoss generate --device cuda`; transformers' gpt-oss as the oracle on the GPU.

Skipped where no GPU is present (CI has none); run on a GPU machine with
`python -m pytest tests/test_cuda.py`.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_generation import (  # noqa: F401 (fixtures)
    CONFIGS, char_checkpoint, char_model_and_tokenizer, greedy_without_cache, hf_gpt_oss_and_ours, random_model,
)
from test_mxfp4 import CONFIG as PACKED_CONFIG
from test_mxfp4 import packed_model
from test_trainer import TINY_MODEL, corpus, data_dir, metrics, tiny_config  # noqa: F401 (fixtures)

from gptoss.inference import InferenceLinear, generate, generate_batch, prepare_for_inference
from gptoss.checkpoints.mxfp4 import dequantize_experts
from gptoss.train import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def models(request):
    """One random model (GPT-2 or gpt-oss with GQA, sinks and a 6-token window): (CPU, CUDA) copies."""
    cpu = random_model(CONFIGS[request.param])
    return cpu, copy.deepcopy(cpu).cuda()


def test_logits_on_cuda_equal_the_cpu(models):
    cpu, gpu = models
    seq = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(gpu(seq.cuda()).cpu(), cpu(seq), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prefill", [1, 17])
def test_cached_logits_on_cuda_equal_a_full_forward(models, prefill):
    """As on the CPU: every decoding step's logits equal the full forward pass, ring buffers wrapping."""
    _, gpu = models
    seq = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(prefill)).cuda()
    with torch.no_grad():
        full = gpu(seq)
        cache = gpu.new_cache(2)
        assert all(layer.k.device.type == "cuda" for layer in cache.layers)
        steps = [gpu(seq[:, :prefill], cache=cache)] + [gpu(seq[:, t : t + 1], cache=cache) for t in range(prefill, 40)]
    assert (torch.cat(steps, dim=1) - full).abs().max() <= 1e-5


def test_generation_on_cuda(models):
    """Greedy tokens: with and without the cache, and as on the CPU; a CPU prompt is moved to the
    model's device; left-padded batches; a seed reproduces on the GPU's own generator."""
    cpu, gpu = models
    prompt = torch.randint(0, 97, (3, 5), generator=torch.Generator().manual_seed(2))
    tokens = generate(gpu, prompt, 30, temperature=0)
    assert tokens.device.type == "cuda"
    assert torch.equal(tokens, greedy_without_cache(gpu, prompt.cuda(), 30))
    assert torch.equal(tokens.cpu(), generate(cpu, prompt, 30, temperature=0))
    prompts = [prompt[0, :n].tolist() for n in (1, 5, 3)]
    assert generate_batch(gpu, prompts, 20, temperature=0) == [generate_batch(gpu, [p], 20, temperature=0)[0] for p in prompts]
    options = dict(temperature=0.9, top_k=20, top_p=0.9, min_p=0.01, repetition_penalty=1.2)
    first = generate(gpu, prompt, 20, seed=11, **options)
    assert torch.equal(first, generate(gpu, prompt, 20, seed=11, **options))
    assert not torch.equal(first, generate(gpu, prompt, 20, seed=12, **options))


def test_prepare_for_inference_leaves_cuda_layers_alone(models):
    """Its faster matrix products are CPU ones: on the GPU the model keeps plain nn.Linear."""
    _, gpu = models
    prepared = prepare_for_inference(copy.deepcopy(gpu))
    assert not any(isinstance(m, InferenceLinear) for m in prepared.modules())


def test_generate_command_on_cuda(char_checkpoint, capsys):  # noqa: F811
    """`gptoss generate --device cuda` loads the checkpoint onto the GPU and writes the CPU's text."""
    from gptoss.cli import main

    texts = {}
    for device in ("cpu", "cuda"):
        args = ["generate", "--checkpoint", str(char_checkpoint), "--prompt", "the ", "--greedy", "--max-new-tokens", "40"]
        assert main(args + ["--device", device]) == 0
        texts[device], err = capsys.readouterr()
        assert ("cuda:0]" in err) == (device == "cuda")
    assert texts["cuda"] == texts["cpu"] and len(texts["cpu"]) == len("the ") + 40 + 1


def test_greedy_tokens_equal_transformers_gpt_oss_on_cuda():
    hf, model = (m.cuda() for m in hf_gpt_oss_and_ours())
    prompt = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(9)).cuda()
    with torch.no_grad():
        expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=30, do_sample=False, pad_token_id=0)
    assert torch.equal(generate(model, prompt, 30, temperature=0), expected)


def test_packed_mxfp4_experts_on_cuda():
    """Packed experts decode on the GPU to the CPU's values, and the model gives the same logits."""
    packed = packed_model()
    plain = dequantize_experts(packed_model())
    gpu = packed_model().cuda()
    idx = torch.randint(0, PACKED_CONFIG.vocab_size, (2, 20))
    with torch.no_grad():
        for e in range(PACKED_CONFIG.num_experts):
            for w_gpu, w_cpu in zip(gpu.transformer.h[0].mlp.experts.expert_weights(e), plain.transformer.h[0].mlp.experts.expert_weights(e)):
                assert torch.equal(w_gpu.cpu(), w_cpu)
        torch.testing.assert_close(gpu(idx.cuda()).cpu(), packed(idx), rtol=1e-4, atol=1e-4)
        assert torch.equal(gpu.generate(idx[:, :5], 8, temperature=0).cpu(), packed.generate(idx[:, :5], 8, temperature=0))


# ---------------------------------------------------------------------------------------- training
GPT_OSS_MODEL = {"preset": "gpt-oss-tiny", "d_model": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
                 "head_dim": 16, "d_ff": 32, "num_experts": 4, "experts_per_token": 2, "sliding_window": 8,
                 "max_seq_len": 64}  # fmt: skip


@pytest.mark.parametrize(
    "precision, model, compiled",
    [("fp32", TINY_MODEL, False), ("bf16", GPT_OSS_MODEL, False), ("fp16", TINY_MODEL, False), ("bf16", TINY_MODEL, True)],
)
def test_trainer_on_cuda_trains_and_resumes(corpus, data_dir, tmp_path, precision, model, compiled):  # noqa: F811
    """6 updates on the GPU: the loss falls and stays finite; a run resumed from step 3 logs the
    uninterrupted run's losses (to GPU reduction-order rounding)."""
    config = tiny_config(corpus, data_dir, tmp_path / "whole", device="cuda", precision=precision, model=model,
                         compile=compiled)  # fmt: skip
    trainer = Trainer(config)
    assert trainer.device.type == "cuda" and next(trainer.raw_model.parameters()).device.type == "cuda"
    trainer.fit()
    whole = {int(r["step"]): float(r["train_loss"]) for r in metrics(tmp_path / "whole") if r["train_loss"]}
    assert all(math.isfinite(loss) for loss in whole.values()) and whole[6] < whole[1]
    step_3 = tmp_path / "whole" / "checkpoints" / "step-0000003"
    Trainer(config.replace(run_dir=str(tmp_path / "resumed")), resume=step_3).fit()
    resumed = {int(r["step"]): float(r["train_loss"]) for r in metrics(tmp_path / "resumed") if r["train_loss"]}
    assert [resumed[s] for s in (4, 5, 6)] == pytest.approx([whole[s] for s in (4, 5, 6)], rel=1e-3)


def test_seed_train_model_uses_the_gpu_and_generates_from_a_cpu_prompt():
    """The seed's API on a GPU machine: train_model moves the model to CUDA by default, and the
    seed's generation example (a CPU tensor of start tokens) still works on the trained model."""
    from model import create_gpt_oss_20b
    from train import train_model

    model = create_gpt_oss_20b(vocab_size=97, max_seq_len=64, preset="tiny", d_model=32, num_layers=2, num_heads=2, d_ff=64)
    tokens = torch.randint(0, 97, (4000,), generator=torch.Generator().manual_seed(0)).tolist()
    trained = train_model(model, tokens[:3500], tokens[3500:], seq_len=32, batch_size=8, num_epochs=1, progress=False)
    assert next(trained.parameters()).device.type == "cuda"
    generated = trained.generate(torch.tensor([[1, 2, 3, 4, 5]]), max_new_tokens=10, temperature=0.8, top_k=40)
    assert generated.shape == (1, 15) and generated[0, :5].tolist() == [1, 2, 3, 4, 5]


def test_python_train_py_demo_on_cuda(tmp_path, capsys):
    """`python train.py` on a GPU machine: trains there (train_model's default) and samples there."""
    from gptoss.cli.demo import main

    main(["--max-chars", "30000", "--epochs", "1", "--seq-len", "64", "--sample-tokens", "40", "--out", str(tmp_path / "demo")])
    out = capsys.readouterr().out
    assert "val perplexity" in out and "--- sample ---" in out
