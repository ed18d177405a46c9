"""The `train` verb: `gptoss train --config run.toml --set key=value ... [--resume [PATH]]`.

A run is a TOML (or YAML) file of TrainConfig keys in tables (`gptoss train --keys` lists them,
with their defaults and meaning; configs/ has examples), plus command-line overrides. Under
torchrun the same command trains with DDP or FSDP2:

    torchrun --standalone --nproc_per_node=2 -m gptoss train --config configs/gpt_oss_tiny.toml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gptoss.train.checkpointing import BEST_DIR, find_checkpoint, read_run_config
from gptoss.train.config import TrainConfig, apply_override, config_keys_help, flat_items, merged, nest, read_config_file
from gptoss.train.metrics import CURVE_FILE, METRICS_FILE
from gptoss.train.trainer import Trainer, TrainingDiverged


def build_config(config_file: str | None, assignments: list[str], resume: str | None) -> tuple[TrainConfig, Path | None]:
    """The run config (file, then overrides) and the checkpoint to resume from, if any.

    Resuming without a config file continues with the checkpoint's own config (plus overrides).
    """
    values = nest(read_config_file(config_file)) if config_file else {}
    overrides = {}
    for assignment in assignments:
        overrides = merged(overrides, nest(apply_override({}, assignment)))
    if resume is None:
        return TrainConfig.from_dict(merged(values, overrides)), None

    where = TrainConfig.from_dict(merged(values, overrides)).run_dir if resume == "latest" else resume
    checkpoint = find_checkpoint(where)
    saved = nest(read_run_config(checkpoint))  # written nested; by older versions, flat
    if config_file is None:
        return TrainConfig.from_dict(merged(saved, overrides)), checkpoint
    config = TrainConfig.from_dict(merged(values, overrides))
    saved = TrainConfig.from_dict(saved)
    old, new = flat_items(saved), flat_items(config)
    changed = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
    if changed:
        described = ", ".join(f"{k} ({before!r} -> {after!r})" for k, (before, after) in changed.items())
        print(f"note: the config differs from the checkpoint's in {described}", file=sys.stderr)
    return config, checkpoint


def format_summary(summary: dict) -> str:
    """The end-of-run summary, one screen."""
    run = Path(summary["run_dir"])
    state = f"stopped by {summary['stopped_by']}" if summary["stopped_by"] else "finished"
    lines = [
        f"=== {run}: {state} at step {summary['steps']} ({summary['steps_this_session']} this session)",
        f"model        {summary['model']}",
        f"tokens seen  {summary['tokens_seen']:,} in {summary['train_time_s']:.1f} s of training steps "
        f"({summary['tokens_per_s']:,.0f} tokens/s); this session's wall time {summary['wall_time_s']:.1f} s",
    ]
    if summary["best_val_loss"] is not None:
        last = summary["last_eval"] or {}
        bpb = f", {last['val_bpb']:.4f} bits/byte" if "val_bpb" in last else ""
        lines.append(f"val loss     best {summary['best_val_loss']:.4f}; last {last.get('val_loss', float('nan')):.4f} "
                     f"(perplexity {last.get('val_ppl', float('nan')):.2f}{bpb})")  # fmt: skip
    lines += [
        f"checkpoint   {summary['checkpoint']}  (best weights: {run / BEST_DIR})",
        f"logs         {run / METRICS_FILE}, {run / CURVE_FILE}",
    ]
    return "\n".join(lines)


def register(subparsers) -> None:
    """Add the `train` verb."""
    parser = subparsers.add_parser(
        "train",
        help="train a model from a run config (TOML/YAML) with overrides; resumable",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="run config file (.toml, .yaml); see configs/")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key, e.g. --set learning_rate=3e-4 --set model.d_model=256 (repeatable)")  # fmt: skip
    parser.add_argument("--resume", nargs="?", const="latest", metavar="PATH",
                        help="continue from a checkpoint folder, or the latest checkpoint of a run folder "
                        "(default: of the config's run_dir)")  # fmt: skip
    parser.add_argument("--compile", action="store_true", help="same as --set compile=true")
    parser.add_argument("--device", help="same as --set device=DEVICE (auto, cpu, cuda, cuda:N)")
    parser.add_argument("--keys", action="store_true", help="list every config key with its default and meaning, and exit")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Run the `train` verb; exit code 0 on success (or a clean stop), 1 on divergence (bad input: 2)."""
    if args.keys:
        print(config_keys_help())
        return 0
    assignments = list(args.assignments)
    if args.compile:
        assignments.append("compile=true")
    if args.device:
        assignments.append(f"device={args.device}")
    config, checkpoint = build_config(args.config, assignments, args.resume)
    trainer = Trainer(config, resume=checkpoint)
    try:
        summary = trainer.fit()
    except TrainingDiverged as error:
        print(f"error: training diverged at {error}", file=sys.stderr)
        return 1
    if summary["checkpoint"] is not None:  # rank 0
        print(format_summary(summary))
    return 0
