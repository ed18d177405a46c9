"""The run config: everything that defines a training run, in tables, one per part of the trainer.

A run is a TOML (or YAML) file:

    run_dir = "runs/tiny"        # the run itself: its folder, seed and length
    seed = 1337
    max_steps = 2000
    [data]        corpus, tokenizer and the token files (gptoss.data)
    [model]       preset = a GPTConfig preset, plus any GPTConfig field to override
    [batch]       window length, windows per update, windows per forward pass
    [optim]       AdamW and the learning-rate schedule
    [curriculum]  how training windows are drawn (gptoss.train.windows)
    [hardware]    device, precision, torch.compile, DDP or FSDP2
    [eval]        how often, on how many windows
    [checkpoint]  how often, how many kept
    [log]         metrics.csv rows, progress bar, TensorBoard
    [sft]         fine-tuning on conversations from a checkpoint (full or LoRA) instead of pretraining

Each part of the trainer is given its own table. Every key has one name across all tables, so a
file of the older flat form (every key at the top level) still reads, `--set learning_rate=3e-4`
works like `--set optim.learning_rate=3e-4`, and `config.learning_rate` reads `config.optim.learning_rate`.
`gptoss train --keys` lists every key with its default and meaning.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from gptoss.config import PRESETS, GPTConfig
from gptoss.data.token_files import default_prepared_dir
from gptoss.data.tokenizers import KINDS as TOKENIZER_KINDS
from gptoss.train.schedule import LRSchedule
from gptoss.util.devices import DEVICE_HELP, check_device_name

PRECISIONS = ("fp32", "bf16", "fp16")
PARALLEL_MODES = ("ddp", "fsdp")


def key(default, doc: str):
    """A config field with its documentation (shown by `gptoss train --keys`)."""
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


def check_at_least(table, minimum: int, *names: str) -> None:
    """Raise ValueError naming the first of `names` whose value in `table` is below `minimum`."""
    for name in names:
        if getattr(table, name) < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {getattr(table, name)!r}")


# ---------------------------------------------------------------------------------------- tables
@dataclass
class DataConfig:
    """[data]: the corpus, its tokenizer and where its token files are cached."""

    corpus: str = key("shakespeare", "corpus name (shakespeare, pystdlib) or a UTF-8 text file, folder or glob")
    tokenizer: str = key("char", "tokenizer kind: char, bpe (trained on the corpus), gpt2 or o200k_harmony")
    bpe_vocab_size: int = key(4096, "vocabulary size of a bpe tokenizer")
    data_dir: str = key(
        "", "where the tokenized corpus is cached; empty: data_cache/CORPUS-TOKENIZER[VOCAB][-Nchars], the folder "
        "`gptoss prepare` writes by default"
    )
    val_fraction: float = key(0.1, "last fraction of the corpus held out for validation")
    max_chars: int = key(0, "use only the first max_chars characters of the corpus; 0: all of it")
    tokenizer_files: str = key("", "folder with OpenAI's tokenizer files, for gpt2 / o200k_harmony offline")

    def __post_init__(self) -> None:
        check_at_least(self, 1, "bpe_vocab_size")
        check_at_least(self, 0, "max_chars")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1): training evaluates on held-out text, got {self.val_fraction!r}")
        if self.tokenizer not in TOKENIZER_KINDS:
            raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZER_KINDS)}, got {self.tokenizer!r}")

    def path(self) -> Path:
        """Folder of the tokenized corpus."""
        if self.data_dir:
            return Path(self.data_dir)
        return default_prepared_dir(self.corpus, self.tokenizer, self.bpe_vocab_size, self.max_chars or None)


@dataclass
class BatchConfig:
    """[batch]: the shape of an update."""

    seq_len: int = key(256, "tokens per training window (at most the model's max_seq_len)")
    batch_size: int = key(64, "windows per optimizer update, over all processes and accumulation steps")
    micro_batch_size: int = key(
        0,
        "windows per forward pass in each process; batch_size must be a multiple of micro_batch_size x "
        "processes, the multiple being the gradient accumulation steps; 0: batch_size / processes",
    )

    def __post_init__(self) -> None:
        check_at_least(self, 1, "seq_len", "batch_size")
        check_at_least(self, 0, "micro_batch_size")
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size}): "
                "the multiple is the number of gradient accumulation steps"
            )


@dataclass
class OptimConfig:
    """[optim]: the optimizer, gradient clipping and the learning-rate schedule."""

    optimizer: str = key("adamw", "adamw, or muon: Muon for the blocks' weight matrices, AdamW for the rest (same lr)")
    muon_momentum: float = key(0.95, "muon only: momentum of the Muon matrices (Nesterov)")
    learning_rate: float = key(1e-3, "peak learning rate, reached at the end of the warmup")
    min_lr: float = key(1e-4, "floor the cosine and wsd schedules decay to")
    schedule: str = key("cosine", "learning-rate schedule after the warmup: cosine, constant or wsd")
    warmup_steps: int = key(100, "updates of linear warmup from learning_rate / warmup_steps")
    decay_fraction: float = key(0.2, "wsd only: the last fraction of max_steps that decays to min_lr")
    weight_decay: float = key(0.1, "AdamW weight decay, applied to weight matrices only")
    decay_embeddings: bool = key(True, "whether the embedding matrices (and a tied unembedding) are decayed too")
    beta1: float = key(0.9, "AdamW beta1")
    beta2: float = key(0.95, "AdamW beta2")
    grad_clip: float = key(1.0, "clip the global gradient norm to this; 0: no clipping (the norm is still logged)")

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"optimizer must be adamw or muon, got {self.optimizer!r}")
        if not 0 <= self.muon_momentum < 1:
            raise ValueError(f"muon_momentum must be in [0, 1), got {self.muon_momentum!r}")
        check_at_least(self, 0, "warmup_steps", "weight_decay", "grad_clip")
        if not 0 < self.learning_rate < math.inf:
            raise ValueError(f"learning_rate must be > 0 and finite, got {self.learning_rate!r}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")

    def lr_schedule(self, max_steps: int) -> LRSchedule:
        """The learning-rate schedule of a run of max_steps updates (it checks its own values)."""
        return LRSchedule(self.schedule, self.learning_rate, self.min_lr, self.warmup_steps, max_steps, self.decay_fraction)


@dataclass
class CurriculumConfig:
    """[curriculum]: how training windows are drawn (gptoss.train.windows; bench/bench_curriculum.py measured them)."""

    random_offsets: bool = key(True, "training windows start at any token; false: only at multiples of seq_len (a fixed cut of the text)")
    bpe_dropout: float = key(0.0, "bpe tokenizer only: re-encode training windows skipping each BPE merge with this probability; 0: off")
    seq_len_warmup_steps: int = key(0, "grow training windows linearly from seq_len_start to seq_len over these updates; 0: off")
    seq_len_start: int = key(32, "window length at the first update of the seq_len warmup")
    seq_len_warmup_keep_tokens: bool = key(
        True, "during the seq_len warmup, draw more, shorter windows: about batch_size x seq_len tokens per update")
    difficulty_warmup_steps: int = key(
        0, "draw windows first from the easiest chunks of the text (unigram surprisal), growing to all of it over these updates; 0: off")
    difficulty_start_fraction: float = key(0.25, "fraction of the text (the easiest chunks) drawn from at the first update")

    def __post_init__(self) -> None:
        check_at_least(self, 0, "seq_len_warmup_steps", "difficulty_warmup_steps")
        if not 0 <= self.bpe_dropout < 1:
            raise ValueError(f"bpe_dropout must be in [0, 1), got {self.bpe_dropout!r}")
        if not 0 < self.difficulty_start_fraction <= 1:
            raise ValueError(f"difficulty_start_fraction must be in (0, 1], got {self.difficulty_start_fraction!r}")


@dataclass
class HardwareConfig:
    """[hardware]: where and how the model computes."""

    device: str = key("auto", DEVICE_HELP)
    precision: str = key("fp32", "fp32; bf16 (autocast, CPU or CUDA); fp16 (autocast and a grad scaler, CUDA)")
    compile: bool = key(False, "run the model through torch.compile")
    parallel: str = key("ddp", "under torchrun: ddp (a replica per process) or fsdp (FSDP2 shards the model)")

    def __post_init__(self) -> None:
        for name, allowed in (("precision", PRECISIONS), ("parallel", PARALLEL_MODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        check_device_name(self.device)


@dataclass
class EvalConfig:
    """[eval]: the validation loss, perplexity and bits per byte on a fixed subset."""

    eval_every: int = key(250, "evaluate every eval_every updates and at the end; 0: only at the end")
    eval_sequences: int = key(128, "windows in the fixed validation subset (a multiple of the process count)")

    def __post_init__(self) -> None:
        check_at_least(self, 1, "eval_sequences")
        check_at_least(self, 0, "eval_every")


@dataclass
class CheckpointConfig:
    """[checkpoint]: when checkpoints are written and how many are kept."""

    checkpoint_every: int = key(500, "checkpoint every checkpoint_every updates and at the end; 0: only at the end")
    keep_last: int = key(2, "checkpoints kept in checkpoints/ (older ones are deleted); best/ is kept apart")

    def __post_init__(self) -> None:
        check_at_least(self, 1, "keep_last")
        check_at_least(self, 0, "checkpoint_every")


@dataclass
class LogConfig:
    """[log]: what the run reports as it goes."""

    log_every: int = key(10, "write a metrics.csv row (mean train loss since the last row) every log_every updates")
    progress: bool = key(True, "show a progress bar")
    tensorboard: bool = key(True, "also log to run_dir/tensorboard when the tensorboard package is installed")

    def __post_init__(self) -> None:
        check_at_least(self, 1, "log_every")


@dataclass
class SFTConfig:
    """[sft]: supervised fine-tuning on conversations (gptoss.train.sft) instead of pretraining on [data]."""

    conversations: str = key("", "JSONL file of conversations to fine-tune on (gptoss.data.conversations); empty: pretraining")
    val_conversations: str = key("", "held-out JSONL file of conversations for the validation loss; empty: the last val_fraction of them")
    init_from: str = key("", "the checkpoint fine-tuning starts from: this project's, Hugging Face GPT-2 or gpt-oss")
    lora_rank: int = key(0, "LoRA rank: train only low-rank adapters on lora_targets, the base frozen; 0: full fine-tuning")
    lora_alpha: float = key(16.0, "LoRA scale numerator: the adapters' change is (lora_alpha / lora_rank) B A")
    lora_targets: str = key("attn.c_attn,attn.c_proj", "comma-separated layers that get adapters: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj")

    def __post_init__(self) -> None:
        check_at_least(self, 0, "lora_rank")
        if self.conversations and not self.init_from:
            raise ValueError("fine-tuning on conversations needs init_from: the checkpoint to start from")


TABLES = {
    "data": DataConfig, "batch": BatchConfig, "optim": OptimConfig, "curriculum": CurriculumConfig,
    "hardware": HardwareConfig, "eval": EvalConfig, "checkpoint": CheckpointConfig, "log": LogConfig,
    "sft": SFTConfig,
}  # fmt: skip
# every key of every table, to the table it belongs to: the flat names
TABLE_OF = {f.name: table for table, cls in TABLES.items() for f in dataclasses.fields(cls)}


# ---------------------------------------------------------------------------------------- the run
@dataclass
class TrainConfig:
    """Everything that defines a training run: a few keys of the run itself, and one table per part
    (see the module doc). Build it from plain values with from_dict."""

    run_dir: str = key("runs/run", "folder of the run: checkpoints, metrics.csv, loss_curve.png, run_config.json")
    seed: int = key(1337, "seeds model init, data order and dropout: same seed and config, same run")
    max_steps: int = key(2000, "optimizer updates in the whole run")
    model: dict = key(
        {"preset": "tiny"},
        "[model] table: preset = a GPTConfig preset name (default tiny); any other key overrides that "
        "GPTConfig field (vocab_size defaults to the tokenizer's)",
    )
    data: DataConfig = field(default_factory=DataConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)

    def __post_init__(self) -> None:
        self.validate()

    def __getattr__(self, name: str):
        # the flat names of older code and files: config.learning_rate is config.optim.learning_rate
        if name in TABLE_OF:
            return getattr(getattr(self, TABLE_OF[name]), name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------------ building and checking
    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from plain values (a parsed TOML file, tables or flat keys): unknown keys and
        wrong types are errors."""
        nested = nest(values)
        hints = typing.get_type_hints(cls)
        top = {name: _checked_type(name, value, hints[name]) for name, value in nested.items() if name not in TABLES}
        tables = {}
        for table, table_cls in TABLES.items():
            table_hints = typing.get_type_hints(table_cls)
            tables[table] = table_cls(**{name: _checked_type(name, value, table_hints[name])
                                         for name, value in nested.get(table, {}).items()})  # fmt: skip
        return cls(**top, **tables)

    def to_dict(self) -> dict:
        """Plain-dict form (JSON/TOML-serialisable), one nested dict per table."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> TrainConfig:
        """A copy with some keys changed (flat names or whole tables; checked like from_dict)."""
        values = self.to_dict()
        for table, table_values in nest(changes).items():
            if table in TABLES:
                values[table] = {**values[table], **table_values}
            else:
                values[table] = table_values
        return TrainConfig.from_dict(values)

    def validate(self) -> None:
        """Raise ValueError naming the first bad value (the tables check their own) and what would
        be accepted."""
        check_at_least(self, 1, "max_steps")
        self.lr_schedule()  # the schedule checks its own values (min_lr range, warmup <= max_steps, kinds)
        if self.bpe_dropout and self.tokenizer != "bpe":
            raise ValueError(f"bpe_dropout needs tokenizer = \"bpe\" (BPE merges to drop), got tokenizer = {self.tokenizer!r}")
        if self.optim.optimizer == "muon" and self.hardware.parallel == "fsdp":
            raise ValueError(
                "optimizer = \"muon\" needs each weight matrix whole (its update orthogonalises the matrix), but "
                "parallel = \"fsdp\" gives each process a shard: use parallel = \"ddp\", or optimizer = \"adamw\" with FSDP"
            )
        if self.seq_len_warmup_steps and not 1 <= self.seq_len_start <= self.seq_len:
            raise ValueError(f"seq_len_start must be in [1, seq_len = {self.seq_len}], got {self.seq_len_start!r}")
        if not self.sft.conversations:  # fine-tuning takes its model from sft.init_from
            self.model_config()  # a bad preset or model override is reported now, not after data preparation

    # ------------------------------------------------------------------ derived objects
    def lr_schedule(self) -> LRSchedule:
        """The learning-rate schedule this config describes."""
        return self.optim.lr_schedule(self.max_steps)

    def model_config(self, tokenizer_vocab_size: int | None = None) -> GPTConfig:
        """The GPTConfig of the [model] table; vocab_size defaults to the tokenizer's."""
        overrides = dict(self.model)
        preset = overrides.pop("preset", "tiny")
        if preset not in PRESETS:
            raise ValueError(f"[model] preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        known = {f.name for f in dataclasses.fields(GPTConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown [model] key(s) {unknown}: the table takes preset and GPTConfig fields ({', '.join(sorted(known))})")
        if tokenizer_vocab_size is not None:
            overrides.setdefault("vocab_size", tokenizer_vocab_size)
            if overrides["vocab_size"] < tokenizer_vocab_size:
                raise ValueError(
                    f"[model] vocab_size={overrides['vocab_size']} is smaller than the tokenizer's "
                    f"{tokenizer_vocab_size} ids: remove it or make it at least {tokenizer_vocab_size}"
                )
        config = GPTConfig.preset(preset, **overrides)
        if self.seq_len > config.max_seq_len:
            raise ValueError(
                f"seq_len={self.seq_len} exceeds the model's max_seq_len={config.max_seq_len}: lower seq_len "
                "or set max_seq_len in [model]"
            )
        return config

    def data_path(self) -> Path:
        """Folder of the tokenized corpus."""
        return self.data.path()


def nest(values: dict) -> dict:
    """`values` with every flat key moved into its table: {"learning_rate": 3e-4} -> {"optim":
    {"learning_rate": 3e-4}}. Unknown keys, a table that is not a table, and a key given both flat
    and in its table are errors."""
    top_level = {f.name for f in dataclasses.fields(TrainConfig)} - set(TABLES)
    nested: dict = {}
    for name, value in values.items():
        if name in TABLES:
            if not isinstance(value, dict):
                raise TypeError(f"training config key {name!r} must be a table of keys ([{name}]), got {value!r}")
            for inner in value:
                if TABLE_OF.get(inner) != name:
                    known = [f.name for f in dataclasses.fields(TABLES[name])]
                    close = difflib.get_close_matches(inner, known, n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else f"; it takes {', '.join(known)}"
                    where = f" (it belongs in [{TABLE_OF[inner]}])" if inner in TABLE_OF else ""
                    raise ValueError(f"unknown [{name}] key {inner!r}{where}{hint}")
            table, items = name, value
        elif name in TABLE_OF:
            table, items = TABLE_OF[name], {name: value}
        elif name in top_level:
            nested[name] = value
            continue
        else:
            known = sorted(top_level | set(TABLE_OF))
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r} ([{TABLE_OF[close[0]]}])?" if close and close[0] in TABLE_OF else (
                f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}")  # fmt: skip
            raise ValueError(f"unknown training config key {name!r}{hint}")
        target = nested.setdefault(table, {})
        for inner, inner_value in items.items():
            if inner in target:
                raise ValueError(f"training config key {inner!r} is given twice, at the top level and in [{table}]: keep one")
            target[inner] = inner_value
    return nested


def _checked_type(name: str, value, hint):
    """value if it has the field's type (an int is accepted for a float), else a TypeError."""
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise TypeError(f"training config key {name!r} must be of type {hint.__name__}, got {value!r} ({type(value).__name__})")


def flat_items(config: TrainConfig) -> dict:
    """Every key of the config by its full name (`optim.learning_rate`, `run_dir`, `model`): for
    comparing two configs key by key."""
    items = {}
    for name, value in config.to_dict().items():
        if name in TABLES:
            items.update({f"{name}.{inner}": v for inner, v in value.items()})
        else:
            items[name] = value
    return items


def config_keys_help() -> str:
    """Every key with its default and documentation, table by table."""

    def describe(cls) -> list[str]:
        lines = []
        for f in dataclasses.fields(cls):
            if f.name in TABLES:
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            lines.append(f"{f.name} = {json.dumps(default)}\n    {f.metadata['doc']}")
        return lines

    lines = describe(TrainConfig)
    for table, cls in TABLES.items():
        lines += ["", f"[{table}]  {cls.__doc__.split(': ', 1)[1]}"] + describe(cls)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- files
def read_config_file(path: str | Path) -> dict:
    """The keys of a .toml (or .yaml / .yml) run config file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{path} is YAML but PyYAML is not installed: pip install pyyaml, or use TOML") from None
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    else:
        with open(path, "rb") as f:
            try:
                values = tomllib.load(f)
            except tomllib.TOMLDecodeError as error:
                raise ValueError(f"{path} is not valid TOML: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a table of keys, got {type(values).__name__}")
    return values


def merged(values: dict, overrides: dict) -> dict:
    """`values` with `overrides` laid over it, table by table (both nested, see nest): a key of a
    table replaces that key only."""
    out = dict(values)
    for name, value in overrides.items():
        out[name] = {**out[name], **value} if isinstance(value, dict) and isinstance(out.get(name), dict) else value
    return out


def apply_override(values: dict, assignment: str) -> dict:
    """values with one `key=value` applied (`model.d_model=256` sets a key of the [model] table).

    The value is read as TOML (numbers, true/false, "strings", [lists]); anything that is not
    valid TOML is taken as a plain string, so `corpus=data/my.txt` needs no quotes.
    """
    name, sep, raw = assignment.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--set expects KEY=VALUE, got {assignment!r}")
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw
    *tables, last = name.strip().split(".")
    # a key may be written flat (`compile`) or in its table (`hardware.compile`): the override
    # replaces the key where `values` already holds it, so that a file's [hardware] compile and
    # `--set compile=true` (`gptoss train --compile`) are one key, not the same key given twice
    table = TABLE_OF.get(last)
    if not tables and isinstance(values.get(table), dict) and last in values[table]:
        tables = [table]
    elif tables == [table] and last in values:
        tables = []
    values = json.loads(json.dumps(values))  # a deep copy
    target = values
    for table in tables:
        target = target.setdefault(table, {})
        if not isinstance(target, dict):
            raise ValueError(f"--set {name}: {table!r} is not a table")
    target[last] = value
    return values
