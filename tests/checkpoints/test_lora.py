"""LoRA: merged weights give the adapted model's logits; adapters saved alone round-trip, and peft
reads them (trained token rows included) onto the Hugging Face export of the same base, its
vocabulary resized for the new tokens, and computes the same logits."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from gptoss.checkpoints import save_pretrained
from gptoss.checkpoints.lora import ADAPTER_CONFIG, add_lora, load_adapter, lora_layers, merge_lora, merged_state_dict, save_adapter, token_layers
from gptoss.config import GPTConfig
from gptoss.model import GPT

GPT2_TINY = dict(vocab_size=97, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_seq_len=32)
GPT_OSS_TINY = dict(vocab_size=97, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, d_ff=16,
                    num_experts=4, experts_per_token=2, max_seq_len=32, sliding_window=8)  # fmt: skip


NEW_TOKENS = [94, 95, 96]  # the last rows: a tokenizer's new special tokens


def adapted(preset: str, overrides: dict, targets=("attn.c_attn", "attn.c_proj")) -> tuple[GPT, GPT]:
    """(a random base, the same base with adapters whose B is random too, so they change the
    logits, and the rows of NEW_TOKENS trained: random too)."""
    torch.manual_seed(0)
    base = GPT(GPTConfig.preset(preset, **overrides)).eval()
    model = GPT(base.config).eval()
    model.load_state_dict(base.state_dict())
    add_lora(model, rank=4, alpha=8.0, targets=targets, token_indices=NEW_TOKENS)
    for layer in lora_layers(model).values():
        torch.nn.init.normal_(layer.lora_B, std=0.1)
    with torch.no_grad():
        for layer in token_layers(model).values():
            layer.token_rows.normal_()
    return base, model


@pytest.mark.parametrize("preset, overrides", [("tiny", GPT2_TINY), ("gpt-oss-tiny", GPT_OSS_TINY)], ids=["gpt2", "gpt-oss"])
def test_merged_model_equals_base_plus_adapters(preset, overrides):
    targets = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj") if preset == "tiny" else ("attn.c_attn", "attn.c_proj")
    base, model = adapted(preset, overrides, targets=targets)
    idx = torch.cat([torch.tensor([NEW_TOKENS * 2]), torch.randint(97, (1, 10))], dim=1).repeat(2, 1)
    with torch.no_grad():
        adapted_logits = model(idx)
        assert not torch.allclose(adapted_logits, base(idx), atol=1e-3)  # the adapters do change the model
        merged = GPT(base.config).eval()
        merged.load_state_dict(merged_state_dict(model.state_dict(), 8.0 / 4))
        torch.testing.assert_close(merged(idx), adapted_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(merge_lora(model)(idx), adapted_logits, rtol=1e-5, atol=1e-5)
    assert not lora_layers(model) and not token_layers(model) and type(model.transformer.h[0].attn.c_attn) is torch.nn.Linear
    assert (model.lm_head.weight is model.transformer.wte.weight) == model.config.tie_embeddings


def test_only_adapters_are_trainable_and_a_fresh_adapter_changes_nothing():
    torch.manual_seed(0)
    base = GPT(GPTConfig.preset("tiny", **GPT2_TINY)).eval()
    idx = torch.randint(97, (1, 8))
    reference = base(idx)
    layers = add_lora(base, rank=2, alpha=4.0, token_indices=NEW_TOKENS)
    adapters = {f"{name}.lora_{x}" for name in layers for x in "AB"}
    assert {n for n, p in base.named_parameters() if p.requires_grad} == adapters | {"transformer.wte.token_rows"}  # lm_head's is tied to it
    torch.testing.assert_close(base(idx), reference, rtol=0, atol=0)  # B = 0: exactly the base
    with pytest.raises(ValueError, match="unknown LoRA target"):
        add_lora(GPT(base.config), 2, 4.0, targets=("attn.q",))


@pytest.mark.parametrize("preset, overrides", [("tiny", GPT2_TINY), ("gpt-oss-tiny", GPT_OSS_TINY)], ids=["gpt2", "gpt-oss"])
def test_peft_loads_the_adapters_on_the_hugging_face_export(tmp_path, preset, overrides):
    transformers = pytest.importorskip("transformers")
    from peft import PeftModel

    base, model = adapted(preset, overrides)
    # what the adapter is read onto: the export of the base before it had the new tokens' rows
    pretrained = GPT(dataclasses.replace(base.config, vocab_size=NEW_TOKENS[0])).eval()
    pretrained.load_state_dict({k: v[: NEW_TOKENS[0]] if k in ("transformer.wte.weight", "lm_head.weight") else v for k, v in base.state_dict().items()})
    save_pretrained(pretrained, tmp_path / "base")
    save_adapter(model, tmp_path / "adapter", base=str(tmp_path / "base"))
    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and NEW_TOKENS in config["trainable_token_indices"].values()

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32).eval()
    hf.resize_token_embeddings(97)  # peft's recipe for new tokens: their rows come from the adapter
    peft_model = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    idx = torch.cat([torch.tensor([NEW_TOKENS * 2]), torch.randint(97, (1, 10))], dim=1).repeat(2, 1)
    with torch.no_grad():
        ours = model(idx)
        torch.testing.assert_close(peft_model(idx).logits, ours, rtol=1e-4, atol=1e-4)
        # and back: the adapters loaded here onto a fresh copy of the base
        again = GPT(base.config).eval()
        again.load_state_dict(base.state_dict())
        load_adapter(again, tmp_path / "adapter")
        torch.testing.assert_close(again(idx), ours, rtol=0, atol=0)
