"""`gptoss eval`: perplexity over every window equals transformers' on the exported weights, and
exact-match accuracy compares the final answers of greedy replies."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gptoss.checkpoints import save_model, save_pretrained
from gptoss.cli import main
from gptoss.config import GPTConfig
from gptoss.data.conversations import ChatTemplate, check_messages, with_chat_tokens
from gptoss.data.tokenizers import build_tokenizer
from gptoss.inference import evaluation
from gptoss.model import GPT


@pytest.fixture(scope="module")
def text() -> str:
    from conftest import shared_data_path

    return shared_data_path("tinyshakespeare/input.txt").read_text(encoding="utf-8")[:6000]


@pytest.fixture(scope="module")
def bpe_checkpoint(tmp_path_factory, text):
    """A GPT-2 style model (random weights) with a BPE tokenizer, as ours and as its HF export."""
    folder = tmp_path_factory.mktemp("eval")
    tokenizer = build_tokenizer("bpe", text, vocab_size=400)
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, d_model=32, num_layers=2, num_heads=2, d_ff=64, max_seq_len=64))
    save_model(model, folder / "ours", tokenizer)
    save_pretrained(model, folder / "hf", tokenizer=tokenizer)
    (folder / "text.txt").write_text(text, encoding="utf-8")
    return folder, tokenizer


def test_perplexity_equals_transformers_on_the_exported_weights(bpe_checkpoint, text, capsys):
    transformers = pytest.importorskip("transformers")
    folder, tokenizer = bpe_checkpoint
    assert main(["eval", "--checkpoint", str(folder / "ours"), "--text", str(folder / "text.txt"), "--seq-len", "48", "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)["text"]

    # independently: transformers' model and tokenizer, the same consecutive windows of 48 predictions
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder / "hf", dtype=torch.float32).eval()
    ids = transformers.AutoTokenizer.from_pretrained(folder / "hf")(text)["input_ids"]
    assert ids == tokenizer.encode(text)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, 48):
            window = torch.tensor([ids[start : start + 49]])
            loss = hf(window, labels=window).loss  # mean over the window's predictions
            total += loss.double().item() * (window.shape[1] - 1)
            count += window.shape[1] - 1
    assert ours["tokens"] == count == len(ids) - 1
    assert ours["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)
    assert ours["bits_per_byte"] == pytest.approx(total / math.log(2) / len(text[len(tokenizer.decode(ids[:1])):].encode()), rel=1e-4)


def test_exact_match_compares_the_final_answers(bpe_checkpoint, tmp_path, monkeypatch):
    """The model's replies are scripted (the right answer to the first prompt, a wrong one to the
    second, reasoning that contains the right one to the third): 1 of 3 matches."""
    folder, tokenizer = bpe_checkpoint
    tokenizer = with_chat_tokens(tokenizer)
    template = ChatTemplate(tokenizer)
    prompts = [("what is 2+2", "4"), ("what is 3+3", "6"), ("what is 1+1", "2")]
    replies = ["<|think|>2 and 2<|answer|>4<|end|>", "<|answer|>7<|end|>", "<|think|>it is 2<|answer|>3<|end|> junk"]
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in prompts))

    def scripted(model, batch, max_new_tokens, **options):
        expected = [template.prompt(check_messages([{"role": "user", "content": p}, {"role": "assistant", "content": "-"}], "t")[:-1]) for p, _ in prompts]
        assert batch == expected and options["temperature"] == 0.0
        return [tokenizer.encode(reply) for reply in replies]

    monkeypatch.setattr(evaluation, "generate_batch", scripted)
    model = GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, d_model=16, num_layers=1, num_heads=2, d_ff=32, max_seq_len=64))
    result = evaluation.answer_accuracy(model, tokenizer, path, max_new_tokens=20)
    assert (result["correct"], result["total"]) == (1, 3)
    assert [r["answer"] for r in result["replies"]] == ["4", "7", "3"]


def test_bad_answer_files_name_the_line(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(ValueError, match=r"answers.jsonl:2: each line must be an object with \"answer\""):
        evaluation.read_answer_file(path)
