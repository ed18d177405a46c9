"""The trainer: a run described by a TrainConfig, trained to max_steps with everything a real run needs.

It is composed of parts, each in its own module and each given its own table of the run config:

    data        gptoss.data prepares the corpus once (cached); `WindowSampler` (gptoss.train.windows,
                [curriculum]) draws each update's windows with a seeded generator, whose state is
                the data position
    processes   `Distributed` (gptoss.train.distributed, [hardware]): torchrun's processes, their
                collectives, and the model wrapped for them (DDP or FSDP2), compiled when asked
    update      gradient accumulation over micro-batches ([batch]), bf16/fp16 autocast, global-norm
                clipping (the norm is logged), AdamW (or Muon for the hidden matrices) with decay on matrices only and an LR
                schedule ([optim]; gptoss.train.optim, gptoss.train.schedule)
    guard       a non-finite loss or gradient norm stops the run before the update is applied,
                naming the step; nothing is saved after it, so the last good checkpoint stays intact
    eval        every eval_every updates on a fixed validation subset ([eval]): loss, perplexity,
                bits per byte
    checkpoints `RunCheckpoints` (gptoss.train.checkpointing, [checkpoint]): weights, tokenizer and
                the trainer state (optimizer, schedule position, data position, every RNG state,
                the run config) written atomically, the last keep_last kept, plus best/; resuming
                continues the run bit for bit on CPU
    signals     `StopSignals` (gptoss.train.signals): SIGINT/SIGTERM save a checkpoint and stop
    logs        `MetricsLog` (gptoss.train.metrics, [log]): a progress bar, metrics.csv
                (+ TensorBoard when installed), loss_curve.png at the end

A run directory holds:  run_config.json, metrics.csv, loss_curve.png, best/, checkpoints/step-NNNNNNN/
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from tqdm.auto import tqdm

from gptoss.checkpoints import load_model
from gptoss.checkpoints.lora import lora_layers, merged_state_dict, write_adapter_files
from gptoss.data.batches import random_batch
from gptoss.data.token_files import TokenDataset, prepare
from gptoss.model import GPT
from gptoss.train.checkpointing import (
    CHECKPOINTS_DIR,
    RUN_CONFIG_FILE,
    RunCheckpoints,
    checkpoint_dirs,
    find_checkpoint,
    read_trainer_state,
    rng_state,
    seed_everything,
    set_rng_state,
)
from gptoss.train.config import DataConfig, TrainConfig
from gptoss.train.distributed import Distributed, wrap_model
from gptoss.train.metrics import CURVE_FILE, MetricsLog, plot_loss_curve
from gptoss.train.optim import adamw, muon
from gptoss.train.sft import ConversationSampler, load_conversations, padded_windows, starting_model, trainable_share
from gptoss.train.signals import StopSignals
from gptoss.train.windows import WindowSampler
from gptoss.util.devices import resolve_device
from gptoss.util.files import write_text_atomically

# gather whole (unsharded) tensors, on the CPU; under torchrun only rank 0 receives them
FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm stopped being finite."""


def load_data(data: DataConfig, seq_len: int, distributed: Distributed, progress: bool) -> TokenDataset:
    """Tokenize the corpus of the [data] table (rank 0, cached by content) and open its token files;
    each split must hold at least one window of seq_len + 1 tokens."""
    path = data.path()
    if distributed.is_main:
        prepare(
            data.corpus, data.tokenizer, path, data.val_fraction, vocab_size=data.bpe_vocab_size,
            tokenizer_files_dir=data.tokenizer_files or None, max_chars=data.max_chars or None, progress=progress,
        )  # fmt: skip
    distributed.barrier()
    dataset = TokenDataset.load(path, data.tokenizer_files or None)
    for part in ("train", "val"):
        if len(getattr(dataset, part)) < seq_len + 1:
            raise ValueError(
                f"the {part} split of {data.corpus!r} has {len(getattr(dataset, part)):,} tokens, fewer than "
                f"seq_len + 1 = {seq_len + 1}: use a shorter seq_len, more text or another val_fraction"
            )
    return dataset


class Trainer:
    """Sets up a run from a TrainConfig (data, model, optimizer, and a checkpoint when resuming);
    `fit()` trains it to max_steps and returns a summary dict."""

    def __init__(self, config: TrainConfig, resume: str | Path | None = None):
        self.config = config
        hardware, batch = config.hardware, config.batch
        self.device = resolve_device(hardware.device)
        if hardware.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision = \"fp16\" needs CUDA (it relies on a grad scaler); on a CPU use \"bf16\"")
        self.dist = Distributed.from_environment(self.device)
        self.run_dir = Path(config.run_dir)
        self.checkpoints = RunCheckpoints(self.run_dir, config.checkpoint.keep_last, self.dist)
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
        if batch.batch_size < world:
            raise ValueError(f"batch_size ({batch.batch_size}) must be at least the process count ({world}): one sequence per process")
        self.micro_batch_size = batch.micro_batch_size or batch.batch_size // world
        if batch.batch_size % (self.micro_batch_size * world):
            raise ValueError(
                f"batch_size ({batch.batch_size}) must be a multiple of micro_batch_size "
                f"({self.micro_batch_size}) x processes ({world})"
            )
        self.accumulation = batch.batch_size // (self.micro_batch_size * world)
        if config.eval.eval_sequences % world:
            raise ValueError(f"eval_sequences ({config.eval.eval_sequences}) must be a multiple of the process count ({world})")

        seed_everything(config.seed)  # identical initial weights in every process
        self.sft = config.sft if config.sft.conversations else None  # fine-tuning on conversations
        if self.sft is not None:
            if self.sft.lora_rank and world > 1 and hardware.parallel == "fsdp":
                raise ValueError("LoRA fine-tuning runs under DDP, not FSDP: set parallel = \"ddp\"")
            self.data = load_conversations(self.sft, batch.seq_len, config.data.val_fraction)
        else:
            self.data = load_data(config.data, batch.seq_len, self.dist, config.log.progress)
        self.bytes_in_val_subset = self.build_val_subset()
        self.raw_model = self.build_model()
        self.model_config = self.raw_model.config
        self.fsdp = world > 1 and hardware.parallel == "fsdp"
        self.model = wrap_model(self.raw_model, self.dist, self.device, self.fsdp, hardware.compile,
                                unused_parameters=self.model_config.mlp == "moe")  # fmt: skip
        optim = config.optim
        betas = (optim.beta1, optim.beta2)
        if optim.optimizer == "muon":
            self.optimizer = muon(self.raw_model, optim.learning_rate, optim.weight_decay, decay_embeddings=optim.decay_embeddings,
                                  betas=betas, momentum=optim.muon_momentum)  # fmt: skip
        else:
            self.optimizer = adamw(self.raw_model, optim.learning_rate, optim.weight_decay, decay_embeddings=optim.decay_embeddings,
                                   betas=betas, fused=True)  # fmt: skip
        self.schedule = config.lr_schedule()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=hardware.precision == "fp16")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(hardware.precision)

        # the data position: a generator shared by all processes (each keeps its slice of every batch)
        self.data_generator = torch.Generator().manual_seed(config.seed)
        if self.sft is not None:
            self.sampler = ConversationSampler(self.data.train, batch.seq_len, batch.batch_size, self.data_generator)
        else:
            self.sampler = WindowSampler(self.data.train, self.data.tokenizer, config.curriculum, batch.seq_len, batch.batch_size,
                                         config.seed, self.data_generator, granularity=world * self.accumulation)  # fmt: skip
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
            aside = self.checkpoints.set_aside_later(self.step)
            if aside is not None:
                self.log(f"resuming from step {self.step}: moved what came after it ({', '.join(aside[1])}) to {aside[0]}")
            resumed_step = self.step if self.state is not None else None
            self.metrics = MetricsLog(self.run_dir, resumed_step, config.log.tensorboard)

    # ------------------------------------------------------------------ setup
    def log(self, message: str) -> None:
        """Print from rank 0 only, without breaking the progress bar."""
        if self.dist.is_main:
            tqdm.write(message)

    def build_val_subset(self) -> int | None:
        """Fix the validation windows (seeded, same in every run); returns their bytes of text, for
        bits per byte, or None for a character-level tokenizer (bits per character is loss / ln 2)."""
        if self.sft is not None:  # the held-out conversations (the first eval_sequences of them)
            self.val_x, self.val_y = padded_windows(self.data.val[: self.config.eval.eval_sequences], self.config.batch.seq_len)
            return None  # bits per byte of assistant tokens alone would mislead: loss and perplexity only
        generator = torch.Generator().manual_seed(self.config.seed + 1)
        self.val_x, self.val_y = random_batch(self.data.val, self.config.eval.eval_sequences, self.config.batch.seq_len, generator)
        if self.data.tokenizer.kind == "char":
            return None
        # each window's targets as text; a character split at a window edge counts as U+FFFD
        return sum(len(self.data.tokenizer.decode(row).encode("utf-8")) for row in self.val_y)

    def build_model(self) -> GPT:
        """The GPT of the [model] table, or the checkpoint's when resuming; fine-tuning: the
        checkpoint of [sft] init_from (under its LoRA adapters: resuming, those of the checkpoint)."""
        vocab_size = self.data.tokenizer.vocab_size
        if self.sft is not None and (self.checkpoint is None or self.sft.lora_rank):
            # a LoRA run resumes from the same frozen base, under the adapters it saved
            return starting_model(self.sft, vocab_size, self.checkpoint).to(self.device).train()
        expected = self.config.model_config(vocab_size) if self.sft is None else None
        if self.checkpoint is None:
            return GPT(expected).to(self.device).train()
        model, tokenizer = load_model(self.checkpoint, device="cpu")
        if expected is not None and model.config != expected:
            raise ValueError(
                f"the checkpoint {self.checkpoint} holds a different model than the config describes: "
                f"{model.config} vs {expected}"
            )
        if tokenizer is not None and tokenizer.fingerprint != self.data.tokenizer.fingerprint:
            raise ValueError(
                f"the checkpoint {self.checkpoint} was trained with another tokenizer than the one of "
                f"{self.config.data.path()} (the corpus was prepared again since?): its ids would mean other "
                "text; resume with the data it was trained on, or start a new run"
            )
        return model.to(self.device).train()

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
        losses = torch.zeros(2, device=self.device)  # summed (cross-entropy, aux loss) over micro-batches
        micro = len(x) // self.accumulation  # micro_batch_size, or more (shorter) windows in a length warmup
        for i, (micro_x, micro_y) in enumerate(zip(x.split(micro), y.split(micro))):
            with self.gradient_sync(i == self.accumulation - 1), self.autocast():
                _, cross_entropy, aux_loss = self.model(micro_x, micro_y, return_aux_loss=True)
                loss = self.raw_model.objective(cross_entropy, aux_loss)
            # the mean over micro-batches (and, by DDP/FSDP's averaging, over processes) is the
            # gradient of the mean loss over the whole batch
            self.scaler.scale(loss / self.accumulation).backward()
            losses[0] += cross_entropy.detach().float()  # logged: train_loss is the cross-entropy, like val_loss
            if aux_loss is not None:
                losses[1] += aux_loss.detach().float()
        self.scaler.unscale_(self.optimizer)
        parameters = [p for p in self.raw_model.parameters() if p.grad is not None]
        grad_norm = nn.utils.get_total_norm([p.grad for p in parameters])
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
        if self.config.optim.grad_clip > 0:
            nn.utils.clip_grads_with_norm_(parameters, self.config.optim.grad_clip, grad_norm)
        loss, aux = (self.dist.mean(losses) / self.accumulation).tolist()
        grad_norm = grad_norm.item()
        # fp16: an overflowing gradient is the grad scaler's business (it skips the update)
        grad_ok = math.isfinite(grad_norm) or self.config.hardware.precision == "fp16"
        if not (math.isfinite(loss) and grad_ok):
            raise TrainingDiverged(
                f"step {self.step + 1}: the {'loss' if not math.isfinite(loss) else 'gradient norm'} is "
                f"{loss if not math.isfinite(loss) else grad_norm}; the update was not applied and nothing was "
                f"saved. Last good checkpoint: {self.checkpoints.latest() or 'none yet'}. Try a lower "
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
            total += loss.double() * y.ne(-1).sum()  # the loss is the mean over targets not ignored (-1)
        self.model.train()
        tokens = self.val_y.ne(-1).sum().item()
        val_loss = self.dist.sum(total).item() / tokens
        result = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700))}
        if self.bytes_in_val_subset:
            result["val_bpb"] = val_loss * tokens / (math.log(2) * self.bytes_in_val_subset)
        return result

    # ------------------------------------------------------------------ checkpoints
    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint of this run, if any."""
        return self.checkpoints.latest()

    def gather_model(self) -> GPT:
        """A plain GPT holding the full weights on rank 0, on the CPU (gathered from the shards under
        FSDP; a CPU run shares its tensors, a CUDA run copies them to the CPU).

        A collective: every process must call it."""
        state = get_model_state_dict(self.model, options=FULL_STATE)
        layers = lora_layers(self.raw_model)
        if layers and self.dist.is_main:  # LoRA: the checkpoint's weights are the merged ones
            state = merged_state_dict(state, next(iter(layers.values())).scale)
        model = GPT(self.model_config, device="meta")  # allocates nothing; the tensors are assigned
        if self.dist.is_main:
            model.load_state_dict(state, assign=True)
            model.tie_weights()
        return model

    def trainer_state(self, optimizer_state: dict, rng: list) -> dict:
        """What resuming needs besides the weights: the optimizer's (full) state, every process's
        RNG states, and where the run is."""
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "train_time": self.train_time,
            "best_val_loss": self.best_val_loss,
            "optimizer": optimizer_state,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "data_generator": self.data_generator.get_state(),
            "rng": rng,
        }

    def save_checkpoint(self, val_loss: float | None = None) -> Path:
        """Write checkpoints/step-NNNNNNN atomically and delete the ones beyond keep_last (a collective)."""
        model = self.gather_model()
        optimizer_state = get_optimizer_state_dict(self.model, self.optimizer, options=FULL_STATE)
        rng = self.dist.gather(rng_state())
        # LoRA: the adapters alone too, in peft's layout (a resumed run puts them back on the base)
        adapters = (lambda tmp: write_adapter_files(self.raw_model, tmp, self.sft.init_from)) if lora_layers(self.raw_model) else None
        return self.checkpoints.save(self.step, model, self.data.tokenizer, self.checkpoint_metadata(val_loss),
                                     lambda: self.trainer_state(optimizer_state, rng), self.config.to_dict(), adapters)  # fmt: skip

    def save_best(self, val_loss: float) -> None:
        """Write best/ (weights and tokenizer, no trainer state) atomically (a collective)."""
        self.checkpoints.save_best(self.gather_model(), self.data.tokenizer, self.checkpoint_metadata(val_loss))

    def checkpoint_metadata(self, val_loss: float | None) -> dict:
        """What a checkpoint's config.json records about the run."""
        return {"step": self.step, "tokens_seen": self.tokens_seen, "val_loss": val_loss, "run_dir": str(self.run_dir)}

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        """Train from the current step to max_steps (or a stop signal); returns the run's summary."""
        c = self.config
        every = {"log": c.log.log_every, "eval": c.eval.eval_every, "checkpoint": c.checkpoint.checkpoint_every}
        start_step, started = self.step, time.perf_counter()
        self.log(self.describe())
        bar = tqdm(total=c.max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (c.log.progress and self.dist.is_main))  # fmt: skip
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
                    checkpoint = (every["checkpoint"] and self.step % every["checkpoint"] == 0) or final or stopped_by
                    row = {}
                    # a row at every checkpoint too, so a run resumed from it logs the same intervals
                    if self.step % every["log"] == 0 or checkpoint:
                        row = {**result, "train_loss": sum(interval_losses) / len(interval_losses),
                               "tokens_per_s": interval_tokens / interval_time}  # fmt: skip
                        interval_losses, interval_tokens, interval_time = [], 0, 0.0
                    val = {}
                    if (every["eval"] and self.step % every["eval"] == 0) or final or stopped_by:
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
        trainable, params = trainable_share(self.raw_model)  # FSDP: DTensors report the full size
        if self.sft is None:
            return f"{self.config.model.get('preset')} {params / 1e6:.2f}M parameters"
        what = f"fine-tuned from {self.sft.init_from}: {params / 1e6:.2f}M parameters"
        return what + (f", LoRA rank {self.sft.lora_rank}: {trainable:,} trainable ({trainable / params:.2%})" if self.sft.lora_rank else "")

    def describe(self) -> str:
        """What is about to run, in a few lines."""
        c, m = self.config, self.data.meta
        b, o, cur = c.batch, c.optim, c.curriculum
        processes = f"{self.dist.world_size} processes ({'FSDP2' if self.fsdp else 'DDP'})" if self.dist.world_size > 1 else "1 process"
        source = f"{c.sft.conversations} ({m['conversations'][0]} + {m['conversations'][1]} held-out conversations)" if self.sft else c.data.corpus
        lines = [
            f"data: {source} ({m['tokenizer']['kind']} tokenizer, {m['tokenizer']['vocab_size']:,} ids): "
            f"{m['train_tokens']:,} train / {m['val_tokens']:,} val tokens",
            f"model: {self.describe_model()}, {c.hardware.precision}{', compiled' if c.hardware.compile else ''}, "
            f"{self.device}, {processes}",
            f"batch: {b.batch_size} x {b.seq_len} tokens = {self.micro_batch_size} per pass x {self.accumulation} "
            f"accumulation x {self.dist.world_size} processes; {c.max_steps} updates, {o.schedule} lr {o.learning_rate:g}"
            + (" (more, shorter windows during the seq_len warmup)" if cur.seq_len_warmup_steps and cur.seq_len_warmup_keep_tokens else ""),
        ]
        options = {  # description: whether it is on
            f"seq_len {cur.seq_len_start} -> {b.seq_len} over {cur.seq_len_warmup_steps} updates": cur.seq_len_warmup_steps,
            f"easiest {cur.difficulty_start_fraction:.0%} of the text -> all over {cur.difficulty_warmup_steps} updates":
                cur.difficulty_warmup_steps,
            f"BPE-dropout {cur.bpe_dropout:g}": cur.bpe_dropout,
            "windows only at multiples of seq_len": not cur.random_offsets,
        }  # fmt: skip
        if any(options.values()):
            lines.append("curriculum / augmentation: " + "; ".join(text for text, on in options.items() if on))
        if self.checkpoint is not None:
            lines.append(f"resuming from {self.checkpoint} at step {self.step}")
        return "\n".join(lines)

    def summary(self, start_step: int, wall_s: float, last_eval: dict | None, stopped_by: str | None) -> dict:
        """The run's outcome, as plain values (see gptoss.cli.train.format_summary)."""
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
