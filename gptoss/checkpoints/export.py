"""Writing checkpoints: Hugging Face directories that transformers opens, or this project's own.

`save_pretrained(model, dir, format="hf")` writes config.json, model.safetensors and the tokenizer's
Hugging Face files, so that transformers' AutoModelForCausalLM / AutoTokenizer open the directory
(GPT-2 or gpt-oss by the config; MXFP4-packed experts are written packed, with their
quantization_config); format="gptoss" writes this project's own (gptoss.checkpoints.native).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

from safetensors.torch import save_file

from gptoss.checkpoints import native
from gptoss.checkpoints.hf import config_to_hf_gpt2, config_to_hf_gpt_oss, gpt2_state_to_hf, gpt_oss_state_to_hf
from gptoss.checkpoints.load import CONFIG_FILE, HF_WEIGHTS
from gptoss.checkpoints.mxfp4 import has_packed_experts
from gptoss.data.tokenizers import check_tokenizer_fits
from gptoss.model import GPT
from gptoss.util.files import write_directory_atomically
from gptoss.util.modules import unwrap_model

# how Hugging Face marks a gpt-oss checkpoint with MXFP4 experts (as openai/gpt-oss-20b does)
MXFP4_QUANTIZATION_CONFIG = {
    "quant_method": "mxfp4",
    "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
}

SAVE_FORMATS = ("hf", "gptoss")


def save_pretrained(model: GPT, directory: str | Path, format: str = "hf", tokenizer=None) -> Path:
    """Write `model` (and its tokenizer) as a checkpoint directory, atomically.

    format="hf": config.json, model.safetensors and tokenizer files that transformers'
    AutoModelForCausalLM / AutoTokenizer open (GPT-2 or gpt-oss by the config; packed experts are
    written as MXFP4 with its quantization_config). format="gptoss": this project's own format.
    """
    model = unwrap_model(model)
    if tokenizer is not None:
        check_tokenizer_fits(tokenizer, model.config.vocab_size)
    if format == "gptoss":
        return native.save_model(model, directory, tokenizer=tokenizer)
    if format != "hf":
        raise ValueError(f"unknown checkpoint format {format!r}; choose one of {SAVE_FORMATS}")
    config = model.config
    if config.mlp == "moe":
        hf_config = config_to_hf_gpt_oss(config)
        state = gpt_oss_state_to_hf(native.model_state_dict(model), config)
    else:
        hf_config = config_to_hf_gpt2(config)
        state = gpt2_state_to_hf(native.model_state_dict(model))
    if has_packed_experts(model):
        hf_config["quantization_config"] = MXFP4_QUANTIZATION_CONFIG
    hf_config["dtype"] = str(model.transformer.wte.weight.dtype).removeprefix("torch.")
    if tokenizer is not None and tokenizer.kind == "o200k_harmony":  # as openai/gpt-oss-* ship
        ids = {name: tokenizer.encode(token)[0] for name, token in HARMONY_SPECIAL_TOKENS.items()}
        hf_config.update(bos_token_id=ids["bos_token"], eos_token_id=ids["eos_token"], pad_token_id=ids["pad_token"])
    elif tokenizer is not None and tokenizer.eot_id is not None:
        hf_config["bos_token_id"] = hf_config["eos_token_id"] = tokenizer.eot_id

    def write(tmp: Path) -> None:
        (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
        save_file(state, str(tmp / HF_WEIGHTS), metadata={"format": "pt"})
        if tokenizer is not None:
            write_hf_tokenizer(tokenizer, tmp, config.max_seq_len)

    return write_directory_atomically(directory, write)


# gpt-oss's special tokens as openai/gpt-oss-* declare them: a reply (a turn) ends at <|return|>
HARMONY_SPECIAL_TOKENS = {"bos_token": "<|startoftext|>", "eos_token": "<|return|>", "pad_token": "<|endoftext|>"}


def write_hf_tokenizer(tokenizer, directory: Path, max_length: int) -> None:
    """Write `tokenizer` into a Hugging Face directory.

    Always writes this project's own description too (gptoss_tokenizer.json, read back by
    load_checkpoint_tokenizer). Hugging Face files: bpe -> tokenizer.json; gpt2 -> vocab.json and
    merges.txt copied from its local files; o200k_harmony -> tokenizer.json converted from its local
    o200k_base.tiktoken by transformers; char has no Hugging Face form (warned), nor do tiktoken
    kinds without local files.
    """
    tokenizer.save(directory)
    special = "<|endoftext|>"
    hf_config = {"model_max_length": max_length, "bos_token": special, "eos_token": special}
    files_dir = getattr(tokenizer, "files_dir", None)
    if tokenizer.kind == "bpe":  # tokenizer.save wrote tokenizer.json, in the `tokenizers` library's format
        hf_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    elif tokenizer.kind == "gpt2" and files_dir is not None:
        shutil.copyfile(files_dir / "encoder.json", directory / "vocab.json")
        shutil.copyfile(files_dir / "vocab.bpe", directory / "merges.txt")
        hf_config.update(tokenizer_class="GPT2Tokenizer", unk_token=special, add_prefix_space=False)
    elif tokenizer.kind == "o200k_harmony" and files_dir is not None:
        (directory / "tokenizer.json").write_text(harmony_tokenizer_json(tokenizer), encoding="utf-8")
        hf_config.update(tokenizer_class="PreTrainedTokenizerFast", **HARMONY_SPECIAL_TOKENS)
    else:
        warnings.warn(
            f"a {tokenizer.kind} tokenizer{'' if files_dir or tokenizer.kind in ('char', 'bpe') else ' without local files'} "
            "has no Hugging Face files here (bpe has, and gpt2 / o200k_harmony given their local files): the "
            "exported directory holds only gptoss_tokenizer.json",
            stacklevel=3,
        )
        return
    (directory / "tokenizer_config.json").write_text(json.dumps(hf_config, indent=2) + "\n")


def harmony_tokenizer_json(tokenizer) -> str:
    """o200k_harmony as a `tokenizers` tokenizer.json: the BPE ranks of its local o200k_base.tiktoken
    converted by transformers' TikTokenConverter, plus its special tokens at their ids."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    encoding = tokenizer._encoding  # the tiktoken.Encoding; transformers' own gpt-oss converter reads the same attributes
    # id -> name; id 200018 has two names, <|endofprompt|> and an alias <|reserved_200018|>: keep the real name
    first = {}
    for name, token_id in sorted(encoding._special_tokens.items(), key=lambda item: item[0].startswith("<|reserved_")):
        first.setdefault(token_id, name)
    ids = sorted(first)
    base = encoding.n_vocab - len(ids)
    if ids != list(range(base, encoding.n_vocab)):
        raise ValueError("o200k_harmony's special tokens are expected to follow its BPE ranks without gaps")
    converter = TikTokenConverter(
        vocab_file=str(tokenizer.files_dir / "o200k_base.tiktoken"),
        pattern=encoding._pat_str,
        extra_special_tokens=[first[i] for i in ids],  # added in order: they get ids base, base + 1, ...
    )
    return converter.converted().to_str()
