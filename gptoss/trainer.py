"""The trainer: a run described by a TrainConfig, trained to max_steps with everything a real run needs.

    data    gptoss.data.prepare tokenizes the corpus once (cached); each update draws `batch_size`
            random windows from train.bin with a seeded generator (its state is the data position),
            shaped by the curriculum and augmentation options of gptoss.sampler
    model   a GPTConfig preset plus overrides; optionally torch.compile'd; DDP or FSDP2 under torchrun
    update  gradient accumulation over micro-batches, bf16/fp16 autocast, global-norm clipping
            (the norm is logged), AdamW with decay on weight matrices only, an LR schedule
    guard   a non-finite loss or gradient norm stops the run before the update is applied, naming
            the step; nothing is saved after it, so the last good checkpoint stays intact
    eval    every eval_every updates on a fixed validation subset: loss, perplexity, bits per byte
    save    checkpoints (weights, tokenizer, optimizer, schedule position, data position, every RNG
            state, the run config) written atomically, the last keep_last kept, plus best/; resuming
            from one continues the run bit for bit on CPU; SIGINT/SIGTERM save one and stop cleanly
    logs    a progress bar, metrics.csv (+ TensorBoard when installed), loss_curve.png at the end

A run directory holds:  run_config.json, metrics.csv, loss_curve.png, best/, checkpoints/step-NNNNNNN/
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import difflib
import json
import math
import os
import random
import shutil
import signal
import tempfile
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from tqdm.auto import tqdm

from gptoss.checkpoint import CONFIG_FILE as CHECKPOINT_CONFIG_FILE
from gptoss.checkpoint import load_model, save_model
from gptoss.config import PRESETS, GPTConfig
from gptoss.data import TokenDataset, default_prepared_dir, prepare, random_batch
from gptoss.devices import DEVICE_HELP, check_device_name, resolve_device
from gptoss.files import write_file_atomically, write_text_atomically
from gptoss.model import GPT
from gptoss.sampler import WindowSampler
from gptoss.schedule import LRSchedule
from gptoss.tokenizers import KINDS as TOKENIZER_KINDS

PRECISIONS = ("fp32", "bf16", "fp16")
PARALLEL_MODES = ("ddp", "fsdp")
TRAINER_STATE_FILE = "trainer_state.pt"
RUN_CONFIG_FILE = "run_config.json"
METRICS_FILE = "metrics.csv"
CURVE_FILE = "loss_curve.png"
CHECKPOINTS_DIR, BEST_DIR = "checkpoints", "best"
# gather whole (unsharded) tensors, on the CPU; under torchrun only rank 0 receives them
FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)


def key(default, doc: str):
    """A TrainConfig field with its documentation (shown by `gptoss train --keys`)."""
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass
class TrainConfig:
    """Everything that defines a training run; each field is a key of the run's TOML file."""

    # --- run
    run_dir: str = key("runs/run", "folder of the run: checkpoints, metrics.csv, loss_curve.png, run_config.json")
    seed: int = key(1337, "seeds model init, data order and dropout: same seed and config, same run")
    # --- data
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
    # --- model
    model: dict = key(
        {"preset": "tiny"},
        "[model] table: preset = a GPTConfig preset name (default tiny); any other key overrides that "
        "GPTConfig field (vocab_size defaults to the tokenizer's)",
    )
    # --- batch and length of the run
    seq_len: int = key(256, "tokens per training window (at most the model's max_seq_len)")
    batch_size: int = key(64, "windows per optimizer update, over all processes and accumulation steps")
    micro_batch_size: int = key(
        0,
        "windows per forward pass in each process; batch_size must be a multiple of micro_batch_size x "
        "processes, the multiple being the gradient accumulation steps; 0: batch_size / processes",
    )
    max_steps: int = key(2000, "optimizer updates in the whole run")
    # --- optimizer and schedule
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
    # --- curriculum and data augmentation (gptoss.sampler; bench/bench_curriculum.py measured them)
    random_offsets: bool = key(True, "training windows start at any token; false: only at multiples of seq_len (a fixed cut of the text)")
    bpe_dropout: float = key(0.0, "bpe tokenizer only: re-encode training windows skipping each BPE merge with this probability; 0: off")
    seq_len_warmup_steps: int = key(0, "grow training windows linearly from seq_len_start to seq_len over these updates; 0: off")
    seq_len_start: int = key(32, "window length at the first update of the seq_len warmup")
    seq_len_warmup_keep_tokens: bool = key(
        True, "during the seq_len warmup, draw more, shorter windows: about batch_size x seq_len tokens per update")
    difficulty_warmup_steps: int = key(
        0, "draw windows first from the easiest chunks of the text (unigram surprisal), growing to all of it over these updates; 0: off")
    difficulty_start_fraction: float = key(0.25, "fraction of the text (the easiest chunks) drawn from at the first update")
    # --- hardware
    device: str = key("auto", DEVICE_HELP)
    precision: str = key("fp32", "fp32; bf16 (autocast, CPU or CUDA); fp16 (autocast and a grad scaler, CUDA)")
    compile: bool = key(False, "run the model through torch.compile")
    parallel: str = key("ddp", "under torchrun: ddp (a replica per process) or fsdp (FSDP2 shards the model)")
    # --- evaluation, checkpoints, logs
    eval_every: int = key(250, "evaluate every eval_every updates and at the end; 0: only at the end")
    eval_sequences: int = key(128, "windows in the fixed validation subset (a multiple of the process count)")
    checkpoint_every: int = key(500, "checkpoint every checkpoint_every updates and at the end; 0: only at the end")
    keep_last: int = key(2, "checkpoints kept in checkpoints/ (older ones are deleted); best/ is kept apart")
    log_every: int = key(10, "write a metrics.csv row (mean train loss since the last row) every log_every updates")
    progress: bool = key(True, "show a progress bar")
    tensorboard: bool = key(True, "also log to run_dir/tensorboard when the tensorboard package is installed")

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ building and checking
    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from plain values (a parsed TOML file): unknown keys and wrong types are errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        for name in values:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(known))}"
                raise ValueError(f"unknown training config key {name!r}{hint}")
        hints = typing.get_type_hints(cls)
        checked = {name: _checked_type(name, value, hints[name]) for name, value in values.items()}
        return cls(**checked)

    def to_dict(self) -> dict:
        """Plain-dict form (JSON/TOML-serialisable)."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> TrainConfig:
        """A copy with some keys changed (checked like from_dict)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def validate(self) -> None:
        """Raise ValueError naming the first bad value and what would be accepted."""
        positive = ("seq_len", "batch_size", "max_steps", "eval_sequences", "keep_last", "log_every", "bpe_vocab_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        non_negative = ("micro_batch_size", "warmup_steps", "eval_every", "checkpoint_every", "max_chars",
                        "weight_decay", "grad_clip", "seq_len_warmup_steps", "difficulty_warmup_steps")  # fmt: skip
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 < self.learning_rate < math.inf:
            raise ValueError(f"learning_rate must be > 0 and finite, got {self.learning_rate!r}")
        # the schedule checks its own values (min_lr range, warmup <= max_steps, kinds)
        self.lr_schedule()
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1): training evaluates on held-out text, got {self.val_fraction!r}")
        if not 0 <= self.bpe_dropout < 1:
            raise ValueError(f"bpe_dropout must be in [0, 1), got {self.bpe_dropout!r}")
        if self.bpe_dropout and self.tokenizer != "bpe":
            raise ValueError(f"bpe_dropout needs tokenizer = \"bpe\" (BPE merges to drop), got tokenizer = {self.tokenizer!r}")
        if self.seq_len_warmup_steps and not 1 <= self.seq_len_start <= self.seq_len:
            raise ValueError(f"seq_len_start must be in [1, seq_len = {self.seq_len}], got {self.seq_len_start!r}")
        if not 0 < self.difficulty_start_fraction <= 1:
            raise ValueError(f"difficulty_start_fraction must be in (0, 1], got {self.difficulty_start_fraction!r}")
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size}): "
                "the multiple is the number of gradient accumulation steps"
            )
        for name, allowed in (("precision", PRECISIONS), ("parallel", PARALLEL_MODES), ("tokenizer", TOKENIZER_KINDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        check_device_name(self.device)
        self.model_config()  # a bad preset or model override is reported now, not after data preparation

    # ------------------------------------------------------------------ derived objects
    def lr_schedule(self) -> LRSchedule:
        """The learning-rate schedule this config describes."""
        return LRSchedule(self.schedule, self.learning_rate, self.min_lr, self.warmup_steps, self.max_steps,
                          self.decay_fraction)  # fmt: skip

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
        if self.data_dir:
            return Path(self.data_dir)
        return default_prepared_dir(self.corpus, self.tokenizer, self.bpe_vocab_size, self.max_chars or None)


def _checked_type(name: str, value, hint):
    """value if it has the field's type (an int is accepted for a float), else a TypeError."""
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise TypeError(f"training config key {name!r} must be of type {hint.__name__}, got {value!r} ({type(value).__name__})")


def config_keys_help() -> str:
    """Every TrainConfig key with its default and documentation, one per line."""
    lines = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        lines.append(f"{f.name} = {json.dumps(default)}\n    {f.metadata['doc']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- optimizer
def adamw(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    *,
    decay_embeddings: bool = True,
    betas: tuple[float, float] = (0.9, 0.95),
    **kwargs,
) -> torch.optim.AdamW:
    """AdamW that decays only weight matrices: never biases, norm gains or sinks, and embeddings
    (with a tied unembedding) only when decay_embeddings. Decay pulls weights towards zero; a
    bias or a norm gain has no scale to regularise."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # a tied parameter appears once
        if not p.requires_grad:
            continue
        is_matrix = p.dim() >= 2 and not name.endswith("bias")  # MoE expert biases are (E, n)
        (decay if is_matrix and (decay_embeddings or id(p) not in embeddings) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **kwargs)


# ---------------------------------------------------------------------------------------- processes
@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun) and the collectives
    the trainer needs; each is a no-op with one process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # whether we created the process group (and must destroy it)

    @classmethod
    def from_environment(cls, device: torch.device) -> Distributed:
        """Join the torchrun job described by the environment (gloo on CPU, NCCL on CUDA)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs and checkpoints."""
        return self.rank == 0

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average of `tensor` over processes (in place)."""
        if self.world_size > 1:
            dist.all_reduce(tensor)
            tensor /= self.world_size
        return tensor

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of `tensor` over processes (in place)."""
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether `flag` is true in any process (so that all processes stop at the same step)."""
        if self.world_size == 1:
            return flag
        return bool(self.sum(torch.tensor(float(flag), device=device)) > 0)

    def gather(self, obj) -> list:
        """`obj` of every process, in rank order."""
        if self.world_size == 1:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        """Wait for every process."""
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if we created it, once every process is done with it (a
        process tearing gloo down while a peer still works can abort the peer)."""
        if self.owns_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
            self.owns_group = False


# ---------------------------------------------------------------------------------------- RNG states
def rng_state() -> dict:
    """Every random number generator a training step can touch: python, numpy, torch CPU and CUDA."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, keys.tolist(), position, has_gauss, gauss),  # plain values: torch.load(weights_only)
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() returned."""
    random.setstate(state["python"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------- files
class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm stopped being finite."""


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    found = Path(run_dir, CHECKPOINTS_DIR).glob("step-*")
    return sorted(p for p in found if (p / TRAINER_STATE_FILE).is_file())


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or the latest checkpoint of a run directory."""
    path = Path(path)
    if (path / TRAINER_STATE_FILE).is_file():
        return path
    found = checkpoint_dirs(path)
    if not found:
        raise FileNotFoundError(f"nothing to resume: {path} is neither a checkpoint nor a run folder with checkpoints")
    return found[-1]


def read_trainer_state(checkpoint: Path) -> dict:
    """The trainer state saved in a checkpoint (tensors and plain values only: weights_only)."""
    path = checkpoint / TRAINER_STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, corrupt, or not a torch file: say which file, not a pickle trace
        raise ValueError(f"{path} cannot be read ({type(error).__name__}: {error}); resume from another checkpoint") from error
    missing = {"step", "tokens_seen", "optimizer", "data_generator", "rng"} - set(state if isinstance(state, dict) else ())
    if missing:
        raise ValueError(f"{path} is not a gptoss trainer state (missing {sorted(missing)}); resume from a checkpoint gptoss train wrote")
    return state


class MetricsLog:
    """metrics.csv (one row per log interval, checkpoint and evaluation) and TensorBoard, written by rank 0."""

    COLUMNS = ("step", "tokens", "lr", "train_loss", "grad_norm", "aux_loss", "val_loss", "val_ppl", "val_bpb",
               "seq_len", "data_pool", "tokens_per_s", "elapsed_s")  # fmt: skip

    def __init__(self, run_dir: Path, resumed_step: int | None, tensorboard: bool):
        self.path = run_dir / METRICS_FILE
        if resumed_step is None or not self.path.is_file():
            write_text_atomically(self.path, ",".join(self.COLUMNS) + "\n")
        else:  # drop what the interrupted run logged after its checkpoint: the resumed run redoes it
            kept = [row for row in self.rows() if int(row["step"]) <= resumed_step]
            write_text_atomically(self.path, self._format(kept))
        self.file = open(self.path, "a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.file, self.COLUMNS)
        self.tensorboard = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # the tensorboard package is optional
                pass
            else:
                self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, row: dict) -> None:
        """Append a row (missing columns stay empty); floats keep every digit."""
        self.writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
        self.file.flush()
        if self.tensorboard is not None:
            for name, value in row.items():
                if name != "step" and isinstance(value, float):
                    self.tensorboard.add_scalar(name, value, row["step"])

    def rows(self) -> list[dict]:
        """Every row written so far."""
        with open(self.path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def _format(self, rows: list[dict]) -> str:
        # .get: a metrics.csv written before a column was added lacks it
        lines = [",".join(self.COLUMNS)] + [",".join(row.get(c) or "" for c in self.COLUMNS) for row in rows]
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        """Close the files."""
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def plot_loss_curve(rows: list[dict], path: Path, title: str) -> None:
    """Train and validation loss against step, as a PNG written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def series(column):
        points = [(int(r["step"]), float(r[column])) for r in rows if r.get(column)]
        return [s for s, _ in points], [v for _, v in points]

    figure = Figure(figsize=(6, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(*series("train_loss"), label="train", linewidth=1)
    axes.plot(*series("val_loss"), "o-", label="validation", markersize=3)
    axes.set(xlabel="step", ylabel="loss (nats/token)", title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    write_file_atomically(path, figure.savefig)


class StopSignals:
    """Within `with`, SIGINT and SIGTERM set `received` instead of killing the process, so the
    trainer can save a checkpoint and exit cleanly; a second signal stops at once."""

    def __init__(self):
        self.received: str | None = None
        self.previous = {}

    def handle(self, number, frame) -> None:
        """The signal handler: remember the first signal, give up on the second."""
        if self.received is not None:  # the user insists
            raise KeyboardInterrupt
        self.received = signal.Signals(number).name

    def __enter__(self) -> StopSignals:
        with contextlib.suppress(ValueError):  # only the main thread may install handlers
            for number in (signal.SIGINT, signal.SIGTERM):
                self.previous[number] = signal.signal(number, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)


# ---------------------------------------------------------------------------------------- trainer
class Trainer:
    """Sets up a run from a TrainConfig (data, model, optimizer, and a checkpoint when resuming);
    `fit()` trains it to max_steps and returns a summary dict."""

    def __init__(self, config: TrainConfig, resume: str | Path | None = None):
        self.config = config
        self.device = resolve_device(config.device)
        if config.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision = \"fp16\" needs CUDA (it relies on a grad scaler); on a CPU use \"bf16\"")
        self.dist = Distributed.from_environment(self.device)
        self.run_dir = Path(config.run_dir)
        self.checkpoint = find_checkpoint(resume) if resume is not None else None
        # a run folder holds one run: a fresh run, or one resumed from another folder, goes elsewhere
        existing = checkpoint_dirs(self.run_dir)
        resuming_here = self.checkpoint is not None and self.checkpoint.resolve().parent == (self.run_dir / CHECKPOINTS_DIR).resolve()
        if existing and not resuming_here:
            raise ValueError(
                f"{self.run_dir} already holds checkpoints of a run (latest: {existing[-1].name}): "
                f"continue it with `gptoss train --resume {self.run_dir}`, or choose another run_dir"
            )
        self.state = read_trainer_state(self.checkpoint) if self.checkpoint else None

        # batch geometry: batch_size = micro_batch_size x accumulation x processes
        world = self.dist.world_size
        if config.batch_size < world:
            raise ValueError(f"batch_size ({config.batch_size}) must be at least the process count ({world}): one sequence per process")
        self.micro_batch_size = config.micro_batch_size or config.batch_size // world
        if config.batch_size % (self.micro_batch_size * world):
            raise ValueError(
                f"batch_size ({config.batch_size}) must be a multiple of micro_batch_size "
                f"({self.micro_batch_size}) x processes ({world})"
            )
        self.accumulation = config.batch_size // (self.micro_batch_size * world)
        if config.eval_sequences % world:
            raise ValueError(f"eval_sequences ({config.eval_sequences}) must be a multiple of the process count ({world})")

        seed_everything(config.seed)  # identical initial weights in every process
        self.data = self.load_data()
        self.bytes_in_val_subset = self.build_val_subset()
        self.model_config = config.model_config(self.data.tokenizer.vocab_size)
        self.raw_model = self.build_model()
        self.fsdp = world > 1 and config.parallel == "fsdp"
        self.model = self.wrap_model(self.raw_model)
        self.optimizer = adamw(
            self.raw_model, config.learning_rate, config.weight_decay, decay_embeddings=config.decay_embeddings,
            betas=(config.beta1, config.beta2), fused=True,
        )  # fmt: skip
        self.schedule = config.lr_schedule()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)

        # the data position: a generator shared by all processes (each keeps its slice of every batch)
        self.data_generator = torch.Generator().manual_seed(config.seed)
        self.sampler = WindowSampler(self.data.train, self.data.tokenizer, config, self.data_generator,
                                     granularity=world * self.accumulation)  # fmt: skip
        self.step, self.tokens_seen, self.train_time = 0, 0, 0.0
        self.best_val_loss = math.inf
        if self.state is not None:
            self.restore(self.state)
        else:
            torch.manual_seed(config.seed + self.dist.rank)  # each process its own dropout masks

        self.metrics = None
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomically(self.run_dir / RUN_CONFIG_FILE, json.dumps(config.to_dict(), indent=2) + "\n")
            self.set_aside_later_checkpoints()
            resumed_step = self.step if self.state is not None else None
            self.metrics = MetricsLog(self.run_dir, resumed_step, config.tensorboard)

    # ------------------------------------------------------------------ setup
    def set_aside_later_checkpoints(self) -> None:
        """Resuming from an earlier checkpoint (a rewind, e.g. after a divergence): move the run's
        later checkpoints, and best/ if it was saved later, to checkpoints/abandoned/, so the run goes
        on from one history and neither rotation, a later --resume nor best/ mixes in the other one.
        Nothing is deleted."""
        later = [d for d in checkpoint_dirs(self.run_dir) if d.name > f"step-{self.step:07d}"]
        best = self.run_dir / BEST_DIR
        if best.is_dir() and json.loads((best / CHECKPOINT_CONFIG_FILE).read_text())["metadata"].get("step", 0) > self.step:
            later.append(best)
        if not later:
            return
        abandoned = self.run_dir / CHECKPOINTS_DIR / "abandoned"
        abandoned.mkdir(parents=True, exist_ok=True)
        aside = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=abandoned))
        for directory in later:
            os.replace(directory, aside / directory.name)
        self.log(f"resuming from step {self.step}: moved what came after it ({', '.join(d.name for d in later)}) to {aside}")

    def log(self, message: str) -> None:
        """Print from rank 0 only, without breaking the progress bar."""
        if self.dist.is_main:
            tqdm.write(message)

    def load_data(self) -> TokenDataset:
        """Tokenize the corpus (rank 0, cached by content) and open the token files."""
        c = self.config
        path = c.data_path()
        if self.dist.is_main:
            prepare(
                c.corpus, c.tokenizer, path, c.val_fraction, vocab_size=c.bpe_vocab_size,
                tokenizer_files_dir=c.tokenizer_files or None, max_chars=c.max_chars or None, progress=c.progress,
            )  # fmt: skip
        self.dist.barrier()
        data = TokenDataset.load(path, c.tokenizer_files or None)
        for part in ("train", "val"):
            if len(getattr(data, part)) < c.seq_len + 1:
                raise ValueError(
                    f"the {part} split of {c.corpus!r} has {len(getattr(data, part)):,} tokens, fewer than "
                    f"seq_len + 1 = {c.seq_len + 1}: use a shorter seq_len, more text or another val_fraction"
                )
        return data

    def build_val_subset(self) -> int | None:
        """Fix the validation windows (seeded, same in every run); returns their bytes of text, for
        bits per byte, or None for a character-level tokenizer (bits per character is loss / ln 2)."""
        generator = torch.Generator().manual_seed(self.config.seed + 1)
        self.val_x, self.val_y = random_batch(self.data.val, self.config.eval_sequences, self.config.seq_len, generator)
        if self.data.tokenizer.kind == "char":
            return None
        # each window's targets as text; a character split at a window edge counts as U+FFFD
        return sum(len(self.data.tokenizer.decode(row).encode("utf-8")) for row in self.val_y)

    def build_model(self) -> GPT:
        """The GPT of the [model] table, or the checkpoint's when resuming."""
        if self.checkpoint is None:
            return GPT(self.model_config).to(self.device).train()
        model, tokenizer = load_model(self.checkpoint, device="cpu")
        if model.config != self.model_config:
            raise ValueError(
                f"the checkpoint {self.checkpoint} holds a different model than the config describes: "
                f"{model.config} vs {self.model_config}"
            )
        if tokenizer is not None and tokenizer.fingerprint != self.data.tokenizer.fingerprint:
            raise ValueError(
                f"the checkpoint {self.checkpoint} was trained with another tokenizer than the one of "
                f"{self.config.data_path()} (the corpus was prepared again since?): its ids would mean other "
                "text; resume with the data it was trained on, or start a new run"
            )
        return model.to(self.device).train()

    def wrap_model(self, model: GPT) -> nn.Module:
        """FSDP2-shard (in place) or DDP-wrap the model under torchrun, and compile it if asked;
        returns the module to call for forward passes."""
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            for block in model.transformer.h:  # one all-gather per block, freed after use
                fully_shard(block)
            fully_shard(model)
        wrapped = torch.compile(model) if self.config.compile else model
        if self.dist.world_size > 1 and not self.fsdp:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # an expert that no token of this process was routed to has no gradient here
            unused = self.model_config.mlp == "moe"
            wrapped = nn.parallel.DistributedDataParallel(wrapped, device_ids=device_ids, find_unused_parameters=unused)
        return wrapped

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint's trainer state (the weights are already loaded)."""
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.data_generator.set_state(state["data_generator"])
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.train_time, self.best_val_loss = state["train_time"], state["best_val_loss"]
        if len(state["rng"]) == self.dist.world_size:
            set_rng_state(state["rng"][self.dist.rank])
        else:  # another process count: the run continues, but not bit for bit
            self.log(f"note: the checkpoint was written by {len(state['rng'])} processes, this run has "
                     f"{self.dist.world_size}: dropout randomness is reseeded")  # fmt: skip
            torch.manual_seed(self.config.seed + self.step * 1000 + self.dist.rank)

    # ------------------------------------------------------------------ one update
    def autocast(self):
        """bf16/fp16 autocast context, or nothing for fp32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def gradient_sync(self, sync: bool):
        """Context for a backward pass that all-reduces gradients across processes only when
        `sync` (the last micro-batch of an accumulation): the others just accumulate locally."""
        if self.fsdp:
            self.raw_model.set_requires_gradient_sync(sync)
        elif isinstance(self.model, nn.parallel.DistributedDataParallel) and not sync:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's share of the next global batch: (windows / processes, length) each; at the
        full length without curriculum, (batch_size / processes, seq_len)."""
        share = self.sampler.windows_per_update(self.step) // self.dist.world_size
        x, y = self.sampler.batch(self.step, slice(self.dist.rank * share, (self.dist.rank + 1) * share))
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def train_step(self) -> dict:
        """One optimizer update; returns its lr, mean cross-entropy, gradient norm, window length,
        tokens (over all processes) and, for MoE models, the aux loss (trained on, logged apart).

        Raises TrainingDiverged before touching the weights when the loss or the gradient norm
        is not finite.
        """
        lr = self.schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = self.next_batch()
        losses = torch.zeros(2, device=self.device)  # summed (loss, aux loss) over micro-batches
        micro = len(x) // self.accumulation  # micro_batch_size, or more (shorter) windows in a length warmup
        for i, (micro_x, micro_y) in enumerate(zip(x.split(micro), y.split(micro))):
            with self.gradient_sync(i == self.accumulation - 1), self.autocast():
                _, loss = self.model(micro_x, micro_y)
            # the mean over micro-batches (and, by DDP/FSDP's averaging, over processes) is the
            # gradient of the mean loss over the whole batch
            self.scaler.scale(loss / self.accumulation).backward()
            aux = self.raw_model.aux_loss()
            if aux is not None:  # logged apart: train_loss is the cross-entropy, like val_loss
                losses[1] += aux.detach().float()
                loss = loss - self.model_config.router_aux_loss_coef * aux
            losses[0] += loss.detach().float()
        self.scaler.unscale_(self.optimizer)
        parameters = [p for p in self.raw_model.parameters() if p.grad is not None]
        grad_norm = nn.utils.get_total_norm([p.grad for p in parameters])
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
        if self.config.grad_clip > 0:
            nn.utils.clip_grads_with_norm_(parameters, self.config.grad_clip, grad_norm)
        loss, aux = (self.dist.mean(losses) / self.accumulation).tolist()
        grad_norm = grad_norm.item()
        # fp16: an overflowing gradient is the grad scaler's business (it skips the update)
        grad_ok = math.isfinite(grad_norm) or self.config.precision == "fp16"
        if not (math.isfinite(loss) and grad_ok):
            raise TrainingDiverged(
                f"step {self.step + 1}: the {'loss' if not math.isfinite(loss) else 'gradient norm'} is "
                f"{loss if not math.isfinite(loss) else grad_norm}; the update was not applied and nothing was "
                f"saved. Last good checkpoint: {self.latest_checkpoint() or 'none yet'}. Try a lower "
                "learning_rate, a longer warmup, grad_clip, or fp32"
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        result = {"lr": lr, "train_loss": loss, "grad_norm": grad_norm, "seq_len": x.shape[1],
                  "data_pool": self.sampler.pool_size(self.step) / self.sampler.chunks,
                  "tokens": x.numel() * self.dist.world_size}  # fmt: skip
        if self.model_config.mlp == "moe":
            result["aux_loss"] = aux
        return result

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Loss, perplexity (and bits per byte) on the fixed validation subset, over all processes."""
        self.model.eval()
        share = len(self.val_x) // self.dist.world_size
        rows = slice(self.dist.rank * share, (self.dist.rank + 1) * share)
        total = torch.zeros((), dtype=torch.float64, device=self.device)  # sum of token losses
        for x, y in zip(self.val_x[rows].split(self.micro_batch_size), self.val_y[rows].split(self.micro_batch_size)):
            with self.autocast():
                _, loss = self.model(x.to(self.device), y.to(self.device))
            total += loss.double() * y.numel()
        self.model.train()
        tokens = self.val_y.numel()
        val_loss = self.dist.sum(total).item() / tokens
        result = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700))}
        if self.bytes_in_val_subset:
            result["val_bpb"] = val_loss * tokens / (math.log(2) * self.bytes_in_val_subset)
        return result

    # ------------------------------------------------------------------ checkpoints
    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint of this run, if any."""
        found = checkpoint_dirs(self.run_dir)
        return found[-1] if found else None

    def gather_model(self) -> GPT:
        """A plain GPT holding the full weights on rank 0, on the CPU (gathered from the shards under
        FSDP; a CPU run shares its tensors, a CUDA run copies them to the CPU).

        A collective: every process must call it."""
        state = get_model_state_dict(self.model, options=FULL_STATE)
        model = GPT(self.model_config, device="meta")  # allocates nothing; the tensors are assigned
        if self.dist.is_main:
            model.load_state_dict(state, assign=True)
            if self.model_config.tie_embeddings:
                model.lm_head.weight = model.transformer.wte.weight
        return model

    def save_checkpoint(self, val_loss: float | None = None) -> Path:
        """Write checkpoints/step-NNNNNNN atomically and delete the ones beyond keep_last (a collective)."""
        model = self.gather_model()
        optimizer = get_optimizer_state_dict(self.model, self.optimizer, options=FULL_STATE)
        rng = self.dist.gather(rng_state())
        directory = self.run_dir / CHECKPOINTS_DIR / f"step-{self.step:07d}"
        if self.dist.is_main:
            state = {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "train_time": self.train_time,
                "best_val_loss": self.best_val_loss,
                "optimizer": optimizer,
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "data_generator": self.data_generator.get_state(),
                "rng": rng,
            }

            def write_trainer_files(tmp: Path) -> None:
                torch.save(state, tmp / TRAINER_STATE_FILE)
                (tmp / RUN_CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")

            save_model(model, directory, self.data.tokenizer, self.checkpoint_metadata(val_loss), write_trainer_files)
            older = [d for d in checkpoint_dirs(self.run_dir) if d.name < directory.name]
            for old in older[: max(len(older) - (self.config.keep_last - 1), 0)]:  # keep_last with this one
                shutil.rmtree(old, ignore_errors=True)
        self.dist.barrier()
        return directory

    def save_best(self, val_loss: float) -> None:
        """Write best/ (weights and tokenizer, no trainer state) atomically (a collective)."""
        model = self.gather_model()
        if self.dist.is_main:
            save_model(model, self.run_dir / BEST_DIR, self.data.tokenizer, self.checkpoint_metadata(val_loss))
        self.dist.barrier()

    def checkpoint_metadata(self, val_loss: float | None) -> dict:
        """What a checkpoint's config.json records about the run."""
        return {"step": self.step, "tokens_seen": self.tokens_seen, "val_loss": val_loss, "run_dir": str(self.run_dir)}

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        """Train from the current step to max_steps (or a stop signal); returns the run's summary."""
        c = self.config
        start_step, started = self.step, time.perf_counter()
        self.log(self.describe())
        bar = tqdm(total=c.max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (c.progress and self.dist.is_main))  # fmt: skip
        interval_losses, interval_tokens, interval_time, last_eval, stopped_by = [], 0, 0.0, None, None
        try:
            with StopSignals() as signals:
                while self.step < c.max_steps:
                    tic = time.perf_counter()
                    result = self.train_step()
                    elapsed = time.perf_counter() - tic
                    tokens = result.pop("tokens")
                    self.step += 1
                    self.tokens_seen += tokens
                    self.train_time += elapsed
                    interval_losses.append(result["train_loss"])
                    interval_tokens += tokens
                    interval_time += elapsed
                    tokens_per_s = tokens / elapsed
                    bar.set_postfix_str(f"loss {result['train_loss']:.4f} lr {result['lr']:.2e} {tokens_per_s:,.0f} tok/s", refresh=False)
                    bar.update()

                    final = self.step == c.max_steps
                    stopped_by = None  # every process stops at the same step, even if only one got the signal
                    if self.dist.any(signals.received is not None, self.device):
                        stopped_by = signals.received or "a stop signal (in another process)"
                    checkpoint = (c.checkpoint_every and self.step % c.checkpoint_every == 0) or final or stopped_by
                    row = {}
                    # a row at every checkpoint too, so a run resumed from it logs the same intervals
                    if self.step % c.log_every == 0 or checkpoint:
                        row = {**result, "train_loss": sum(interval_losses) / len(interval_losses),
                               "tokens_per_s": interval_tokens / interval_time}  # fmt: skip
                        interval_losses, interval_tokens, interval_time = [], 0, 0.0
                    val = {}
                    if (c.eval_every and self.step % c.eval_every == 0) or final or stopped_by:
                        val = last_eval = self.evaluate()
                        self.log(f"step {self.step}: val loss {val['val_loss']:.4f}, ppl {val['val_ppl']:.2f}"
                                 + (f", {val['val_bpb']:.4f} bits/byte" if "val_bpb" in val else ""))  # fmt: skip
                    if row or val:
                        self.write_metrics({**row, **val})
                    if val and val["val_loss"] < self.best_val_loss:
                        self.best_val_loss = val["val_loss"]
                        self.save_best(val["val_loss"])
                    if checkpoint:
                        self.save_checkpoint(val.get("val_loss"))
                    if stopped_by:
                        self.log(f"{stopped_by}: saved {self.latest_checkpoint()} and stopped; continue with "
                                 f"`gptoss train --resume {self.run_dir}`")  # fmt: skip
                        break
        finally:
            bar.close()
            if self.metrics is not None:
                self.metrics.close()
        summary = self.summary(start_step, time.perf_counter() - started, last_eval, stopped_by)
        if self.dist.is_main and self.metrics is not None:
            plot_loss_curve(self.metrics.rows(), self.run_dir / CURVE_FILE, f"{self.run_dir.name}: {self.describe_model()}")
        self.dist.close()
        return summary

    def write_metrics(self, values: dict) -> None:
        """A metrics.csv row for the current step (rank 0)."""
        if self.metrics is not None:
            self.metrics.write({"step": self.step, "tokens": self.tokens_seen, **values, "elapsed_s": self.train_time})

    # ------------------------------------------------------------------ reporting
    def describe_model(self) -> str:
        params = sum(p.numel() for p in self.raw_model.parameters())  # FSDP: DTensors report the full size
        return f"{self.config.model.get('preset')} {params / 1e6:.2f}M parameters"

    def describe(self) -> str:
        """What is about to run, in a few lines."""
        c, m = self.config, self.data.meta
        processes = f"{self.dist.world_size} processes ({'FSDP2' if self.fsdp else 'DDP'})" if self.dist.world_size > 1 else "1 process"
        lines = [
            f"data: {c.corpus} ({m['tokenizer']['kind']} tokenizer, {m['tokenizer']['vocab_size']:,} ids): "
            f"{m['train_tokens']:,} train / {m['val_tokens']:,} val tokens",
            f"model: {self.describe_model()}, {c.precision}{', compiled' if c.compile else ''}, {self.device}, {processes}",
            f"batch: {c.batch_size} x {c.seq_len} tokens = {self.micro_batch_size} per pass x {self.accumulation} "
            f"accumulation x {self.dist.world_size} processes; {c.max_steps} updates, {c.schedule} lr {c.learning_rate:g}"
            + (" (more, shorter windows during the seq_len warmup)" if c.seq_len_warmup_steps and c.seq_len_warmup_keep_tokens else ""),
        ]
        options = {  # description: whether it is on
            f"seq_len {c.seq_len_start} -> {c.seq_len} over {c.seq_len_warmup_steps} updates": c.seq_len_warmup_steps,
            f"easiest {c.difficulty_start_fraction:.0%} of the text -> all over {c.difficulty_warmup_steps} updates":
                c.difficulty_warmup_steps,
            f"BPE-dropout {c.bpe_dropout:g}": c.bpe_dropout,
            "windows only at multiples of seq_len": not c.random_offsets,
        }  # fmt: skip
        if any(options.values()):
            lines.append("curriculum / augmentation: " + "; ".join(text for text, on in options.items() if on))
        if self.checkpoint is not None:
            lines.append(f"resuming from {self.checkpoint} at step {self.step}")
        return "\n".join(lines)

    def summary(self, start_step: int, wall_s: float, last_eval: dict | None, stopped_by: str | None) -> dict:
        """The run's outcome, as plain values (see gptoss.train_cli.format_summary)."""
        return {
            "run_dir": str(self.run_dir),
            "steps": self.step,
            "steps_this_session": self.step - start_step,
            "tokens_seen": self.tokens_seen,
            "train_time_s": self.train_time,
            "wall_time_s": wall_s,
            "tokens_per_s": self.tokens_seen / self.train_time if self.train_time else 0.0,
            "best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
            "last_eval": last_eval,
            "stopped_by": stopped_by,
            "model": self.describe_model(),
            "checkpoint": str(self.latest_checkpoint()) if self.dist.is_main else None,
        }
