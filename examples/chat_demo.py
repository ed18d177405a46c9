"""From a base model to a chat model on 2 CPU cores: pretrain, fine-tune (full and LoRA), measure.

    python examples/chat_demo.py [--out runs/chat-demo] [--quick]

1. pretrain a tiny char-level base model on the Python standard library's source (`gptoss train`)
2. generate a synthetic task: two-number addition word problems; the assistant works the sum out
   digit by digit with carries in its reasoning part and gives the result as its answer
3. measure the base, with the chat template's tokens added (what fine-tuning starts from), on
   held-out problems with `gptoss eval --answers` (greedy exact match of the answer)
4. fine-tune it on the training problems, fully and with LoRA (`gptoss train` with an [sft] table)
5. measure both again; print a table (accuracy, time, trainable share) and write results.json

Everything is offline and seeded; the problems are generated here, by `addition_problem`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

NAMES = ("Ann", "Bob", "Cleo", "Dev", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jun")
THINGS = ("apples", "books", "coins", "shells", "stamps", "marbles", "cards", "pens")
STORIES = (
    "{name} has {a} {things} and gets {b} more. How many {things} does {name} have now?",
    "A box holds {a} {things}. {name} puts in {b} more. How many {things} are in the box?",
    "{name} found {a} {things} on Monday and {b} on Tuesday. How many {things} in all?",
)


def addition_problem(rng: random.Random, digits: int) -> dict:
    """A word problem a + b (numbers of up to `digits` digits) as a conversation, the working in
    the reasoning part: each column from the right, its sum and carry."""
    a, b = rng.randint(10 ** (digits - 1), 10**digits - 1), rng.randint(1, 10**digits - 1)
    question = rng.choice(STORIES).format(name=rng.choice(NAMES), things=rng.choice(THINGS), a=a, b=b)
    steps, carry = [], 0
    xs, ys = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(xs), len(ys))):
        x, y = int(xs[i]) if i < len(xs) else 0, int(ys[i]) if i < len(ys) else 0
        total = x + y + carry
        steps.append(f"{x}+{y}+{carry}={total}")
        carry = total // 10
    thinking = f"{a}+{b}: " + ", ".join(steps) + (" carry 1" if carry else "")
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "thinking": thinking, "content": str(a + b)}]}


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def gptoss(*args: str) -> str:
    """Run a gptoss command in a subprocess; returns its standard output (raises on failure)."""
    result = subprocess.run([sys.executable, "-m", "gptoss", *args], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"gptoss {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def timed(what: str, *args: str) -> tuple[str, float]:
    print(f"... {what}", flush=True)
    tic = time.perf_counter()
    out = gptoss(*args)
    return out, time.perf_counter() - tic


def accuracy(checkpoint: Path, answers: Path) -> tuple[float, float]:
    out, seconds = timed(f"gptoss eval --checkpoint {checkpoint}", "eval", "--checkpoint", str(checkpoint), "--answers", str(answers),
                         "--max-new-tokens", "48", "--batch-size", "50", "--json")  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])["answers"]["accuracy"], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/chat-demo", help="folder for the runs and results (default: runs/chat-demo)")
    parser.add_argument("--quick", action="store_true", help="a few steps of each, to check the pipeline (tests)")
    parser.add_argument("--digits", type=int, default=2, help="digits of the numbers added (default: 2)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = {"pretrain": 8, "sft": 8, "lora": 8} if args.quick else {"pretrain": 300, "sft": 500, "lora": 500}
    held_out = 20 if args.quick else 200

    rng = random.Random(0)
    problems = [addition_problem(rng, args.digits) for _ in range(4000 + held_out)]
    train = write_jsonl(out / "train.jsonl", problems[:-held_out])
    val = write_jsonl(out / "val.jsonl", problems[-held_out:])
    answers = write_jsonl(out / "val_answers.jsonl", ({"messages": p["messages"][:1], "answer": p["messages"][1]["content"]}
                                                      for p in problems[-held_out:]))  # fmt: skip
    common = ["--set", "log.progress=false", "--set", "log.tensorboard=false", "--set", "checkpoint.keep_last=1"]
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "steps": steps}

    # 1. the base model
    base_run = out / "base"
    _, results["pretrain_s"] = timed(
        "pretraining the base model", "train", "--set", f"run_dir={base_run}", "--set", "data.corpus=pystdlib",
        "--set", "data.max_chars=2000000", "--set", f"data.data_dir={out / 'data'}", "--set", f"max_steps={steps['pretrain']}",
        "--set", "batch.seq_len=128", "--set", "batch.batch_size=32", "--set", "optim.learning_rate=2e-3",
        "--set", f"optim.warmup_steps={min(30, steps['pretrain'])}", "--set", "eval.eval_every=0", "--set", "eval.eval_sequences=32", *common,
    )  # fmt: skip
    base = sorted((base_run / "checkpoints").glob("step-*"))[-1]

    # 2. what fine-tuning starts from, measured: the base with the chat template's tokens
    from gptoss.checkpoints import save_model
    from gptoss.train.config import SFTConfig
    from gptoss.train.sft import starting_model, starting_tokenizer

    tokenizer = starting_tokenizer(str(base))
    start = out / "start"
    save_model(starting_model(SFTConfig(init_from=str(base)), tokenizer.vocab_size).eval(), start, tokenizer)
    results["before"], _ = accuracy(start, answers)

    # 3. full fine-tuning and LoRA
    for name, lora in (("full", []), ("lora", ["--set", "sft.lora_rank=16", "--set", "sft.lora_targets=attn.c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj"])):
        run = out / name
        summary, results[f"{name}_train_s"] = timed(
            f"fine-tuning ({name})", "train", "--set", f"run_dir={run}", "--set", f"sft.conversations={train}",
            "--set", f"sft.val_conversations={val}", "--set", f"sft.init_from={base}", "--set", f"max_steps={steps[name if name == 'lora' else 'sft']}",
            "--set", "batch.seq_len=160", "--set", "batch.batch_size=32", "--set", f"optim.learning_rate={3e-3 if lora else 1e-3}",
            "--set", "optim.weight_decay=0.0", "--set", f"optim.warmup_steps={min(30, steps['sft'])}", "--set", "eval.eval_every=0",
            "--set", "eval.eval_sequences=64", *lora, *common,
        )  # fmt: skip
        results[f"{name}_model"] = next((line.split("model", 1)[1].strip() for line in summary.splitlines() if line.startswith("model")), "")
        results[name], _ = accuracy(sorted((run / "checkpoints").glob("step-*"))[-1], answers)

    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nmachine: {results['machine']}; base pretrained in {results['pretrain_s']:.0f} s ({steps['pretrain']} steps)")
    print(f"{'model':<28}{'held-out exact match':>22}{'fine-tuning time':>20}")
    print(f"{'base + chat tokens':<28}{results['before']:>22.1%}{'-':>20}")
    for name in ("full", "lora"):
        print(f"{name + ' fine-tuning':<28}{results[name]:>22.1%}{results[name + '_train_s']:>18.0f} s   {results[name + '_model']}")


if __name__ == "__main__":
    main()
