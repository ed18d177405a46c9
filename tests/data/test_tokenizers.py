"""Tokenizers: round trips on arbitrary Unicode, agreement with tiktoken, save/load, clear errors."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import tiktoken
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import shared_data_path
from gptoss.data.tokenizers import (
    ENCODE_PIECE_CHARS,
    BPETokenizer,
    CharTokenizer,
    TiktokenTokenizer,
    build_tokenizer,
    load_tokenizer,
    split_at_safe_cuts,
)

# Arbitrary Unicode (hypothesis leaves out lone surrogates, which no str encodes to UTF-8), plus
# text built from the hard cases on purpose: emoji with joiners and skin tones, combining marks,
# CJK, control characters, runs of spaces and newlines, and the special tokens themselves.
TRICKY_PIECES = [
    "👩‍👩‍👧", "👍🏽", "🇫🇷", "e\u0301", "\u0928\u093f", "Z\u0351\u036b\u0343", "漢字", "\r\n", "\t",
    "   ", "\n\n", " a", "'s", "<|endoftext|>", "\x00", "\ufeff", "\U0010fffd", "Ω≈ç√",
]
unicode_text = st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from(TRICKY_PIECES) | st.text(max_size=5), max_size=12).map("".join),
)
ROUND_TRIP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

HARMONY_SPECIAL_IDS = {
    "<|start|>": 200006,
    "<|end|>": 200007,
    "<|message|>": 200008,
    "<|channel|>": 200005,
    "<|return|>": 200002,
    "<|call|>": 200012,
}


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    """A small BPE trained once on a built-in text (the Shakespeare one is tested in test_data)."""
    text = (
        "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
        "def main(argv: list[str]) -> int:\n    return 0  # 漢字 café naïve 👍\n"
    ) * 20
    return BPETokenizer.train(text, vocab_size=300)


@pytest.fixture(scope="module")
def gpt2(tokenizer_dir_module) -> TiktokenTokenizer:
    return TiktokenTokenizer("gpt2", tokenizer_dir_module)


@pytest.fixture(scope="module")
def harmony(tokenizer_dir_module) -> TiktokenTokenizer:
    return TiktokenTokenizer("o200k_harmony", tokenizer_dir_module)


@pytest.fixture(scope="module")
def tokenizer_dir_module():
    """conftest's `tokenizer_dir`, for module-scoped fixtures (it fails or skips the same way)."""
    return shared_data_path("tokenizers/o200k_base.tiktoken").parent


@pytest.fixture(scope="module")
def tiktoken_reference(tokenizer_dir_module, tmp_path_factory):
    """tiktoken's own encodings, loaded offline the way SOURCES.md describes (TIKTOKEN_CACHE_DIR)."""
    cache = tmp_path_factory.mktemp("tiktoken_cache")
    for url in [
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
    ]:
        shutil.copy(tokenizer_dir_module / url.rsplit("/", 1)[1], cache / hashlib.sha1(url.encode()).hexdigest())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        from tiktoken_ext.openai_public import ENCODING_CONSTRUCTORS

        # Built directly, not through tiktoken.get_encoding, to keep tiktoken's global registry
        # (which may already hold a downloaded copy) out of the comparison.
        return {name: tiktoken.Encoding(**ENCODING_CONSTRUCTORS[name]()) for name in ("gpt2", "o200k_harmony")}


# --- char ------------------------------------------------------------------------------------


def test_char_vocabulary_is_the_sorted_characters_of_the_text():
    tokenizer = CharTokenizer.from_text("hello world")
    assert tokenizer.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert tokenizer.vocab_size == 8
    assert tokenizer.kind == "char" and tokenizer.eot_id is None
    assert tokenizer.encode("hello") == [3, 2, 4, 4, 5]
    assert tokenizer.decode([3, 2, 4, 4, 5]) == "hello"


def test_char_decode_accepts_tensors_and_arrays():
    tokenizer = CharTokenizer.from_text("abc")
    assert tokenizer.decode(torch.tensor([2, 1, 0])) == "cba"
    assert tokenizer.decode(np.array([0, 0], dtype=np.uint16)) == "aa"


@given(st.text(min_size=1, max_size=80))
@settings(max_examples=100, deadline=None)
def test_char_round_trip_on_its_own_text(text):
    tokenizer = CharTokenizer.from_text(text)
    assert tokenizer.decode(tokenizer.encode(text)) == text


@given(st.text(max_size=20), st.characters(), st.text(max_size=20))
@settings(max_examples=100, deadline=None)
def test_char_unknown_character_error_names_it_and_its_position(prefix, unknown, suffix):
    known = prefix + suffix + "x"
    if unknown in known:
        return
    tokenizer = CharTokenizer.from_text(known)
    with pytest.raises(ValueError) as error:
        tokenizer.encode(prefix + unknown + suffix)
    assert repr(unknown) in str(error.value)
    assert f"position {len(prefix)}" in str(error.value)


def test_char_from_empty_text_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.from_text("")


# --- bpe -------------------------------------------------------------------------------------


@given(unicode_text)
@ROUND_TRIP
def test_bpe_round_trip_arbitrary_unicode(bpe, text):
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


def test_bpe_keeps_leading_spaces_and_end_of_text(bpe):
    text = " leading space<|endoftext|>  two\n"
    ids = bpe.encode(text)
    assert ids.count(bpe.eot_id) == 1
    assert bpe.decode(ids) == text
    assert bpe.vocab_size == 300


def test_bpe_vocab_size_too_small_is_an_error():
    with pytest.raises(ValueError, match="at least 257"):
        BPETokenizer.train("some text", vocab_size=100)


def test_bpe_on_empty_text_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        BPETokenizer.train([""], vocab_size=300)


# --- gpt2 / o200k_harmony --------------------------------------------------------------------


@given(unicode_text)
@ROUND_TRIP
def test_gpt2_round_trip_and_equals_tiktoken(gpt2, tiktoken_reference, text):
    ids = gpt2.encode(text)
    assert ids == tiktoken_reference["gpt2"].encode(text, allowed_special="all")
    assert gpt2.decode(ids) == text


@given(unicode_text)
@ROUND_TRIP
def test_o200k_harmony_round_trip_and_equals_tiktoken(harmony, tiktoken_reference, text):
    ids = harmony.encode(text)
    assert ids == tiktoken_reference["o200k_harmony"].encode(text, allowed_special="all")
    assert harmony.decode(ids) == text


def test_gpt2_known_ids(gpt2):
    assert gpt2.vocab_size == 50257 and gpt2.eot_id == 50256
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode("<|endoftext|>") == [50256]


def test_long_text_is_encoded_in_pieces_with_the_same_ids(bpe, gpt2, harmony, tiktoken_reference):
    lines = ["First Citizen:", "Speak, speak", "    return x  # café", "", "import os", "  👍 e\u0301"]
    text = "\n".join(lines[i % len(lines)] for i in range(50_000))  # 0.6 MB: cut into pieces
    assert len(split_at_safe_cuts(text, ENCODE_PIECE_CHARS)) > 1
    assert gpt2.encode(text) == tiktoken_reference["gpt2"].encode(text, allowed_special="all")
    assert harmony.encode(text) == tiktoken_reference["o200k_harmony"].encode(text, allowed_special="all")
    assert bpe.encode(text) == bpe._backend.encode(text, add_special_tokens=False).ids


def test_split_at_safe_cuts_keeps_all_text():
    text = "ab\ncd\n" * 100
    pieces = split_at_safe_cuts(text, 10)
    assert "".join(pieces) == text
    assert all(piece.startswith("\n") for piece in pieces[1:]) and max(map(len, pieces)) <= 20
    assert split_at_safe_cuts("x" * 50, 10) == ["x" * 50]  # no cut at all: one piece
    assert split_at_safe_cuts("", 10) == []


def test_o200k_harmony_vocabulary_and_special_tokens(harmony):
    assert harmony.vocab_size == 201088
    assert harmony.eot_id == 199999
    for token, expected_id in HARMONY_SPECIAL_IDS.items():
        assert harmony.encode(token) == [expected_id]
    message = "<|start|>assistant<|channel|>final<|message|>Hi!<|return|>"
    ids = harmony.encode(message)
    assert [ids[0], ids[2], ids[4], ids[-1]] == [200006, 200005, 200008, 200002]
    assert harmony.decode(ids) == message


def test_tiktoken_files_dir_from_environment(monkeypatch, tokenizer_dir_module):
    monkeypatch.setenv("GPTOSS_TOKENIZER_FILES", str(tokenizer_dir_module))
    tokenizer = build_tokenizer("gpt2")
    assert tokenizer.files_dir == tokenizer_dir_module.resolve()
    assert tokenizer.encode("Hello world") == [15496, 995]


def test_tiktoken_files_found_in_the_shared_data_folder(monkeypatch, tokenizer_dir_module):
    monkeypatch.delenv("GPTOSS_TOKENIZER_FILES", raising=False)
    monkeypatch.setenv("GPTOSS_SHARED_DATA", str(tokenizer_dir_module.parent))
    assert TiktokenTokenizer("o200k_harmony").files_dir == tokenizer_dir_module.resolve()


def test_tiktoken_missing_file_says_which_and_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"o200k_base\.tiktoken.*not in"):
        TiktokenTokenizer("o200k_harmony", tmp_path)


def test_tiktoken_corrupt_file_is_a_checksum_error(tmp_path, tokenizer_dir_module):
    (tmp_path / "vocab.bpe").write_bytes((tokenizer_dir_module / "vocab.bpe").read_bytes()[:-10])
    (tmp_path / "encoder.json").write_bytes((tokenizer_dir_module / "encoder.json").read_bytes())
    with pytest.raises(ValueError, match=r"vocab\.bpe has sha256 .* expects 1ce16647"):
        TiktokenTokenizer("gpt2", tmp_path)


# --- the interface, for every kind -----------------------------------------------------------


@pytest.fixture(params=["char", "bpe", "gpt2", "o200k_harmony"])
def any_tokenizer(request, bpe):
    if request.param == "char":
        return CharTokenizer.from_text("The quick brown fox.\n")
    if request.param == "bpe":
        return bpe
    return request.getfixturevalue("gpt2" if request.param == "gpt2" else "harmony")


def test_save_and_load_give_the_same_ids(any_tokenizer, tmp_path):
    text = "The quick brown fox.\n"
    any_tokenizer.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert type(loaded) is type(any_tokenizer)
    assert loaded.kind == any_tokenizer.kind
    assert loaded.vocab_size == any_tokenizer.vocab_size
    assert loaded.eot_id == any_tokenizer.eot_id
    assert loaded.encode(text) == any_tokenizer.encode(text)
    assert loaded.fingerprint == any_tokenizer.fingerprint


def test_encode_arrays_equals_encode(any_tokenizer):
    texts = ["The quick ", "brown fox.\n", ""]
    arrays = any_tokenizer.encode_arrays(texts)
    assert [a.tolist() for a in arrays] == [any_tokenizer.encode(t) for t in texts]


def test_decode_rejects_ids_out_of_range(any_tokenizer):
    with pytest.raises(ValueError, match=rf"range\({any_tokenizer.vocab_size}\)"):
        any_tokenizer.decode([0, any_tokenizer.vocab_size])


def test_decode_takes_numpy_integers_and_refuses_non_integers(any_tokenizer):
    ids = any_tokenizer.encode("The fox.")
    assert any_tokenizer.decode(list(np.array(ids, dtype=np.int64))) == "The fox."
    with pytest.raises(ValueError, match=r"cannot decode 1.5: ids must be ints"):
        any_tokenizer.decode([0, 1.5, 2])


@pytest.mark.parametrize(
    "damage", ["truncated descriptor", "descriptor is a list", "char descriptor without chars", "bpe file truncated"]
)
def test_a_damaged_saved_tokenizer_is_a_clear_error(bpe, tmp_path, damage):
    if damage == "char descriptor without chars":
        (tmp_path / "gptoss_tokenizer.json").write_text('{"kind": "char"}')
    else:
        bpe.save(tmp_path)
        descriptor, file = tmp_path / "gptoss_tokenizer.json", tmp_path / "tokenizer.json"
        if damage == "truncated descriptor":
            descriptor.write_text(descriptor.read_text()[:10])
        elif damage == "descriptor is a list":
            descriptor.write_text("[]")
        else:
            file.write_text(file.read_text()[:100])
    with pytest.raises(ValueError, match=f"the tokenizer saved in {tmp_path} is damaged or incomplete"):
        load_tokenizer(tmp_path)


def test_bpe_saves_a_standard_tokenizer_json(bpe, tmp_path):
    from tokenizers import Tokenizer

    bpe.save(tmp_path)
    standard = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert standard.encode("café 👍", add_special_tokens=False).ids == bpe.encode("café 👍")


def test_fingerprint_tells_tokenizers_apart(bpe, gpt2, harmony):
    fingerprints = {
        CharTokenizer.from_text("ab").fingerprint,
        CharTokenizer.from_text("abc").fingerprint,
        bpe.fingerprint,
        gpt2.fingerprint,
        harmony.fingerprint,
    }
    assert len(fingerprints) == 5


def test_load_from_a_folder_without_a_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match="gptoss_tokenizer.json"):
        load_tokenizer(tmp_path)


def test_unknown_kind_and_missing_text():
    with pytest.raises(ValueError, match="unknown tokenizer kind 'wordpiece'"):
        build_tokenizer("wordpiece", "text")
    with pytest.raises(ValueError, match="pass its text"):
        build_tokenizer("bpe")
