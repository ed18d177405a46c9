"""Corpora, preparation into token files, batching, and the errors users meet on the way."""

from __future__ import annotations

import hashlib
import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import shared_data_path
from gptoss.data import corpora, token_files
from gptoss.cli import main
from gptoss.data.batches import epoch_batches, random_batch, split_train_val
from gptoss.data.corpora import ChecksumError, load_corpus, pystdlib_files, shakespeare_path
from gptoss.data.token_files import TokenDataset, load_tokens, prepare
from gptoss.data.tokenizers import BPETokenizer, CharTokenizer, TiktokenTokenizer
from gptoss.train import TrainConfig

SAMPLE = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty download cache, no shared data folder, and a network that always fails (request
    shared-data fixtures before this one: it points GPTOSS_SHARED_DATA at an empty folder)."""
    monkeypatch.setenv("GPTOSS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GPTOSS_SHARED_DATA", str(tmp_path / "no_shared_data"))

    def no_network(url):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(corpora, "fetch_url", no_network)
    return tmp_path / "cache" / "tinyshakespeare" / "input.txt"


@pytest.fixture
def shakespeare_file():
    return shared_data_path("tinyshakespeare/input.txt")


@pytest.fixture(scope="module")
def small_bpe():
    return BPETokenizer.train(SAMPLE + "def f(x):\n    return x  # café 👍\n", vocab_size=300)


@pytest.fixture(scope="module")
def gpt2():
    return TiktokenTokenizer("gpt2", shared_data_path("tokenizers/vocab.bpe").parent)


@pytest.fixture(scope="module")
def harmony():
    return TiktokenTokenizer("o200k_harmony", shared_data_path("tokenizers/o200k_base.tiktoken").parent)


# --- corpora ---------------------------------------------------------------------------------


def test_pystdlib_is_the_standard_library_without_tests():
    files = pystdlib_files()
    root = Path(sysconfig.get_paths()["stdlib"])
    relative = [f.relative_to(root).as_posix() for f in files]
    assert relative == sorted(relative)
    assert "json/decoder.py" in relative and "os.py" in relative
    for path in relative:
        folders = path.split("/")[:-1]
        assert not any(f.startswith("test") or f in ("tests", "idle_test", "site-packages") for f in folders), path
    assert sum(f.stat().st_size for f in files) > 5_000_000  # the real library, not a stub


def test_pystdlib_is_deterministic_and_capped():
    first = load_corpus("pystdlib", max_chars=200_000)
    assert len(first) == 200_000
    assert first == load_corpus("pystdlib", max_chars=200_000)
    assert first.startswith(pystdlib_files()[0].read_text(encoding="utf-8")[:1000])


def test_shakespeare_from_the_shared_data_folder(shakespeare_file, shakespeare_text, offline, monkeypatch):
    monkeypatch.setenv("GPTOSS_SHARED_DATA", str(shakespeare_file.parent.parent))
    assert load_corpus("shakespeare") == shakespeare_text
    assert not offline.exists()  # found locally: nothing downloaded or cached


def test_shakespeare_download_is_verified_cached_and_then_reused(shakespeare_file, offline, monkeypatch):
    calls = []

    def fake_fetch(url):
        calls.append(url)
        return shakespeare_file.read_bytes()

    monkeypatch.setattr(corpora, "fetch_url", fake_fetch)
    assert shakespeare_path() == offline
    assert calls == [corpora.SHAKESPEARE_URL]
    assert hashlib.sha256(offline.read_bytes()).hexdigest() == corpora.SHAKESPEARE_SHA256
    assert shakespeare_path() == offline and len(calls) == 1  # second time from the cache
    assert not list(offline.parent.glob(".*tmp"))  # the atomic write left nothing behind


def test_downloaded_file_with_wrong_checksum_is_refused(offline, monkeypatch):
    monkeypatch.setattr(corpora, "fetch_url", lambda url: b"<html>rate limited</html>")
    with pytest.raises(ChecksumError, match=f"expected {corpora.SHAKESPEARE_SHA256}"):
        shakespeare_path()
    assert not offline.exists()


def test_cached_file_with_wrong_checksum_is_refused(offline):
    offline.parent.mkdir(parents=True)
    offline.write_text("First Citizen:\ntruncated")
    with pytest.raises(ChecksumError, match=r"input\.txt has sha256 .* delete a downloaded copy"):
        load_corpus("shakespeare")


def test_given_local_copy_is_verified(tmp_path, shakespeare_file):
    assert shakespeare_path(shakespeare_file) == shakespeare_file
    wrong = tmp_path / "input.txt"
    wrong.write_text("not shakespeare")
    with pytest.raises(ChecksumError):
        shakespeare_path(wrong)


def test_no_network_and_no_local_copy_says_how_to_supply_one(offline):
    with pytest.raises(ConnectionError) as error:
        load_corpus("shakespeare")
    message = str(error.value)
    assert "Network is unreachable" in message
    assert str(offline) in message and "GPTOSS_SHARED_DATA" in message and "path" in message


def test_file_folder_and_glob_corpora(tmp_path):
    (tmp_path / "b.txt").write_text("bee\n")
    (tmp_path / "a.txt").write_text("ay\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.md").write_text("sea\n")
    (tmp_path / ".hidden").write_text("secret\n")
    assert load_corpus(tmp_path / "a.txt") == "ay\n"
    assert load_corpus(tmp_path) == "ay\n\n\nbee\n\n\nsea\n"
    assert load_corpus(str(tmp_path / "*.txt")) == "ay\n\n\nbee\n"
    assert load_corpus(str(tmp_path / "**" / "*.md")) == "sea\n"


def test_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a file, folder or glob that exists"):
        load_corpus(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="no file matches"):
        load_corpus(str(tmp_path / "*.nope"))


def test_empty_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_corpus(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="is empty"):
        prepare(tmp_path / "empty.txt", "char", tmp_path / "out", progress=False)
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="holds no files"):
        load_corpus(tmp_path / "folder")


@pytest.mark.parametrize("read_size", [4, 1 << 20])
def test_non_utf8_names_the_file_and_byte_offset(tmp_path, monkeypatch, read_size):
    monkeypatch.setattr(corpora, "READ_CHUNK_BYTES", read_size)  # 4: the error is past a read boundary
    path = tmp_path / "latin1.txt"
    path.write_bytes("héllo wörld, ".encode("utf-8") + "café".encode("latin-1"))
    offset = len("héllo wörld, caf".encode("utf-8"))
    with pytest.raises(ValueError, match=rf"latin1\.txt is not UTF-8 text: invalid byte b'\\xe9' at byte offset {offset}"):
        load_corpus(path)


def test_multibyte_characters_split_across_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(corpora, "READ_CHUNK_BYTES", 3)
    text = "👩‍👩‍👧 e\u0301 漢字\n" * 5
    (tmp_path / "emoji.txt").write_text(text, encoding="utf-8")
    assert load_corpus(tmp_path / "emoji.txt") == text


# --- split -----------------------------------------------------------------------------------


def test_split_matches_nanogpt_on_shakespeare(shakespeare_text):
    train, val = split_train_val(shakespeare_text)
    assert (len(train), len(val)) == (1_003_854, 111_540)
    assert train + val == shakespeare_text


@given(st.lists(st.integers(), max_size=200), st.floats(0, 0.99))
@settings(max_examples=100, deadline=None)
def test_split_is_deterministic_disjoint_and_complete(tokens, val_fraction):
    train, val = split_train_val(tokens, val_fraction)
    assert train + val == tokens
    assert (train, val) == split_train_val(tokens, val_fraction)
    assert len(val) == len(tokens) - int(len(tokens) * (1 - val_fraction))


def test_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val([1, 2, 3], 1.0)


# --- prepare ---------------------------------------------------------------------------------


def _kind_tokenizer(kind, small_bpe, gpt2):
    return {"char": CharTokenizer.from_text(SAMPLE), "bpe": small_bpe, "gpt2": gpt2}[kind]


@pytest.mark.parametrize("kind", ["char", "bpe", "gpt2"])
def test_prepared_ids_equal_encoding_the_whole_text(tmp_path, kind, small_bpe, gpt2):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SAMPLE)
    tokenizer = _kind_tokenizer(kind, small_bpe, gpt2)
    dataset = prepare(corpus, tokenizer, tmp_path / "out", chunk_chars=50, progress=False)  # many cuts
    train_text, val_text = split_train_val(SAMPLE)
    assert dataset.train.tolist() == tokenizer.encode(train_text)
    assert dataset.val.tolist() == tokenizer.encode(val_text)
    assert isinstance(dataset.train, np.memmap) and dataset.train.dtype == np.uint16
    assert dataset.meta["split_char"] == len(train_text)
    assert dataset.meta["source_sha256"] == hashlib.sha256(SAMPLE.encode()).hexdigest()
    assert dataset.tokenizer.fingerprint == tokenizer.fingerprint


@given(
    st.lists(
        st.sampled_from(["\n", "\n\n", " ", "  ", "Word", "word", "'s", ".", "/", "👍", "e\u0301", "\u0301", "é", "<|endoftext|>", "12"]),
        max_size=40,
    )
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_safe_cuts_never_change_the_ids(small_bpe, gpt2, harmony, pieces):
    text = "".join(pieces)
    cut_pieces = list(token_files._safe_pieces(iter([text]), chunk_chars=1, split_char=len(text)))  # every safe cut
    assert "".join(cut_pieces) == text
    for tokenizer in (small_bpe, gpt2, harmony):
        backend_ids = tokenizer.encode_arrays([text])[0].tolist()
        assert np.concatenate(tokenizer.encode_arrays(cut_pieces) + [np.zeros(0)]).tolist() == backend_ids


def test_o200k_harmony_is_stored_as_uint32(tmp_path, harmony):
    tokenizer = harmony
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("<|start|>user<|message|>Hi<|end|>\n" * 10)
    dataset = prepare(corpus, tokenizer, tmp_path / "out", progress=False)
    assert dataset.train.dtype == np.uint32
    assert dataset.train[0] == 200006


def test_prepare_is_cached_by_content(tmp_path, monkeypatch):
    corpus, out = tmp_path / "corpus.txt", tmp_path / "out"
    corpus.write_text(SAMPLE)
    first = prepare(corpus, "char", out, progress=False)
    stamp = (out / "train.bin").stat().st_mtime_ns

    def must_not_encode(self, texts):
        raise AssertionError("a cached preparation tokenized again")

    with monkeypatch.context() as patch:
        patch.setattr(CharTokenizer, "encode_arrays", must_not_encode)
        again = prepare(corpus, "char", out, progress=False)  # by kind
        again_by_object = prepare(corpus, first.tokenizer, out, progress=False)  # by fingerprint
    assert (out / "train.bin").stat().st_mtime_ns == stamp
    assert again.meta == first.meta == again_by_object.meta

    corpus.write_text(SAMPLE + "New text!\n")
    changed = prepare(corpus, "char", out, progress=False)
    assert changed.meta["source_sha256"] != first.meta["source_sha256"]
    assert "!" in changed.tokenizer.chars
    assert sorted(p.name for p in out.iterdir()) == ["gptoss_tokenizer.json", "meta.json", "train.bin", "val.bin"]


def test_prepare_trains_bpe_on_the_corpus_and_saves_it(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SAMPLE)
    dataset = prepare(corpus, "bpe", tmp_path / "out", vocab_size=300, progress=False)
    assert dataset.meta["tokenizer"]["request"] == {"kind": "bpe", "vocab_size": 300}
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    reloaded = TokenDataset.load(tmp_path / "out")
    assert reloaded.tokenizer.decode(reloaded.train) + reloaded.tokenizer.decode(reloaded.val) == SAMPLE


def test_bpe_compresses_shakespeare_to_well_under_half(shakespeare_text):
    tokenizer = BPETokenizer.train(shakespeare_text, vocab_size=4096)
    assert tokenizer.vocab_size == 4096
    ids = tokenizer.encode_arrays([shakespeare_text])[0]
    assert len(ids) < 0.4 * len(shakespeare_text)
    assert tokenizer.decode(ids) == shakespeare_text


def test_load_tokens_needs_the_meta_file(tmp_path):
    (tmp_path / "train.bin").write_bytes(b"\0\0")
    with pytest.raises(FileNotFoundError, match="meta.json"):
        load_tokens(tmp_path / "train.bin")
    with pytest.raises(FileNotFoundError, match="run prepare"):
        TokenDataset.load(tmp_path)


def test_damaged_prepared_files_are_clear_errors_and_prepare_redoes_them(tmp_path):
    corpus, out = tmp_path / "corpus.txt", tmp_path / "out"
    corpus.write_text(SAMPLE)
    prepare(corpus, "char", out, progress=False)
    train = (out / "train.bin").read_bytes()
    (out / "train.bin").write_bytes(train[:-2])  # truncated: one token short
    with pytest.raises(ValueError, match="train.bin holds .* bytes, but meta.json says .*run prepare again"):
        TokenDataset.load(out)
    (out / "meta.json").write_text('{"format": ')  # cut off mid-write
    with pytest.raises(ValueError, match="meta.json is damaged or not written by prepare .*run prepare again"):
        TokenDataset.load(out)
    again = prepare(corpus, "char", out, progress=False)  # neither stops prepare: it starts over
    assert (out / "train.bin").read_bytes() == train and len(again.train) == len(train) // 2


def test_a_damaged_or_swapped_tokenizer_is_a_clear_error_and_prepare_redoes_it(tmp_path):
    corpus, out = tmp_path / "corpus.txt", tmp_path / "out"
    corpus.write_text(SAMPLE)
    train = prepare(corpus, "bpe", out, vocab_size=300, progress=False).train.copy()
    (out / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match="tokenizer saved in .* is damaged or incomplete .*run prepare again"):
        TokenDataset.load(out)
    assert np.array_equal(prepare(corpus, "bpe", out, vocab_size=300, progress=False).train, train)
    CharTokenizer.from_text(SAMPLE).save(out)  # another tokenizer where the tokens' one was
    with pytest.raises(ValueError, match="not the one its tokens were made with"):
        TokenDataset.load(out)
    assert np.array_equal(prepare(corpus, "bpe", out, vocab_size=300, progress=False).train, train)


def test_a_failed_prepare_leaves_no_temporary_files(tmp_path):
    corpus, out = tmp_path / "corpus.txt", tmp_path / "out"
    corpus.write_text(SAMPLE)
    with pytest.raises(ValueError, match="not in this char tokenizer's vocabulary"):
        prepare(corpus, CharTokenizer.from_text("abc"), out, progress=False)
    assert list(out.iterdir()) == []


def test_cli_prepare(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SAMPLE)
    out = tmp_path / "out"
    assert main(["prepare", "--corpus", str(corpus), "--tokenizer", "char", "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["train_tokens"] + meta["val_tokens"] == len(SAMPLE)
    assert "train +" in capsys.readouterr().out


@pytest.mark.parametrize("max_chars", [0, -5])
def test_max_chars_must_be_positive(tmp_path, max_chars):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SAMPLE)
    with pytest.raises(ValueError, match="max_chars must be a positive number"):
        prepare(corpus, "char", tmp_path / "out", max_chars=max_chars, progress=False)


def test_cli_prepare_writes_where_training_looks(tmp_path, monkeypatch):
    """Without --out, `gptoss prepare` writes the folder `gptoss train` reads for the same settings."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SAMPLE)
    monkeypatch.chdir(tmp_path)
    limit = len(SAMPLE) // 2
    assert main(["prepare", "--corpus", str(corpus), "--tokenizer", "bpe", "--vocab-size", "300", "--max-chars", str(limit)]) == 0
    config = TrainConfig.from_dict(dict(corpus=str(corpus), tokenizer="bpe", bpe_vocab_size=300, max_chars=limit))
    meta = json.loads((config.data_path() / "meta.json").read_text())
    assert meta["source_chars"] == limit and meta["tokenizer"]["vocab_size"] == 300


# --- batching --------------------------------------------------------------------------------


TOKENS = np.arange(1000, dtype=np.uint16) % 997


def test_random_batch_shapes_shift_and_determinism():
    x, y = random_batch(TOKENS, batch_size=8, seq_len=16, generator=torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row in x:
        start = int(row[0])
        assert row.tolist() == TOKENS[start : start + 16].tolist()
    x2, _ = random_batch(torch.from_numpy(TOKENS.astype(np.int64)), 8, 16, torch.Generator().manual_seed(1))
    assert torch.equal(x, x2)


def test_random_batch_reaches_the_last_token():
    tokens = np.arange(17)
    x, y = random_batch(tokens, batch_size=4, seq_len=16)
    assert y[:, -1].tolist() == [16] * 4


def test_epoch_visits_every_window_exactly_once():
    seq_len, batch_size = 10, 7
    batches = list(epoch_batches(TOKENS, batch_size, seq_len, shuffle=True, seed=3))
    starts = sorted(int(row[0]) for x, _ in batches for row in x)
    assert starts == list(range(0, 990, 10))  # (1000 - 1) // 10 = 99 windows
    assert [len(x) for x, _ in batches] == [7] * 14 + [1]
    for x, y in batches:
        assert torch.equal(x[:, 1:], y[:, :-1])
    same = [x for x, _ in epoch_batches(TOKENS, batch_size, seq_len, seed=3)]
    other = [x for x, _ in epoch_batches(TOKENS, batch_size, seq_len, seed=4)]
    assert all(torch.equal(a, b) for (a, _), b in zip(batches, same))
    assert not all(torch.equal(a, b) for (a, _), b in zip(batches, other))
    in_order = [x for x, _ in epoch_batches(TOKENS, batch_size, seq_len, shuffle=False)]
    assert in_order[0][:, 0].tolist() == [0, 10, 20, 30, 40, 50, 60]


def test_batches_from_a_memmap(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SAMPLE)
    dataset = prepare(corpus, "char", tmp_path / "out", progress=False)
    x, y = random_batch(dataset.train, 4, 32, torch.Generator().manual_seed(0))
    assert dataset.tokenizer.decode(x[0]) in SAMPLE


@pytest.mark.parametrize("batch_size, seq_len, name", [(0, 4, "batch_size"), (2, 0, "seq_len"), (2, 2.5, "seq_len")])
def test_batch_sizes_and_lengths_must_be_positive_integers(batch_size, seq_len, name):
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        random_batch(np.arange(16), batch_size, seq_len)
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        next(epoch_batches(np.arange(16), batch_size, seq_len))


def test_too_few_tokens_is_a_clear_error():
    with pytest.raises(ValueError, match=r"only 16 tokens, fewer than seq_len \+ 1 = 17"):
        random_batch(np.arange(16), 2, 16)
    with pytest.raises(ValueError, match="fewer than seq_len"):
        next(epoch_batches(np.arange(16), 2, 16))
