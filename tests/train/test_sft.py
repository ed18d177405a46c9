"""Supervised fine-tuning in the trainer: LoRA trains only its adapters (the base bit for bit
unchanged), an SFT run resumed after SIGKILL is bit-exact, the checkpoints hold the merged model
and the adapters alone, and bad [sft] inputs are clear errors."""

from __future__ import annotations

import json
import random
import signal

import pytest
import torch
from test_trainer import final_weights, metrics, start_cli, wait_for_metrics_row, logged_steps, write_toml

from gptoss.checkpoints import from_pretrained, load_model, save_model
from gptoss.checkpoints.lora import ADAPTER_CONFIG, load_adapter, lora_layers
from gptoss.config import GPTConfig
from gptoss.data.tokenizers import CharTokenizer
from gptoss.model import GPT
from gptoss.train.config import TrainConfig
from gptoss.train.sft import grow_vocabulary
from gptoss.train.trainer import Trainer

EXACT_COLUMNS = ("step", "tokens", "lr", "train_loss", "grad_norm", "val_loss")


@pytest.fixture(scope="module")
def sft_files(tmp_path_factory):
    """A small base checkpoint (char tokenizer, random weights) and a conversations file."""
    folder = tmp_path_factory.mktemp("sft")
    tokenizer = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz0123456789 +=?")
    torch.manual_seed(0)
    base = GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, d_model=32, num_layers=2, num_heads=2, d_ff=64, max_seq_len=64))
    save_model(base, folder / "base", tokenizer)
    rng = random.Random(0)
    with open(folder / "conversations.jsonl", "w") as f:
        for _ in range(48):
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            messages = [{"role": "user", "content": f"{a}+{b}=?"}, {"role": "assistant", "thinking": f"{a} plus {b}", "content": str(a + b)}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return folder


def sft_config(sft_files, run_dir, **sft) -> TrainConfig:
    return TrainConfig.from_dict({
        "run_dir": str(run_dir), "max_steps": 6,
        "sft": {"conversations": str(sft_files / "conversations.jsonl"), "init_from": str(sft_files / "base"), **sft},
        "batch": {"seq_len": 40, "batch_size": 4}, "optim": {"warmup_steps": 2, "learning_rate": 3e-3},
        "eval": {"eval_every": 3, "eval_sequences": 4}, "checkpoint": {"checkpoint_every": 3, "keep_last": 5},
        "log": {"log_every": 1, "progress": False, "tensorboard": False},
    })  # fmt: skip


def test_lora_training_changes_only_the_adapters(sft_files, tmp_path):
    trainer = Trainer(sft_config(sft_files, tmp_path, lora_rank=2))
    before = {name: p.detach().clone() for name, p in trainer.raw_model.named_parameters()}
    trainer.fit()
    changed = {name for name, p in trainer.raw_model.named_parameters() if not torch.equal(p, before[name])}
    adapters = {f"{layer}.lora_{x}" for layer in lora_layers(trainer.raw_model) for x in "AB"}
    # every adapter moved, and the new chat tokens' rows (the tied unembedding shares them); every
    # base parameter is bit for bit what it was
    assert changed == adapters | {"transformer.wte.token_rows"}
    # the base under the adapters is init_from's, plus the new special tokens' rows
    start = from_pretrained(sft_files / "base")
    vocab = start.config.vocab_size
    assert torch.equal(trainer.raw_model.transformer.wte.base.weight[:vocab], start.transformer.wte.weight)
    assert torch.equal(trainer.raw_model.transformer.h[0].attn.c_attn.base.weight, start.transformer.h[0].attn.c_attn.weight)

    # the checkpoint: the merged model (loads anywhere) and the adapters alone (peft's layout), the
    # new tokens' rows in them: on init_from grown by rows of any values, they give the merged model
    checkpoint = trainer.latest_checkpoint()
    merged, tokenizer = load_model(checkpoint)
    assert tokenizer.encode("<|assistant|>") == [vocab + 2]
    config = json.loads((checkpoint / ADAPTER_CONFIG).read_text())
    assert config["trainable_token_indices"] == {"transformer.wte": list(range(vocab, tokenizer.vocab_size))}
    with torch.no_grad():
        adapted = grow_vocabulary(from_pretrained(sft_files / "base"), tokenizer.vocab_size)
        load_adapter(adapted, checkpoint)
        idx = torch.cat([torch.arange(vocab, tokenizer.vocab_size), torch.randint(vocab, (8,))]).repeat(2, 1)
        torch.testing.assert_close(merged(idx), adapted.eval()(idx), rtol=1e-5, atol=1e-5)


def test_full_fine_tuning_resumes_exactly_from_a_checkpoint(sft_files, tmp_path):
    whole = sft_config(sft_files, tmp_path / "whole")
    Trainer(whole).fit()
    Trainer(whole.replace(run_dir=str(tmp_path / "resumed")), resume=tmp_path / "whole" / "checkpoints" / "step-0000003").fit()

    def exact(rows):
        return [{c: r[c] for c in EXACT_COLUMNS} for r in rows if int(r["step"]) > 3]

    assert exact(metrics(tmp_path / "resumed")) == exact(metrics(tmp_path / "whole"))
    reference = final_weights(tmp_path / "whole")
    for name, tensor in final_weights(tmp_path / "resumed").items():
        assert torch.equal(tensor, reference[name]), name


def test_lora_run_resumed_after_sigkill_is_bit_exact(sft_files, tmp_path):
    config = sft_config(sft_files, tmp_path / "killed", lora_rank=2).replace(max_steps=150, checkpoint_every=20, eval_every=20)
    path = write_toml(tmp_path / "run.toml", config)
    killed = start_cli("--config", str(path))
    wait_for_metrics_row(killed, tmp_path / "killed", past_step=21)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert 21 < max(logged_steps(tmp_path / "killed")) < 150  # killed mid-run

    resumed = start_cli("--config", str(path), "--resume")
    reference = start_cli("--config", str(path), "--set", f"run_dir={tmp_path / 'reference'}")
    outputs = [process.communicate(timeout=300)[0] for process in (resumed, reference)]
    assert resumed.returncode == 0 and reference.returncode == 0, outputs
    assert "resuming from" in outputs[0]

    def exact(rows):
        return [{c: r[c] for c in EXACT_COLUMNS} for r in rows]

    assert exact(metrics(tmp_path / "killed")) == exact(metrics(tmp_path / "reference"))
    expected = final_weights(tmp_path / "reference")
    for name, tensor in final_weights(tmp_path / "killed").items():
        assert torch.equal(tensor, expected[name]), name


def test_bad_sft_inputs_are_clear_errors(sft_files, tmp_path):
    with pytest.raises(ValueError, match="needs init_from"):
        TrainConfig.from_dict({"sft": {"conversations": "x.jsonl"}})
    bad = tmp_path / "bad.jsonl"
    bad.write_text((sft_files / "conversations.jsonl").read_text().splitlines()[0] + "\n{oops\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        Trainer(sft_config(sft_files, tmp_path / "a").replace(sft={"conversations": str(bad), "init_from": str(sft_files / "base")}))
    with pytest.raises(ValueError, match=r"conversations.jsonl:\d+: the conversation takes \d+ tokens, more than a window of 8"):
        Trainer(sft_config(sft_files, tmp_path / "b").replace(seq_len=8))


def test_chat_command_talks_in_the_template_after_fine_tuning(sft_files, tmp_path):
    """`gptoss chat` as a real process on a fine-tuned char model: it recognises the chat template's
    tokens, and the greedy replies are what the model learnt (the reasoning only with --show-analysis)."""
    import os
    import subprocess
    import sys

    lessons = {"hi": ("greet", "hello"), "2+2=?": ("two and two", "4")}
    conversations = tmp_path / "lessons.jsonl"
    conversations.write_text("".join(json.dumps({"messages": [{"role": "user", "content": question}, {"role": "assistant", "thinking": thinking, "content": answer}]}) + "\n"
                                     for question, (thinking, answer) in lessons.items()) * 4)  # fmt: skip
    config = sft_config(sft_files, tmp_path / "run").replace(
        sft={"conversations": str(conversations), "init_from": str(sft_files / "base")}, max_steps=150,
        learning_rate=1e-2, batch_size=2, eval_every=0, checkpoint_every=0, log_every=50,
    )  # fmt: skip
    trainer = Trainer(config)
    trainer.fit()
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def chat(*options: str) -> str:
        result = subprocess.run([sys.executable, "-m", "gptoss", "chat", "--checkpoint", str(trainer.latest_checkpoint()), "--greedy", "--max-new-tokens", "16", *options],
                                input="hi\n/reset\n2+2=?\n", capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert chat() == "> hello\n> > 4\n> \n"  # /reset: each question alone, as they were learnt
    assert chat("--show-analysis") == "> [analysis] greet\nhello\n> > [analysis] two and two\n4\n> \n"
