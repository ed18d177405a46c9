"""Foreign checkpoints in and out, with transformers as the oracle: fp32 logits within 1e-4.

Hugging Face GPT-2 and gpt-oss (plain and MXFP4 experts in the real byte layout) written by
transformers load here; OpenAI's original layout, written below from the Hugging Face twin with
names as in OpenAI's reference (gpt_oss/torch/model.py, weights.py), loads with the twin's logits;
models trained here export to directories that transformers opens. Then the errors.
"""

import json
import shutil
import pickle
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GptOssConfig,
    GptOssForCausalLM,
    Mxfp4Config,
)

from gptoss import GPT, GPTConfig
from gptoss.cli import main as cli_main
from gptoss.checkpoints.mxfp4 import PackedExperts, pack_experts_on_meta
from gptoss.checkpoints import detect_format, from_pretrained, load_checkpoint_tokenizer
from gptoss.data.tokenizers import build_tokenizer
from gptoss.train import train_model

ATOL = 1e-4
VOCAB = 97


@pytest.fixture(autouse=True)
def quiet_transformers():
    # transformers warns about tiny random configs (token ids, RoPE factors); not our subject here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers.utils import logging

        level = logging.get_verbosity()
        logging.set_verbosity_error()
        yield
        logging.set_verbosity(level)


def token_batch(seed: int = 0, vocab: int = VOCAB, shape=(2, 24)) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def assert_same_logits(ours: GPT, theirs, idx: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), theirs(idx).logits, rtol=0, atol=ATOL)


def randomize_(model, seed: int) -> None:
    """Random values everywhere (transformers starts biases and sinks at zero, which would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() < 2 else 0.05) + ("norm" in name))


# ---------------------------------------------------------------------------------------- GPT-2
@pytest.fixture(scope="module")
def hf_gpt2():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, n_inner=80)
    model = GPT2LMHeadModel(config).eval()
    randomize_(model, 0)
    return model


@pytest.mark.parametrize("layout", ["safetensors", "sharded", "pytorch_model.bin"])
def test_hf_gpt2_loads_with_the_same_logits(hf_gpt2, tmp_path, layout):
    if layout == "pytorch_model.bin":
        # an old-style checkpoint: GPT2Model names (no "transformer."), causal-mask buffers, pickled
        hf_gpt2.config.save_pretrained(tmp_path)
        state = dict(hf_gpt2.transformer.state_dict())
        state["h.0.attn.bias"] = torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64)
        state["h.0.attn.masked_bias"] = torch.tensor(-1e4)
        torch.save(state, tmp_path / "pytorch_model.bin")
    else:
        hf_gpt2.save_pretrained(tmp_path, max_shard_size="20KB" if layout == "sharded" else "5GB")
    if layout == "sharded":
        assert (tmp_path / "model.safetensors.index.json").is_file()
    assert detect_format(tmp_path)[0] == "hf-gpt2"
    model = GPT.from_pretrained(tmp_path)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied, as GPT-2's are
    assert_same_logits(model, hf_gpt2, token_batch())


def test_gpt2_sizes_match_openai_releases():
    # the configs of the released GPT-2 checkpoints map to our presets (built on meta: no memory)
    for preset, (n_embd, n_layer, n_head) in {
        "gpt2-small": (768, 12, 12), "gpt2-medium": (1024, 24, 16), "gpt2-large": (1280, 36, 20), "gpt2-xl": (1600, 48, 25),
    }.items():
        from gptoss.checkpoints.hf import config_from_hf_gpt2

        hf = GPT2Config(n_embd=n_embd, n_layer=n_layer, n_head=n_head).to_dict()
        assert config_from_hf_gpt2(hf) == GPTConfig.preset(preset, dropout=0.0)


# ---------------------------------------------------------------------------------------- gpt-oss
def hf_gpt_oss_config(**overrides) -> GptOssConfig:
    values = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=6,
        max_position_embeddings=256,
        rope_parameters={
            "rope_type": "yarn", "rope_theta": 150000.0, "factor": 8.0, "beta_fast": 32.0, "beta_slow": 1.0,
            "truncate": False, "original_max_position_embeddings": 32,
        },
    )
    return GptOssConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def hf_gpt_oss_dir(tmp_path_factory):
    """A random Hugging Face gpt-oss, plain experts, saved by transformers."""
    torch.manual_seed(0)
    model = GptOssForCausalLM(hf_gpt_oss_config()).eval()
    randomize_(model, 1)
    directory = tmp_path_factory.mktemp("hf-gpt-oss")
    model.save_pretrained(directory)
    return directory


def random_mxfp4(shape_out_in: tuple[int, int, int], g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks (E, out, in/32, 16) and scales (E, out, in/32) as Hugging Face and OpenAI store them."""
    E, rows, cols = shape_out_in
    blocks = torch.randint(0, 256, (E, rows, cols // 32, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(121, 126, (E, rows, cols // 32), dtype=torch.uint8, generator=g)  # 2^-6 .. 2^-2
    return blocks, scales


@pytest.fixture(scope="module")
def hf_mxfp4_dir(hf_gpt_oss_dir, tmp_path_factory):
    """The same model with random MXFP4 experts, in openai/gpt-oss-20b's layout and config."""
    directory = tmp_path_factory.mktemp("hf-gpt-oss-mxfp4")
    state = load_file(hf_gpt_oss_dir / "model.safetensors")
    g = torch.Generator().manual_seed(2)
    for name in [n for n in state if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        E, d_in, d_out = state.pop(name).shape
        state[name + "_blocks"], state[name + "_scales"] = random_mxfp4((E, d_out, d_in), g)
    # two shards and an index, as the real checkpoint comes
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00000-of-00001.safetensors": names[:half], "model-00001-of-00001.safetensors": names[half:]}
    for file, members in shards.items():
        save_file({n: state[n] for n in members}, directory / file, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {n: file for file, members in shards.items() for n in members}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    config = json.loads((hf_gpt_oss_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn"]}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def load_hf(directory):
    """transformers' own load; MXFP4 is decoded on CPU (no kernels offline) with dequantize=True."""
    quantized = "quantization_config" in json.loads((directory / "config.json").read_text())
    extra = {"quantization_config": Mxfp4Config(dequantize=True)} if quantized else {}
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **extra).eval()


def test_hf_gpt_oss_plain_loads_with_the_same_logits(hf_gpt_oss_dir):
    assert detect_format(hf_gpt_oss_dir)[0] == "hf-gpt-oss"
    model = GPT.from_pretrained(hf_gpt_oss_dir)
    assert model.config.sliding_window == 6 and model.config.rope_scaling["factor"] == 8.0
    assert_same_logits(model, load_hf(hf_gpt_oss_dir), token_batch(shape=(2, 40)))  # past window and YaRN's 32


@pytest.mark.parametrize("dequantize", [False, True])
def test_hf_gpt_oss_mxfp4_loads_with_the_same_logits(hf_mxfp4_dir, dequantize):
    model = GPT.from_pretrained(hf_mxfp4_dir, dequantize_experts=dequantize)
    assert isinstance(model.transformer.h[0].mlp.experts, PackedExperts) is not dequantize
    assert_same_logits(model, load_hf(hf_mxfp4_dir), token_batch(shape=(2, 40)))


def test_mxfp4_default_decodes_small_models(hf_mxfp4_dir):
    assert not isinstance(GPT.from_pretrained(hf_mxfp4_dir).transformer.h[0].mlp.experts, PackedExperts)


# ---------------------------------------------------------------------------------------- OpenAI's layout
def write_openai_layout(hf_dir, directory, plain_experts: bool = False):
    """OpenAI's original checkpoint from a Hugging Face one: the inverse of transformers'
    convert_gpt_oss_weights_to_hf.py, names as in OpenAI's gpt_oss/torch/model.py. Two unindexed
    *.safetensors files, as OpenAI ships its larger model."""
    hf = {}
    for file in sorted(hf_dir.glob("*.safetensors")):
        hf.update(load_file(file))
    hf_config = json.loads((hf_dir / "config.json").read_text())
    rope = hf_config["rope_parameters"]
    config = {  # OpenAI's ModelConfig keys
        "num_hidden_layers": hf_config["num_hidden_layers"], "num_experts": hf_config["num_local_experts"],
        "experts_per_token": hf_config["num_experts_per_tok"], "vocab_size": hf_config["vocab_size"],
        "hidden_size": hf_config["hidden_size"], "intermediate_size": hf_config["intermediate_size"],
        "swiglu_limit": hf_config["swiglu_limit"], "head_dim": hf_config["head_dim"],
        "num_attention_heads": hf_config["num_attention_heads"], "num_key_value_heads": hf_config["num_key_value_heads"],
        "sliding_window": hf_config["sliding_window"], "initial_context_length": rope["original_max_position_embeddings"],
        "rope_theta": rope["rope_theta"], "rope_scaling_factor": rope["factor"], "rope_ntk_alpha": rope["beta_slow"],
        "rope_ntk_beta": rope["beta_fast"],
    }
    state = {"embedding.weight": hf["model.embed_tokens.weight"], "norm.scale": hf["model.norm.weight"],
             "unembedding.weight": hf["lm_head.weight"]}
    for i in range(config["num_hidden_layers"]):
        src, dst = f"model.layers.{i}.", f"block.{i}."
        for kind in ("weight", "bias"):
            state[dst + f"attn.qkv.{kind}"] = torch.cat([hf[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
            state[dst + f"attn.out.{kind}"] = hf[src + f"self_attn.o_proj.{kind}"]
            state[dst + f"mlp.gate.{kind}"] = hf[src + f"mlp.router.{kind}"]
        state[dst + "attn.sinks"] = hf[src + "self_attn.sinks"]
        state[dst + "attn.norm.scale"] = hf[src + "input_layernorm.weight"]
        state[dst + "mlp.norm.scale"] = hf[src + "post_attention_layernorm.weight"]
        for ours, theirs in (("mlp1", "gate_up_proj"), ("mlp2", "down_proj")):
            state[dst + f"mlp.{ours}_bias"] = hf[src + f"mlp.experts.{theirs}_bias"]
            if plain_experts:  # OpenAI's einsum wants (E, out, in); Hugging Face's bmm (E, in, out)
                state[dst + f"mlp.{ours}_weight"] = hf[src + f"mlp.experts.{theirs}"].transpose(1, 2).contiguous()
            else:  # the packed bytes are the same in both layouts
                state[dst + f"mlp.{ours}_weight.blocks"] = hf[src + f"mlp.experts.{theirs}_blocks"]
                state[dst + f"mlp.{ours}_weight.scales"] = hf[src + f"mlp.experts.{theirs}_scales"]
    names = sorted(state)
    save_file({n: state[n] for n in names[::2]}, directory / "model--00001-of-00002.safetensors")
    save_file({n: state[n] for n in names[1::2]}, directory / "model--00002-of-00002.safetensors")
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize("experts", ["mxfp4", "plain"])
def test_openai_layout_loads_like_its_hf_twin(hf_gpt_oss_dir, hf_mxfp4_dir, tmp_path, experts):
    twin = hf_mxfp4_dir if experts == "mxfp4" else hf_gpt_oss_dir
    directory = write_openai_layout(twin, tmp_path, plain_experts=experts == "plain")
    assert detect_format(directory)[0] == "openai-gpt-oss"
    ours = GPT.from_pretrained(directory, dequantize_experts=False)
    idx = token_batch(shape=(2, 40))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), GPT.from_pretrained(twin)(idx), rtol=0, atol=ATOL)
    assert_same_logits(ours, load_hf(twin), idx)


# ---------------------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def shakespeare_tokens_bpe():
    from conftest import shared_data_path

    text = shared_data_path("tinyshakespeare/input.txt").read_text(encoding="utf-8")[:60_000]
    tokenizer = build_tokenizer("bpe", text, vocab_size=300)
    return tokenizer, tokenizer.encode(text)


def trained(config: GPTConfig, tokens) -> GPT:
    torch.manual_seed(0)
    return train_model(GPT(config), tokens, seq_len=32, batch_size=8, num_epochs=1, learning_rate=3e-3, progress=False)


EXPORT_CONFIGS = {
    "gpt2": dict(preset="tiny", d_model=32, num_layers=2, num_heads=4, d_ff=64, max_seq_len=64),
    "gpt-oss": dict(
        preset="gpt-oss-tiny", d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, d_ff=32,
        num_experts=4, experts_per_token=2, sliding_window=8, max_seq_len=64,
        rope_scaling={"factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0, "original_max_seq_len": 16},
    ),
}


@pytest.mark.parametrize("kind", sorted(EXPORT_CONFIGS))
def test_model_trained_here_exports_to_transformers(kind, shakespeare_tokens_bpe, shakespeare_text, tmp_path):
    tokenizer, tokens = shakespeare_tokens_bpe
    values = dict(EXPORT_CONFIGS[kind])
    config = GPTConfig.preset(values.pop("preset"), vocab_size=tokenizer.vocab_size, **values)
    model = trained(config, tokens[:20_000])
    model.save_pretrained(tmp_path / "hf", tokenizer=tokenizer)

    theirs = load_hf(tmp_path / "hf")
    assert type(theirs).__name__ == ("GPT2LMHeadModel" if kind == "gpt2" else "GptOssForCausalLM")
    idx = torch.tensor([tokens[1000:1048]])
    assert_same_logits(model, theirs, idx)
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    sample = shakespeare_text[5000:7000] + "<|endoftext|>"
    assert hf_tokenizer(sample)["input_ids"] == tokenizer.encode(sample)
    # and back here, tokenizer included
    back = GPT.from_pretrained(tmp_path / "hf")
    assert torch.equal(back(idx), model(idx))
    assert load_checkpoint_tokenizer(tmp_path / "hf").encode(sample) == tokenizer.encode(sample)


def test_packed_model_exports_as_mxfp4(hf_mxfp4_dir, tmp_path):
    model = GPT.from_pretrained(hf_mxfp4_dir, dequantize_experts=False)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "mxfp4"
    assert "model.layers.0.mlp.experts.gate_up_proj_blocks" in load_file(tmp_path / "model.safetensors")
    assert_same_logits(model, load_hf(tmp_path), token_batch())


def test_gpt2_tokenizer_exports_as_vocab_and_merges(tokenizer_dir, shakespeare_text, tmp_path):
    tokenizer = build_tokenizer("gpt2", files_dir=tokenizer_dir)
    model = GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, d_model=32, num_heads=4, num_layers=1))
    model.save_pretrained(tmp_path, tokenizer=tokenizer)
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= {p.name for p in tmp_path.iterdir()}
    sample = shakespeare_text[:3000] + "<|endoftext|> and after"
    assert AutoTokenizer.from_pretrained(tmp_path)(sample)["input_ids"] == tokenizer.encode(sample)


def test_harmony_tokenizer_exports_as_tokenizer_json(tokenizer_dir, shakespeare_text, tmp_path):
    tokenizer = build_tokenizer("o200k_harmony", files_dir=tokenizer_dir)
    model = GPT(GPTConfig.preset("gpt-oss-tiny", vocab_size=tokenizer.vocab_size, num_layers=1))
    model.save_pretrained(tmp_path, tokenizer=tokenizer)
    sample = shakespeare_text[:3000] + "<|start|>user<|message|>héllo 🙂 世界<|end|><|endofprompt|>"
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert hf_tokenizer(sample)["input_ids"] == tokenizer.encode(sample)
    assert len(hf_tokenizer) == tokenizer.vocab_size


def test_char_tokenizer_has_no_hf_form(tmp_path):
    tokenizer = build_tokenizer("char", "abc def")
    model = GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, d_model=32, num_heads=4, num_layers=1))
    with pytest.warns(UserWarning, match="no Hugging Face files"):
        model.save_pretrained(tmp_path, tokenizer=tokenizer)
    assert load_checkpoint_tokenizer(tmp_path).encode("bad cafe") == tokenizer.encode("bad cafe")


@pytest.mark.parametrize("dequantize", [False, True])
def test_own_format_round_trip(hf_mxfp4_dir, tmp_path, dequantize):
    model = GPT.from_pretrained(hf_mxfp4_dir, dequantize_experts=dequantize)
    model.save_pretrained(tmp_path, format="gptoss")
    assert detect_format(tmp_path)[0] == "gptoss"
    back = GPT.from_pretrained(tmp_path, dequantize_experts=False)
    assert isinstance(back.transformer.h[0].mlp.experts, PackedExperts) is not dequantize
    idx = token_batch()
    assert torch.equal(back(idx), model(idx))


def test_dtype_option_casts_floating_weights_only(hf_mxfp4_dir):
    model = GPT.from_pretrained(hf_mxfp4_dir, dtype=torch.bfloat16, dequantize_experts=False)
    experts = model.transformer.h[0].mlp.experts
    assert model.transformer.wte.weight.dtype == experts.gate_up_proj_bias.dtype == torch.bfloat16
    assert experts.gate_up_proj_blocks.dtype == torch.uint8
    assert model(token_batch()).dtype == torch.bfloat16


def test_convert_command_round_trip(hf_mxfp4_dir, tmp_path, capsys):
    assert cli_main(["convert", str(hf_mxfp4_dir), str(tmp_path / "own"), "--to", "gptoss"]) == 0
    assert cli_main(["convert", str(tmp_path / "own"), str(tmp_path / "hf"), "--to", "hf", "--dtype", "bfloat16"]) == 0
    assert "hf-gpt-oss" in capsys.readouterr().out
    back = from_pretrained(tmp_path / "hf", dequantize_experts=False)
    assert back.transformer.wte.weight.dtype == torch.bfloat16
    assert isinstance(back.transformer.h[0].mlp.experts, PackedExperts)  # converting keeps the experts packed
    reference = from_pretrained(hf_mxfp4_dir, dtype=torch.bfloat16, dequantize_experts=False)
    assert torch.equal(back(token_batch()), reference(token_batch()))


def test_convert_command_protects_the_source_and_other_folders(hf_mxfp4_dir, tmp_path, capsys):
    """convert replaces its destination whole: a destination that is (or holds) the source, or an
    existing folder that is not a checkpoint, is refused before anything is written; bad input is
    an "error:" line and exit code 2, not a traceback."""
    before = sorted(p.name for p in hf_mxfp4_dir.iterdir())
    for destination in (hf_mxfp4_dir, hf_mxfp4_dir.parent):
        assert cli_main(["convert", str(hf_mxfp4_dir), str(destination), "--to", "hf"]) == 2
        assert "holds the source checkpoint" in capsys.readouterr().err
    assert sorted(p.name for p in hf_mxfp4_dir.iterdir()) == before
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    assert cli_main(["convert", str(hf_mxfp4_dir), str(tmp_path / "notes"), "--to", "hf"]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    assert cli_main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "out"), "--to", "hf"]) == 2
    assert "error:" in capsys.readouterr().err
    assert cli_main(["convert", str(hf_mxfp4_dir), str(tmp_path / "out"), "--to", "hf", "--tokenizer", "gtp2"]) == 2
    assert "--tokenizer 'gtp2' is neither a kind" in capsys.readouterr().err


def test_packed_experts_must_be_bytes_and_decode_to_the_dtype(hf_mxfp4_dir, tmp_path):
    """MXFP4 tensors stored as anything but uint8, or a dtype MXFP4 cannot decode to, are refused when
    loading starts (not at the first forward, after a long load)."""
    with pytest.raises(ValueError, match="MXFP4, which decodes to .*not torch.float64"):
        GPT.from_pretrained(hf_mxfp4_dir, dtype=torch.float64, dequantize_experts=False)
    shutil.copytree(hf_mxfp4_dir, tmp_path / "damaged")
    for shard in (tmp_path / "damaged").glob("*.safetensors"):
        state = load_file(shard)
        save_file({n: t.to(torch.int8) if n.endswith("_scales") else t for n, t in state.items()}, shard)
    with pytest.raises(ValueError, match=r"must be stored as uint8 \(U8\), but 6 are not, e.g. .*_scales \(I8\)"):
        GPT.from_pretrained(tmp_path / "damaged", dequantize_experts=False)


# ---------------------------------------------------------------------------------------- errors
def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GPT.from_pretrained(tmp_path / "nowhere")


def test_directory_without_config(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        GPT.from_pretrained(tmp_path)


def test_directory_without_weights(hf_gpt2, tmp_path):
    hf_gpt2.config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no weights: expected model.safetensors"):
        GPT.from_pretrained(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage header"])
def test_corrupt_safetensors(hf_gpt2, tmp_path, damage):
    hf_gpt2.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000] if damage == "truncated" else data[:8] + b"\x00garbage" + data[16:])
    with pytest.raises(ValueError, match=r"model.safetensors is not a readable safetensors file.*truncated or corrupt"):
        GPT.from_pretrained(tmp_path)


def test_missing_shard(hf_gpt2, tmp_path):
    hf_gpt2.save_pretrained(tmp_path, max_shard_size="20KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(ValueError, match=f"lists shard.*{shard.name}"):
        GPT.from_pretrained(tmp_path)


def test_config_that_does_not_match_the_tensors(hf_gpt_oss_dir, tmp_path):
    for file in hf_gpt_oss_dir.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(num_hidden_layers=4, intermediate_size=32, layer_types=None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as info:
        GPT.from_pretrained(tmp_path)
    message = str(info.value)
    assert "do not match its config.json" in message
    assert "missing: model.layers.3.input_layernorm.weight (64,)" in message  # names with the shapes expected
    assert "missing: model.layers.3.mlp.experts.down_proj (4, 32, 64)" in message
    assert "... and 5 more missing" in message  # 17 tensors per layer, 12 shown
    assert (
        "wrong shape: model.layers.0.mlp.experts.down_proj is (4, 64, 64) in the checkpoint, the config needs (4, 32, 64)"
        in message
    )


def test_unexpected_tensors_are_named(hf_gpt2, tmp_path):
    hf_gpt2.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["transformer.h.9.attn.c_attn.weight"] = torch.zeros(2, 2)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"unexpected: transformer.h.9.attn.c_attn.weight \(2, 2\)"):
        GPT.from_pretrained(tmp_path)


def test_unknown_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(ValueError, match="model_type 'llama' is not supported"):
        GPT.from_pretrained(tmp_path)


def test_untrusted_pickle_is_never_unpickled(hf_gpt2, tmp_path):
    hf_gpt2.config.save_pretrained(tmp_path)
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # would create the marker file if unpickled

    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"transformer.wte.weight": Payload()}))
    with pytest.raises(ValueError, match=r"weights_only=True\) refuses pickled Python objects"):
        GPT.from_pretrained(tmp_path)
    assert not marker.exists()


def test_mxfp4_blocks_need_a_moe_config(hf_gpt2, tmp_path):
    hf_gpt2.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["transformer.h.0.mlp.experts.gate_up_proj_blocks"] = torch.zeros(1, 1, 1, 16, dtype=torch.uint8)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="MXFP4-packed tensors, but its config describes a model without experts"):
        GPT.from_pretrained(tmp_path)


def test_bad_dtype(tmp_path):
    with pytest.raises(TypeError, match="floating torch.dtype"):
        GPT.from_pretrained(tmp_path, dtype="bfloat16")


def test_tokenizer_larger_than_the_model(tokenizer_dir, tmp_path):
    model = GPT(GPTConfig.preset("tiny", vocab_size=VOCAB))
    with pytest.raises(ValueError, match="has 50,257 ids but the model only 97"):
        model.save_pretrained(tmp_path, tokenizer=build_tokenizer("gpt2", files_dir=tokenizer_dir))


def test_bad_save_format(tmp_path):
    with pytest.raises(ValueError, match="unknown checkpoint format 'onnx'"):
        GPT(GPTConfig.preset("tiny")).save_pretrained(tmp_path, format="onnx")


def test_hybrid_config_has_no_hf_form(tmp_path):
    model = GPT(GPTConfig.preset("tiny", norm="rmsnorm"))
    with pytest.raises(ValueError, match="only GPT-2 style configs"):
        model.save_pretrained(tmp_path)


@pytest.mark.parametrize(
    "change", [dict(attention_sinks=True), dict(sliding_window=4), dict(num_kv_heads=2), dict(attention_bias=False)]
)
def test_gpt2_export_refuses_what_gpt2_cannot_express(tmp_path, change):
    model = GPT(GPTConfig.preset("tiny", **change))
    with pytest.raises(ValueError, match="only GPT-2 style configs"):
        model.save_pretrained(tmp_path)


@pytest.mark.parametrize("change", [dict(sliding_window=None), dict(swiglu_alpha=1.0), dict(rope_theta=500.0, rope_scaling=None)])
def test_gpt_oss_variants_export_to_transformers(tmp_path, change):
    """Fields the published models do not vary still reach transformers (a window-less model, alpha, theta)."""
    values = dict(EXPORT_CONFIGS["gpt-oss"])
    config = GPTConfig.preset(values.pop("preset"), vocab_size=VOCAB, **{**values, **change})
    torch.manual_seed(0)
    model = GPT(config).eval()
    randomize_(model, 1)
    model.save_pretrained(tmp_path)
    assert_same_logits(model, load_hf(tmp_path), token_batch())
    back = GPT.from_pretrained(tmp_path).config
    assert {key: getattr(back, key) for key in change} == change


def test_harmony_export_declares_the_turn_end_as_eos(tokenizer_dir, tmp_path):
    tokenizer = build_tokenizer("o200k_harmony", files_dir=tokenizer_dir)
    GPT(GPTConfig.preset("gpt-oss-tiny", vocab_size=tokenizer.vocab_size, num_layers=1)).save_pretrained(tmp_path, tokenizer=tokenizer)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (199998, 200002, 199999)
    assert AutoTokenizer.from_pretrained(tmp_path).eos_token == "<|return|>"


@pytest.mark.parametrize(
    "edit, match",
    [
        (dict(scale_attn_by_inverse_layer_idx=True), "unsupported GPT-2 attention option"),
        (dict(reorder_and_upcast_attn=True), "unsupported GPT-2 attention option"),
    ],
)
def test_gpt2_attention_variants_are_refused(hf_gpt2, tmp_path, edit, match):
    hf_gpt2.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | edit))
    with pytest.raises(ValueError, match=match):
        GPT.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c.pop("num_hidden_layers"), r"lacks \['num_hidden_layers'\]"),
        (lambda c: c.update(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}), "unsupported rope_type 'linear'"),
    ],
)
def test_bad_gpt_oss_configs_are_clear_errors(hf_gpt_oss_dir, tmp_path, edit, match):
    for file in hf_gpt_oss_dir.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    edit(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match):
        GPT.from_pretrained(tmp_path)


def test_index_with_a_bad_weight_map(hf_gpt2, tmp_path):
    hf_gpt2.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["model.safetensors"]}))
    with pytest.raises(ValueError, match="'weight_map' must map tensor names to shard file names"):
        GPT.from_pretrained(tmp_path)


def test_own_checkpoint_with_truncated_weights(tmp_path):
    from gptoss.checkpoints import load_model, save_model

    save_model(GPT(GPTConfig.preset("tiny")), tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_model(tmp_path / "ckpt")


def test_presets_do_not_share_mutable_fields():
    first = GPTConfig.preset("gpt-oss-20b")
    first.rope_scaling["factor"] = 2.0
    assert GPTConfig.preset("gpt-oss-120b").rope_scaling["factor"] == 32.0


@pytest.mark.parametrize(
    "change", [dict(num_kv_heads=0), dict(head_dim=-4), dict(norm_eps=-1.0), dict(rope_theta=0.0)]
)
def test_impossible_config_values_are_refused(change):
    with pytest.raises(ValueError, match="GPTConfig"):
        GPTConfig.preset("tiny", **change)


def test_packed_buffers_have_the_checkpoint_shapes():
    # PackedExperts' buffer shapes are those of the checkpoints (E, out, in/32, 16)
    model = GPT(GPTConfig.preset("gpt-oss-tiny"), device="meta")
    pack_experts_on_meta(model)
    experts = model.transformer.h[0].mlp.experts
    assert experts.gate_up_proj_blocks.shape == (8, 256, 4, 16) and experts.down_proj_scales.shape == (8, 128, 4)
