"""Loading checkpoints of every supported format into a GPT: ours, Hugging Face's and OpenAI's.

`from_pretrained(path)` recognises the format from the files present (`detect_format`):
  gptoss          this project's own checkpoints (gptoss.checkpoints.native): config.json with "format": "gptoss"
  hf-gpt2         Hugging Face GPT-2: config.json with model_type "gpt2" (small through XL)
  hf-gpt-oss      Hugging Face gpt-oss: model_type "gpt_oss"; experts plain, or MXFP4-packed as
                  `*_blocks` / `*_scales` tensors (quantization_config {"quant_method": "mxfp4"})
  openai-gpt-oss  OpenAI's original gpt-oss layout: config.json with OpenAI's keys (num_experts,
                  experts_per_token, ...) and tensors named `block.0.attn.qkv.weight`, ...
Weights may be model.safetensors, shards listed by a `*.index.json`, a set of *.safetensors (as
OpenAI ships them), or pytorch_model.bin, read with torch.load(weights_only=True): never a full
unpickle.

Loading is lazy and memory-bounded. Names and shapes come from the file headers first, and the
conversion is dry-run on meta tensors, so a checkpoint that does not match its config is rejected,
with every mismatch listed, before a byte of weights is read. Then each tensor is memory-mapped,
converted (renamed, transposed, cast, fused q/k/v concatenated) and copied into memory that the model
owns, one at a time: the model is the only full copy. MXFP4 experts can stay packed
(gptoss.checkpoints.mxfp4.PackedExperts): gpt-oss-20b then needs ~14 GB instead of ~42 GB.

`load_model(path)` is the same loader for this project's own checkpoints, returning the tokenizer
saved with the model too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from gptoss.checkpoints import native
from gptoss.checkpoints.hf import (
    config_from_hf_gpt2,
    config_from_hf_gpt_oss,
    gpt2_state_from_hf,
    gpt2_state_to_hf,
    gpt_oss_state_from_hf,
    gpt_oss_state_from_openai,
    gpt_oss_state_to_hf,
    gpt_oss_state_to_openai,
)
from gptoss.checkpoints.mxfp4 import DECODE_DTYPES, pack_experts_on_meta
from gptoss.checkpoints.mxfp4 import dequantize_experts as dequantize_packed_experts
from gptoss.config import GPTConfig
from gptoss.data.tokenizers import DESCRIPTOR_FILE, load_tokenizer
from gptoss.model import GPT
from gptoss.util.files import readable_directory

CONFIG_FILE = "config.json"
HF_WEIGHTS = "model.safetensors"
# keys only OpenAI's original config.json has (its ModelConfig in gpt_oss/torch/model.py)
OPENAI_CONFIG_KEYS = {"num_experts", "experts_per_token"}
# keep MXFP4 experts packed (by default) when decoding them would take more values than this
DEQUANTIZE_LIMIT = 1_000_000_000
PROGRESS_BYTES = 1 << 30  # show a progress bar for checkpoints of 1 GiB and more
MISMATCHES_SHOWN = 12  # per kind, in the error for a config that does not match its weights
SAFETENSORS_DTYPE_BYTES = {  # bytes per value of each safetensors dtype that torch reads
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}


# ---------------------------------------------------------------------------------------- formats
@dataclass(frozen=True)
class Format:
    """One checkpoint layout: its config reader and its state-dict conversions to and from ours."""

    name: str
    config_from: Callable[[dict], GPTConfig]
    state_from: Callable[[Mapping, GPTConfig], dict]
    state_to: Callable[[dict, GPTConfig], dict]


def _same_names(state: Mapping, config: GPTConfig) -> dict:
    return {name: state[name] for name in state}


FORMATS = {
    "gptoss": Format("gptoss", lambda info: GPTConfig.from_dict(info["config"]), _same_names, _same_names),
    "hf-gpt2": Format(
        "hf-gpt2", config_from_hf_gpt2, lambda s, c: gpt2_state_from_hf(s), lambda s, c: gpt2_state_to_hf(s)
    ),
    "hf-gpt-oss": Format("hf-gpt-oss", config_from_hf_gpt_oss, gpt_oss_state_from_hf, gpt_oss_state_to_hf),
    "openai-gpt-oss": Format("openai-gpt-oss", config_from_hf_gpt_oss, gpt_oss_state_from_openai, gpt_oss_state_to_openai),
}


def detect_format(directory: str | Path) -> tuple[str, dict]:
    """(format name, parsed config.json) of a checkpoint directory; ValueError when unsupported."""
    directory = readable_directory(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ValueError(
            f"{directory} has no {CONFIG_FILE}, so it is not a checkpoint directory: every supported format "
            "(gptoss, Hugging Face gpt2/gpt_oss, OpenAI's original gpt-oss) keeps its config there"
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): restore it from the original checkpoint") from err
    if not isinstance(info, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(info).__name__}")
    if info.get("format") == native.FORMAT:
        return "gptoss", info
    model_type = info.get("model_type")
    if model_type == "gpt2":
        return "hf-gpt2", info
    if model_type == "gpt_oss":
        quantization = info.get("quantization_config") or {}
        if quantization and quantization.get("quant_method") != "mxfp4":
            raise ValueError(
                f"{path}: quantization {quantization.get('quant_method')!r} is not supported; only MXFP4 "
                "experts (quant_method 'mxfp4') or unquantised weights load here"
            )
        return "hf-gpt-oss", info
    if model_type is None and OPENAI_CONFIG_KEYS <= set(info):
        return "openai-gpt-oss", info
    raise ValueError(
        f"{path}: model_type {model_type!r} is not supported. Supported: Hugging Face 'gpt2' and 'gpt_oss', "
        "OpenAI's original gpt-oss config (with num_experts and experts_per_token), and gptoss checkpoints "
        f"(\"format\": \"{native.FORMAT}\")"
    )


def read_config(directory: str | Path) -> tuple[Format, GPTConfig]:
    """The format of a checkpoint directory and its model's GPTConfig."""
    name, info = detect_format(directory)
    try:
        return FORMATS[name], FORMATS[name].config_from(info)
    except KeyError as err:
        raise ValueError(f"{Path(directory) / CONFIG_FILE} ({name}) lacks the key {err}") from err


# ---------------------------------------------------------------------------------------- tensors on disk
class _TensorView(Mapping):
    """A read-only name -> tensor mapping that produces each tensor on access and records which
    names were read. `in` never reads."""

    def __init__(self, names: list[str], produce: Callable[[str], torch.Tensor]):
        self._names, self._set, self._produce = names, set(names), produce
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._set:
            raise KeyError(name)
        self.read.add(name)
        return self._produce(name)

    def __contains__(self, name: object) -> bool:
        return name in self._set

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class CheckpointTensors:
    """The tensors of a checkpoint directory: names, shapes and sizes read from the headers at once,
    data read one tensor at a time.

    Weight files, in order of preference: an index (`model.safetensors.index.json`,
    `pytorch_model.bin.index.json`) and its shards; model.safetensors; every *.safetensors (OpenAI's
    layout); pytorch_model.bin.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.files = weight_files(self.directory)
        self.file_of: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.nbytes: dict[str, int] = {}
        self.dtypes: dict[str, str] = {}  # as the file names them: safetensors' "U8", "BF16", ...; torch.uint8, ...
        self._pickled: dict[Path, dict[str, torch.Tensor]] = {}  # .bin files, lazily mapped
        for file in self.files:
            for name, shape, nbytes, dtype in self._scan(file):
                if name in self.file_of:
                    raise ValueError(f"tensor {name} is stored twice, in {self.file_of[name]} and {file}: remove one copy")
                self.file_of[name], self.shapes[name], self.nbytes[name], self.dtypes[name] = file, shape, nbytes, dtype
        self._check_index()

    @property
    def names(self) -> list[str]:
        return list(self.file_of)

    def _scan(self, file: Path) -> list[tuple[str, tuple[int, ...], int, str]]:
        if file.suffix == ".bin":
            state = load_pickled_weights(file)
            self._pickled[file] = state
            return [(name, tuple(t.shape), t.numel() * t.element_size(), str(t.dtype)) for name, t in state.items()]
        try:
            with safe_open(file, framework="pt") as f:
                entries = []
                for name in f.keys():
                    tensor = f.get_slice(name)
                    shape = tuple(tensor.get_shape())
                    if tensor.get_dtype() not in SAFETENSORS_DTYPE_BYTES:
                        raise ValueError(f"{file}: tensor {name} has dtype {tensor.get_dtype()}, which is not supported")
                    itemsize = SAFETENSORS_DTYPE_BYTES[tensor.get_dtype()]
                    entries.append((name, shape, itemsize * int(torch.Size(shape).numel()), tensor.get_dtype()))
                return entries
        except (SafetensorError, OSError) as err:
            raise ValueError(
                f"{file} is not a readable safetensors file ({err}); it is probably truncated or corrupt: "
                "download or copy it again"
            ) from err

    def _check_index(self) -> None:
        indexes = [self.directory / n for n in INDEX_FILES if (self.directory / n).is_file()]
        index = next(iter(indexes or sorted(self.directory.glob("*.safetensors.index.json"))), None)
        if index is None:
            return
        weight_map = read_index(index)
        stale = sorted(name for name, file in weight_map.items() if self.file_of.get(name) != self.directory / file)
        if stale:
            raise ValueError(
                f"{index} does not match its shards: {len(stale)} tensor(s), e.g. {stale[0]}, are not where it says; "
                "the index or a shard is from another checkpoint"
            )

    def read(self, name: str) -> torch.Tensor:
        """Tensor `name` as stored, memory-mapped: callers copy what they keep.

        A .bin tensor is handed over and forgotten (so it can be read once): a legacy .bin, which
        cannot be memory-mapped, is then never held in memory next to the model's copy.
        """
        file = self.file_of[name]
        if file in self._pickled:
            return self._pickled[file].pop(name)
        with safe_open(file, framework="pt") as f:  # opened per tensor, so no mapping outlives its copy
            return f.get_tensor(name)

    def meta_view(self) -> _TensorView:
        """Every tensor as an empty meta tensor of its shape: for dry runs of a conversion."""
        return _TensorView(self.names, lambda name: torch.empty(self.shapes[name], device="meta"))

    def loading_view(self, dtype: torch.dtype | None, device: torch.device, progress: tqdm | None) -> _TensorView:
        """Every tensor read on access and copied into memory of its own, floating tensors cast to
        `dtype` (None: as stored), on `device`."""

        def produce(name: str) -> torch.Tensor:
            stored = self.read(name)
            target = dtype if dtype is not None and stored.is_floating_point() else stored.dtype
            tensor = stored.to(device=device, dtype=target, copy=True)
            if progress is not None:
                progress.update(self.nbytes[name])
            return tensor

        return _TensorView(self.names, produce)


INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint directory (see CheckpointTensors)."""
    indexes = [directory / n for n in INDEX_FILES if (directory / n).is_file()] or sorted(directory.glob("*.safetensors.index.json"))
    if indexes:
        files = sorted({directory / file for file in read_index(indexes[0]).values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"{indexes[0]} lists shard(s) {missing} that are not in {directory}: copy the missing files")
        return files
    if (directory / HF_WEIGHTS).is_file():
        return [directory / HF_WEIGHTS]
    shards = sorted(directory.glob("*.safetensors"))
    if shards:
        return shards
    if (directory / "pytorch_model.bin").is_file():
        return [directory / "pytorch_model.bin"]
    raise ValueError(
        f"{directory} has a {CONFIG_FILE} but no weights: expected {HF_WEIGHTS}, a sharded "
        "model.safetensors.index.json with its shards, *.safetensors files, or pytorch_model.bin"
    )


def read_index(path: Path) -> dict[str, str]:
    """The weight_map (tensor name -> shard file name) of a sharded checkpoint's index."""
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a valid index (a JSON object with a 'weight_map'): {err}") from err
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{path} is not a valid index: its 'weight_map' must map tensor names to shard file names")
    return weight_map


def load_pickled_weights(file: Path) -> dict[str, torch.Tensor]:
    """A pytorch_model.bin state dict, loaded with weights_only=True (tensors only: no code runs)."""
    try:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):  # legacy (pre-zip) files cannot be memory-mapped
                raise
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to unpickle safely is the file's fault
        raise ValueError(
            f"{file} could not be loaded as plain tensors ({type(err).__name__}): torch.load(weights_only=True) "
            "refuses pickled Python objects other than tensors, or the file is corrupt. Such files are never "
            "unpickled in full here (that could run arbitrary code): use a safetensors copy of the checkpoint"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise ValueError(f"{file} does not hold a state dict (a dict of tensor names to tensors)")
    return state


# ---------------------------------------------------------------------------------------- loading
def from_pretrained(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    dequantize_experts: bool | None = None,
    progress: bool | None = None,
) -> GPT:
    """Load a checkpoint directory of any supported format (see the module doc) as a GPT in eval mode.

    dtype: cast floating weights (None keeps them as stored, e.g. bf16 for gpt-oss). MXFP4 experts
    stay packed when dequantize_experts is False, are decoded when True, and by default (None) are
    decoded unless that would take more than 1e9 values (gpt-oss-20b stays packed). progress: show a
    progress bar (None: for checkpoints of 1 GiB and more).
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.bfloat16 (or None), got {dtype!r}")
    directory = readable_directory(path)
    fmt, config = read_config(directory)
    tensors = CheckpointTensors(directory)
    packed = any(name.endswith(("_blocks", ".blocks")) for name in tensors.names)
    if packed and config.mlp != "moe":
        raise ValueError(f"{directory} holds MXFP4-packed tensors, but its config describes a model without experts")
    if packed:
        check_packed_tensors(tensors, dtype)

    model = GPT(config, device="meta")
    if packed:
        pack_experts_on_meta(model)
    check_tensors_match(fmt, config, tensors, model.state_dict())

    total = sum(tensors.nbytes.values())
    show = total >= PROGRESS_BYTES if progress is None else progress
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"loading {directory.name}", disable=not show) as bar:
        state = fmt.state_from(tensors.loading_view(dtype, torch.device(device), bar), config)
        for name in state:  # transposed views become plain tensors, one at a time
            state[name] = state[name].contiguous()
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    del state
    if packed and dequantize_experts is not False:
        decoded_values = 3 * config.num_layers * config.num_experts * config.d_model * config.d_ff
        if dequantize_experts or decoded_values <= DEQUANTIZE_LIMIT:
            dequantize_packed_experts(model)
    return model.eval()


def check_packed_tensors(tensors: CheckpointTensors, dtype: torch.dtype | None) -> None:
    """Raise a ValueError unless the MXFP4 blocks and scales are stored as bytes (uint8) and `dtype`
    is one they decode to: found now, not at the first forward after a long load."""
    suffixes = ("_blocks", ".blocks", "_scales", ".scales")
    wrong = [f"{name} ({tensors.dtypes[name]})" for name in tensors.names
             if name.endswith(suffixes) and tensors.dtypes[name] not in ("U8", str(torch.uint8))]  # fmt: skip
    if wrong:
        raise ValueError(
            f"the MXFP4 blocks and scales in {tensors.directory} must be stored as uint8 (U8), but "
            f"{len(wrong)} are not, e.g. {', '.join(wrong[:3])}: the checkpoint is damaged or was written by a "
            "tool that re-encoded them; use the original files"
        )
    if dtype is not None and dtype not in DECODE_DTYPES:
        raise ValueError(
            f"this checkpoint's experts are MXFP4, which decodes to {', '.join(map(str, DECODE_DTYPES))}, "
            f"not {dtype}: choose one of those dtypes"
        )


def check_tensors_match(fmt: Format, config: GPTConfig, tensors: CheckpointTensors, expected: dict) -> None:
    """Raise a ValueError listing, in the checkpoint's own names, every tensor that is missing,
    unexpected or of the wrong shape for `config`. Reads no weights: the conversion is dry-run on
    meta tensors."""
    view = tensors.meta_view()
    produced = fmt.state_from(view, config)
    if config.tie_embeddings:
        expected = {k: v for k, v in expected.items() if k != "lm_head.weight"}
        produced.pop("lm_head.weight", None)
    wrong_shape, missing, unexpected = [], [], []
    for name, want in expected.items():
        if name not in produced:
            for theirs, tensor in fmt.state_to({name: want}, config).items():
                if theirs not in tensors.shapes:
                    missing.append(f"{theirs} {tuple(tensor.shape)}")
        elif produced[name].shape != want.shape:
            wrong = [
                f"{theirs} is {tensors.shapes[theirs]} in the checkpoint, the config needs {tuple(tensor.shape)}"
                for theirs, tensor in fmt.state_to({name: want}, config).items()
                if tensors.shapes.get(theirs, tuple(tensor.shape)) != tuple(tensor.shape)
            ]
            wrong_shape += wrong or [f"{name} comes out {tuple(produced[name].shape)}, the config needs {tuple(want.shape)}"]
    for name in produced.keys() - expected.keys():
        unexpected += [f"{theirs} {tuple(t.shape)}" for theirs, t in fmt.state_to({name: produced[name]}, config).items()]
    unexpected += [f"{name} {tensors.shapes[name]}" for name in tensors.names if name not in view.read]
    if wrong_shape or missing or unexpected:
        lines = []
        for title, problems in (("wrong shape", wrong_shape), ("missing", missing), ("unexpected", unexpected)):
            problems = sorted(set(problems))
            lines += [f"  {title}: {problem}" for problem in problems[:MISMATCHES_SHOWN]]
            if len(problems) > MISMATCHES_SHOWN:
                lines.append(f"  ... and {len(problems) - MISMATCHES_SHOWN} more {title}")
        raise ValueError(
            f"the weights in {tensors.directory} do not match its {CONFIG_FILE} ({fmt.name} format, "
            f"{config.num_layers} layers, d_model {config.d_model}):\n" + "\n".join(lines) + "\n"
            f"Use the {CONFIG_FILE} that came with these weights."
        )


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, object | None]:
    """Load a checkpoint written by save_model (this project's format): (model in eval mode, the
    tokenizer saved with it or None). The same loader and checks as from_pretrained."""
    if detect_format(directory)[0] != "gptoss":
        raise ValueError(f"{directory} is not a gptoss checkpoint (no {CONFIG_FILE} with format {native.FORMAT!r})")
    return from_pretrained(directory, device=device), load_checkpoint_tokenizer(directory)


def load_checkpoint_tokenizer(directory: str | Path):
    """The tokenizer saved with a checkpoint (gptoss: tokenizer/; exported: gptoss_tokenizer.json), or None."""
    directory = readable_directory(directory)
    for folder in (directory / "tokenizer", directory):
        if (folder / DESCRIPTOR_FILE).is_file():
            return load_tokenizer(folder)
    return None
