"""LoRA (Hu et al., 2021): low-rank adapters on a frozen model's linear layers.

A linear layer y = W x + b, W (out, in), learns only a low-rank change of its weight:

    y = W x + b + (alpha / r) * B (A x)        A (r, in) ~ Kaiming-uniform, B (out, r) = 0 at the start

so a fresh adapter leaves the model exactly as it was, and training moves r * (in + out) numbers per
layer instead of in * out. Merging folds the change in: W' = W + (alpha / r) * B A.

Adapters are saved alone, in peft's layout (adapter_config.json + adapter_model.safetensors, keys
`base_model.model.MODULE.lora_A.weight` / `.lora_B.weight`), named after the modules of the Hugging
Face export of the same base (gptoss.checkpoints.export): GPT-2's names are ours (its Conv1D layers
need peft's fan_in_fan_out); for gpt-oss, our fused q|k|v projection becomes q_proj, k_proj, v_proj,
which share A and take their rows of B (B A split by rows is exactly their three changes).
Adapters go on attention projections (`attn.c_attn`, `attn.c_proj`) and dense MLPs (`mlp.c_fc`,
`mlp.c_proj`); the stacked expert weights of MoE models are not adapted here.

New tokens (a chat template's special tokens, whose rows start random) cannot be learnt through
adapters on the blocks alone, so `add_lora` can also train chosen rows of the token embedding (and of
the unembedding: the same rows when tied): `TrainableTokens`, peft's "trainable tokens" exactly. The
trained rows replace the base's (values, not deltas), so the adapter applies to any base with those
ids, e.g. the Hugging Face export of the pretrained model after `resize_token_embeddings`. peft
saves them as `base_model.model.EMBEDDING.token_adapter.trainable_tokens_delta` (n, d) with
`trainable_token_indices` {EMBEDDING: ids} in its config (and lm_head's own rows when untied).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from gptoss.model import GPT
from gptoss.util.files import write_directory_atomically
from gptoss.util.modules import unwrap_model

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
DEFAULT_TARGETS = ("attn.c_attn", "attn.c_proj")
GPT_OSS_NAMES = {"attn.c_proj": "self_attn.o_proj"}  # attn.c_attn splits into self_attn.{q,k,v}_proj
TOKEN_LAYERS = {"gpt2": {"transformer.wte": "transformer.wte", "lm_head": "lm_head"},  # ours -> the export's
                "gpt-oss": {"transformer.wte": "model.embed_tokens", "lm_head": "lm_head"}}  # fmt: skip
TOKEN_TENSOR = "token_adapter.trainable_tokens_delta"


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank change of its weight (see the module doc)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device, dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear (and peft) initialise A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale

    def merged_weight(self) -> torch.Tensor:
        """W + (alpha / r) B A, (out, in)."""
        return self.base.weight + self.scale * (self.lora_B @ self.lora_A)


class TrainableTokens(nn.Module):
    """A frozen embedding (or unembedding) whose rows `token_indices` are trained: it computes with
    the base's weight, those rows replaced by `token_rows` (n, d). A tied unembedding shares the
    embedding's `token_rows` (pass `rows`)."""

    def __init__(self, base: nn.Embedding | nn.Linear, token_indices: list[int], rows: nn.Parameter | None = None):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.register_buffer("token_indices", torch.tensor(list(token_indices), dtype=torch.int64, device=base.weight.device))
        self.token_rows = rows if rows is not None else nn.Parameter(base.weight.detach()[self.token_indices].clone())

    @property
    def weight(self) -> torch.Tensor:
        """The weight computed with: the base's, rows token_indices replaced, (vocab, d)."""
        return self.base.weight.index_copy(0, self.token_indices, self.token_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding: ids (...) -> (..., d); unembedding: (..., d) -> logits (..., vocab)."""
        if isinstance(self.base, nn.Embedding):
            return F.embedding(x, self.weight)
        return F.linear(x, self.weight, self.base.bias)


def token_layers(model: nn.Module) -> dict[str, TrainableTokens]:
    """The model's embeddings with trained rows, by module name (transformer.wte, lm_head)."""
    return {name: module for name, module in unwrap_model(model).named_modules() if isinstance(module, TrainableTokens)}


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's adapted layers by module name (e.g. transformer.h.0.attn.c_attn)."""
    return {name: module for name, module in unwrap_model(model).named_modules() if isinstance(module, LoRALinear)}


def add_lora(model: GPT, rank: int, alpha: float, targets: tuple[str, ...] = DEFAULT_TARGETS,
             token_indices: list[int] = ()) -> dict[str, LoRALinear]:  # fmt: skip
    """Freeze every parameter of `model` and put a fresh adapter on each linear layer whose name
    ends with one of `targets`, and train the embedding rows of `token_indices` (new tokens);
    returns the adapted layers by name."""
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        raise ValueError(f"unknown LoRA target(s) {unknown}: choose among {', '.join(TARGETS)}")
    model.requires_grad_(False)
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear and name.endswith(tuple(targets)):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, LoRALinear(module, rank, alpha))
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"no linear layer of this model matches the LoRA targets {list(targets)} (MoE experts are not adapted)")
    if len(token_indices):
        if not all(0 <= i < model.config.vocab_size for i in token_indices):
            raise ValueError(f"trainable token ids must be below the vocabulary size {model.config.vocab_size}, got {list(token_indices)}")
        model.transformer.wte = TrainableTokens(model.transformer.wte, token_indices)
        tied = model.config.tie_embeddings  # then the unembedding's rows are the embedding's
        model.lm_head = TrainableTokens(model.lm_head, token_indices, model.transformer.wte.token_rows if tied else None)
    return layers


def merged_state_dict(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A plain model's state dict from an adapted one's: `X.base.weight` + scale * `X.lora_B` @
    `X.lora_A` becomes `X.weight`, `X.base.bias` becomes `X.bias`; an embedding's `X.base.weight`
    with rows `X.token_indices` replaced by `X.token_rows` becomes `X.weight` (works on gathered
    FSDP states too)."""
    merged = {}
    for name, tensor in state.items():
        if name.endswith((".lora_A", ".lora_B", ".token_rows", ".token_indices")):
            continue
        prefix = name.removesuffix(".base.weight")
        if name.endswith(".base.weight") and f"{prefix}.lora_A" in state:
            tensor = tensor + scale * (state[f"{prefix}.lora_B"] @ state[f"{prefix}.lora_A"]).to(tensor.dtype)
        if name.endswith(".base.weight") and f"{prefix}.token_rows" in state:
            tensor = tensor.index_copy(0, state[f"{prefix}.token_indices"].to(tensor.device), state[f"{prefix}.token_rows"].to(tensor))
        merged[name.replace(".base.", ".")] = tensor
    return merged


def merge_lora(model: GPT) -> GPT:
    """Fold every adapter (and trained token rows) into its layer, in place: the model becomes a
    plain GPT again."""
    layers = {**lora_layers(model), **token_layers(model)}
    for name, layer in layers.items():
        with torch.no_grad():
            if isinstance(layer, LoRALinear):
                layer.base.weight.copy_(layer.merged_weight())
            else:  # a tied unembedding's rows land in the shared matrix twice, the same values
                layer.base.weight[layer.token_indices] = layer.token_rows
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.base)
    return model


# ---------------------------------------------------------------------------------------- peft files
def hf_names(model: GPT) -> str:
    """Which Hugging Face export names this model's modules: "gpt-oss" or "gpt2"."""
    return "gpt-oss" if model.config.mlp == "moe" else "gpt2"


def exported_token_layers(model: GPT) -> dict[str, TrainableTokens]:
    """The trained token rows peft stores: the embedding's, and the unembedding's when it is not
    tied (peft ties a tied unembedding's rows to the embedding's itself)."""
    layers = token_layers(model)
    if model.config.tie_embeddings:
        layers.pop("lm_head", None)
    return layers


def hf_adapter_tensors(model: GPT, layers: dict[str, LoRALinear]) -> tuple[dict[str, torch.Tensor], list[str], dict[str, list[int]]]:
    """peft's tensors for the adapters and trained token rows (named as the Hugging Face export
    names the modules), its target modules (their full names, so that peft adapts exactly these: a
    bare `c_proj` would also match GPT-2's mlp.c_proj) and its trainable_token_indices."""
    tensors, modules = {}, set()
    gpt_oss = hf_names(model) == "gpt-oss"
    for name, layer in layers.items():
        A, B = layer.lora_A.detach().contiguous(), layer.lora_B.detach().contiguous()
        if not gpt_oss:
            parts = {name: (A, B)}
        else:
            layer_index = name.split(".")[2]
            kind = name.split(".", 3)[3]
            if kind == "attn.c_attn":
                c = model.config
                rows = [c.num_heads * c.head_size, c.kv_heads * c.head_size, c.kv_heads * c.head_size]
                parts = {f"model.layers.{layer_index}.self_attn.{p}": (A, b.contiguous()) for p, b in zip(("q_proj", "k_proj", "v_proj"), B.split(rows))}
            elif kind in GPT_OSS_NAMES:
                parts = {f"model.layers.{layer_index}.{GPT_OSS_NAMES[kind]}": (A, B)}
            else:
                raise ValueError(f"{name} has no gpt-oss Hugging Face counterpart")
        for module, (a, b) in parts.items():
            tensors[f"base_model.model.{module}.lora_A.weight"] = a.clone()
            tensors[f"base_model.model.{module}.lora_B.weight"] = b.clone()
            modules.add(module)
    trainable = {}
    for name, layer in exported_token_layers(model).items():
        module = TOKEN_LAYERS[hf_names(model)][name]
        tensors[f"base_model.model.{module}.{TOKEN_TENSOR}"] = layer.token_rows.detach().clone()
        trainable[module] = layer.token_indices.tolist()
    return tensors, sorted(modules), trainable


def adapter_config(model: GPT, layers: dict[str, LoRALinear], target_modules: list[str], trainable: dict, base: str) -> dict:
    """peft's adapter_config.json for these adapters."""
    first = next(iter(layers.values()))
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": first.rank,
        "lora_alpha": first.alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": target_modules,
        "trainable_token_indices": trainable or None,
        "fan_in_fan_out": model.config.mlp != "moe",  # GPT-2's Conv1D layers store W transposed
        "init_lora_weights": True,
        "inference_mode": True,
    }


def write_adapter_files(model: GPT, directory: Path, base: str = "") -> None:
    """Write adapter_config.json and adapter_model.safetensors into an existing folder."""
    model = unwrap_model(model)
    layers = lora_layers(model)
    tensors, modules, trainable = hf_adapter_tensors(model, layers)
    save_file(tensors, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (directory / ADAPTER_CONFIG).write_text(json.dumps(adapter_config(model, layers, modules, trainable, base), indent=2) + "\n")


def save_adapter(model: GPT, directory: str | Path, base: str = "") -> Path:
    """Save the model's adapters alone (peft's layout), atomically; `base`: the base checkpoint's path."""
    return write_directory_atomically(directory, lambda tmp: write_adapter_files(model, tmp, base))


def our_layer_name(hf_module: str) -> str:
    """Our name of the layer a Hugging Face module name of an adapter belongs to."""
    if not hf_module.startswith("model.layers."):  # GPT-2: the names are ours
        return hf_module
    _, _, index, rest = hf_module.split(".", 3)
    kind = "attn.c_attn" if rest in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj") else next(
        (ours for ours, theirs in GPT_OSS_NAMES.items() if theirs == rest), rest)  # fmt: skip
    return f"transformer.h.{index}.{kind}"


def saved_token_indices(model: GPT, config: dict, directory: Path) -> list[int]:
    """The token ids whose rows an adapter's config trains (one set for the embedding and an
    untied unembedding, as add_lora trains them)."""
    trainable = config.get("trainable_token_indices") or {}
    names = TOKEN_LAYERS[hf_names(model)]
    if isinstance(trainable, list):  # peft's short form: the input embedding's
        trainable = {names["transformer.wte"]: trainable}
    indices = {tuple(ids) for ids in trainable.values()}
    if len(indices) > 1 or set(trainable) - set(names.values()):
        raise ValueError(f"the adapter in {directory} trains token rows this project cannot: {trainable} (one set of ids, on the embeddings)")
    return list(next(iter(indices), ()))


def load_adapter(model: GPT, directory: str | Path) -> dict[str, LoRALinear]:
    """Put the adapters (and trained token rows) saved in `directory` (by save_adapter) onto
    `model`: the same base, or any with the same weights but those rows."""
    directory = Path(directory)
    if not (directory / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"no LoRA adapter in {directory}: {ADAPTER_CONFIG} is missing")
    config = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    tensors = load_file(str(directory / ADAPTER_WEIGHTS))
    lora_keys = [key for key in tensors if not key.endswith(TOKEN_TENSOR)]
    names = {our_layer_name(key.removeprefix("base_model.model.").rsplit(".", 2)[0]) for key in lora_keys}
    targets = tuple(sorted({name.split(".", 3)[3] for name in names}))
    layers = add_lora(model, config["r"], config["lora_alpha"], targets, saved_token_indices(model, config, directory))
    saved, _, _ = hf_adapter_tensors(model, layers)  # the names (and shapes) these layers are saved under
    if set(saved) != set(tensors):
        raise ValueError(f"the adapter in {directory} does not fit this model: its tensors are for other layers")
    gpt_oss = hf_names(model) == "gpt-oss"
    with torch.no_grad():
        for name, layer in exported_token_layers(model).items():
            layer.token_rows.copy_(tensors[f"base_model.model.{TOKEN_LAYERS[hf_names(model)][name]}.{TOKEN_TENSOR}"])
        for name, layer in layers.items():
            if not gpt_oss:
                layer.lora_A.copy_(tensors[f"base_model.model.{name}.lora_A.weight"])
                layer.lora_B.copy_(tensors[f"base_model.model.{name}.lora_B.weight"])
                continue
            layer_index, kind = name.split(".")[2], name.split(".", 3)[3]
            modules = [f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")] if kind == "attn.c_attn" else [GPT_OSS_NAMES[kind]]
            keys = [f"base_model.model.model.layers.{layer_index}.{m}" for m in modules]
            layer.lora_A.copy_(tensors[f"{keys[0]}.lora_A.weight"])
            layer.lora_B.copy_(torch.cat([tensors[f"{k}.lora_B.weight"] for k in keys]))
    return layers
