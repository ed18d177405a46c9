"""The seed's training loop (train_model), the seed's own examples, and `python train.py`."""

import json
import math
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, seed_document
from gptoss import GPT, GPTConfig
from gptoss.checkpoints import load_model
from gptoss.cli.demo import sample
from gptoss.data.tokenizers import CharTokenizer
from gptoss.train import train_model


def unigram_entropy(tokens) -> float:
    counts = Counter(tokens)
    return -sum(c / len(tokens) * math.log(c / len(tokens)) for c in counts.values())


def test_training_on_shakespeare_beats_unigram_entropy(shakespeare_text, capsys):
    """A tiny model trained for one short epoch on real text does far better than token frequencies."""
    text = shakespeare_text[:150_000]
    tokenizer = CharTokenizer.from_text(shakespeare_text)
    ids = tokenizer.encode(text)
    train, val = ids[:135_000], ids[135_000:]
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, d_model=64, num_layers=2, max_seq_len=64))
    train_model(model, train, val, seq_len=64, batch_size=32, num_epochs=1, learning_rate=3e-3, progress=False)
    printed = capsys.readouterr().out
    match = re.search(r"epoch 1/1 \| train loss ([\d.]+) \| val loss ([\d.]+) \| val perplexity ([\d.]+)", printed)
    assert match, printed
    val_loss, perplexity = float(match[2]), float(match[3])
    assert perplexity == pytest.approx(math.exp(val_loss), rel=1e-3)
    entropy = unigram_entropy(train)  # ~3.3 nats for Shakespeare's characters
    assert val_loss < entropy - 0.7, (val_loss, entropy)
    assert not model.training  # returned ready for generation


def test_train_model_accepts_lists_arrays_and_tensors(capsys):
    model = GPT(GPTConfig.preset("tiny", vocab_size=11, num_layers=1, d_model=16, num_heads=2, d_ff=32, max_seq_len=16))
    data = [i % 11 for i in range(200)]
    for train in (data, np.array(data, dtype=np.uint16), torch.tensor(data)):
        assert train_model(model, train, data, seq_len=8, batch_size=4, num_epochs=1, progress=False) is model


@pytest.mark.parametrize(
    "train, kwargs, error, match",
    [
        ([], {}, ValueError, "fewer than seq_len \\+ 1"),
        (list(range(8)), {}, ValueError, "fewer than seq_len \\+ 1 = 9"),
        ([0.5] * 50, {}, TypeError, "integer token ids"),
        (list(range(50)), {"learning_rate": -1.0}, ValueError, "learning_rate"),
        (list(range(50)), {"learning_rate": math.inf}, ValueError, "learning_rate must be > 0 and finite"),
        (list(range(50)), {"batch_size": 0}, ValueError, "batch_size"),
        (list(range(50)), {"seq_len": 100}, ValueError, "max_seq_len"),
        (list(range(50)), {"grad_clip": -1.0}, ValueError, "grad_clip"),
        ([0, 1, 2, 99] * 20, {}, ValueError, "outside \\[0, 50\\)"),
    ],
)
def test_train_model_rejects_bad_input(train, kwargs, error, match):
    model = GPT(GPTConfig.preset("tiny", vocab_size=50, num_layers=1, d_model=16, num_heads=2, d_ff=32, max_seq_len=16))
    with pytest.raises(error, match=match):
        train_model(model, train, None, **{"seq_len": 8, "num_epochs": 1, "progress": False, **kwargs})


def test_train_model_reports_the_cross_entropy_of_a_moe_model(capsys):
    """A MoE model trains on cross-entropy + coef x load-balancing loss; the printed train loss is
    the cross-entropy, comparable with the validation loss: with a learning rate too small to move
    the weights, the train loss over one epoch equals the validation loss on the same windows."""
    config = GPTConfig.preset("gpt-oss-tiny", vocab_size=50, num_layers=1, d_model=32, num_heads=2, num_kv_heads=1,
                              head_dim=16, d_ff=32, num_experts=4, max_seq_len=16, router_aux_loss_coef=0.9)  # fmt: skip
    torch.manual_seed(0)
    tokens = torch.randint(0, 50, (8 * 20 + 1,)).tolist()  # 20 windows of 8: 5 full batches of 4
    train_model(GPT(config), tokens, tokens, seq_len=8, batch_size=4, num_epochs=1, learning_rate=1e-12,
                weight_decay=0.0, progress=False)  # fmt: skip
    match = re.search(r"train loss ([\d.]+) \| val loss ([\d.]+)", capsys.readouterr().out)
    assert float(match[1]) == pytest.approx(float(match[2]), abs=1e-3)


def seed_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", seed_document().read_text(), flags=re.S)


def test_seed_examples_run_as_written(monkeypatch, tmp_path):
    """Every Python example of SEED.md, run from the repository root; the Custom Training example's
    `[...]` placeholders filled with real token ids."""
    blocks = seed_python_blocks()
    assert len(blocks) >= 4, "SEED.md's examples were not found"
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    text = "To be, or not to be, that is the question. " * 3
    filled = {"train_tokens": list(text.encode())[:129], "val_tokens": list(text.encode())[-129:]}
    for block in blocks:
        if "config = {" in block:  # the configuration listing is a dict literal, checked below
            namespace = {}
            exec(block, namespace)
            config = GPTConfig(**namespace["config"])
            assert config == GPTConfig.preset("gpt2-small")
            continue
        code = re.sub(r"(train_tokens|val_tokens) = \[\.\.\.\]", lambda m: f"{m[1]} = {filled[m[1]]!r}", block)
        exec(compile(code, "SEED.md", "exec"), {"__name__": "seed_example"})


def test_python_train_py_demo(tmp_path):
    """`python train.py` trains on real text offline, reports loss and perplexity, and prints a sample."""
    out = subprocess.run(
        [sys.executable, "train.py", "--max-chars", "60000", "--epochs", "2", "--seq-len", "64",
         "--sample-tokens", "60", "--out", str(tmp_path / "demo")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    losses = [float(v) for v in re.findall(r"val loss ([\d.]+)", out.stdout)]
    assert len(losses) == 2 and losses[1] < losses[0], out.stdout
    assert "--- sample ---" in out.stdout
    assert (tmp_path / "demo" / "model.safetensors").is_file()
    # a position table as long as the training windows: every row of it was trained
    assert json.loads((tmp_path / "demo" / "config.json").read_text())["config"]["max_seq_len"] == 64


def test_train_py_shakespeare_bpe_reloads_with_its_tokenizer(tmp_path, shakespeare_text):
    """`python train.py --dataset shakespeare --tokenizer bpe` trains, saves the model with its
    tokenizer, and the reloaded pair generates exactly the sample the run printed."""
    out = subprocess.run(
        [sys.executable, "train.py", "--dataset", "shakespeare", "--tokenizer", "bpe", "--vocab-size", "512",
         "--max-chars", "120000", "--epochs", "1", "--seq-len", "64", "--sample-tokens", "40", "--seed", "5",
         "--out", str(tmp_path / "run")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    printed = out.stdout.split("--- sample ---\n", 1)[1].rstrip("\n")
    model, tokenizer = load_model(tmp_path / "run")
    assert tokenizer.kind == "bpe" and tokenizer.vocab_size == 512
    assert sample(model, tokenizer, shakespeare_text[:1], 40, seed=5) == printed


def test_train_py_with_a_rotary_preset_samples_past_256_tokens(tmp_path, capsys):
    """A rotary model's context grows to hold the whole sample (it has no position table to crop)."""
    from gptoss.cli.demo import main as demo_main

    demo_main(["--dataset", "shakespeare", "--max-chars", "20000", "--preset", "gpt-oss-tiny", "--epochs", "1",
               "--seq-len", "32", "--sample-tokens", "300", "--out", str(tmp_path / "run")])  # fmt: skip
    assert len(capsys.readouterr().out.split("--- sample ---\n", 1)[1]) > 300


def test_train_py_samples_from_a_first_character_of_several_tokens(tmp_path, capsys, shakespeare_text):
    """The sample starts from the corpus's first character, which a byte-level BPE may cut into
    several tokens (a byte-order mark: 3): the rotary model's context has room for them too."""
    from gptoss.cli.demo import main as demo_main

    corpus = tmp_path / "bom.txt"
    corpus.write_text("\ufeff" + shakespeare_text[:20000], encoding="utf-8")
    demo_main(["--data", str(corpus), "--tokenizer", "bpe", "--vocab-size", "300", "--preset", "gpt-oss-tiny",
               "--epochs", "1", "--seq-len", "32", "--sample-tokens", "40", "--out", str(tmp_path / "run")])  # fmt: skip
    model, tokenizer = load_model(tmp_path / "run")
    assert len(tokenizer.encode("\ufeff")) > 1
    assert capsys.readouterr().out.split("--- sample ---\n", 1)[1].startswith("\ufeff")
