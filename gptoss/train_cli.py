"""The `train` verb: `gptoss train --config run.toml --set key=value ... [--resume [PATH]]`.

A run is a TOML (or YAML) file of TrainConfig keys (`gptoss train --keys` lists them, with their
defaults and meaning; configs/ has examples), plus command-line overrides. Under torchrun the
same command trains with DDP or FSDP2:

    torchrun --standalone --nproc_per_node=2 -m gptoss train --config configs/gpt_oss_tiny.toml
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

from gptoss.trainer import (
    BEST_DIR,
    CURVE_FILE,
    METRICS_FILE,
    RUN_CONFIG_FILE,
    Trainer,
    TrainConfig,
    TrainingDiverged,
    config_keys_help,
    find_checkpoint,
)


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
    values = json.loads(json.dumps(values))  # a deep copy
    target = values
    for table in tables:
        target = target.setdefault(table, {})
        if not isinstance(target, dict):
            raise ValueError(f"--set {name}: {table!r} is not a table")
    target[last] = value
    return values


def build_config(config_file: str | None, assignments: list[str], resume: str | None) -> tuple[TrainConfig, Path | None]:
    """The run config (file, then overrides) and the checkpoint to resume from, if any.

    Resuming without a config file continues with the checkpoint's own config (plus overrides).
    """
    values = read_config_file(config_file) if config_file else {}
    for assignment in assignments:
        values = apply_override(values, assignment)
    if resume is None:
        return TrainConfig.from_dict(values), None

    where = TrainConfig.from_dict(values).run_dir if resume == "latest" else resume
    checkpoint = find_checkpoint(where)
    saved = json.loads((checkpoint / RUN_CONFIG_FILE).read_text(encoding="utf-8"))
    if config_file is None:
        for assignment in assignments:
            saved = apply_override(saved, assignment)
        return TrainConfig.from_dict(saved), checkpoint
    config = TrainConfig.from_dict(values)
    changed = {k: (saved.get(k), v) for k, v in config.to_dict().items() if saved.get(k) != v}
    if changed:
        described = ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in changed.items())
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


def register_cli(subparsers) -> None:
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
    """Run the `train` verb; exit code 0 on success (or a clean stop), 1 on divergence, 2 on bad input."""
    if args.keys:
        print(config_keys_help())
        return 0
    assignments = list(args.assignments)
    if args.compile:
        assignments.append("compile=true")
    if args.device:
        assignments.append(f"device={args.device}")
    try:
        config, checkpoint = build_config(args.config, assignments, args.resume)
        trainer = Trainer(config, resume=checkpoint)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        summary = trainer.fit()
    except TrainingDiverged as error:
        print(f"error: training diverged at {error}", file=sys.stderr)
        return 1
    if summary["checkpoint"] is not None:  # rank 0
        print(format_summary(summary))
    return 0
