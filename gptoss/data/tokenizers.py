"""Tokenizers: text <-> token ids, with one interface for every kind.

Kinds:
- `char`: one id per character, vocabulary = the sorted set of characters of a corpus.
- `bpe`: byte-level BPE trained on a corpus with Hugging Face `tokenizers`, saved as `tokenizer.json`.
- `gpt2`, `o200k_harmony`: OpenAI's encodings through `tiktoken`, read from a local folder holding
  OpenAI's files (argument `files_dir`, else env `GPTOSS_TOKENIZER_FILES`, else the shared data
  folder's `tokenizers/` when it has them) and checked by sha256; else tiktoken's own download.

Special tokens written in the text (`<|endoftext|>`, and harmony's `<|start|>` etc.) are encoded as
their special ids, not as plain text: these tokenizers feed our own models, and the chat format
needs them. So `decode(encode(s)) == s` holds for every string a tokenizer can encode (`char`
refuses characters outside its vocabulary), special tokens included (one
exception: o200k_harmony names id 200018 twice, `<|endofprompt|>` and `<|reserved_200018|>`, and
decodes it as the first).

`save(dir)` writes `gptoss_tokenizer.json` (the kind and what is needed to rebuild it, plus
`tokenizer.json` for `bpe`); `load_tokenizer(dir)` reads any of them back.
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
import os
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from unittest import mock

import numpy as np

from gptoss.util.files import write_text_atomically

KINDS = ("char", "bpe", "gpt2", "o200k_harmony")
TIKTOKEN_KINDS = ("gpt2", "o200k_harmony")
END_OF_TEXT = "<|endoftext|>"
DESCRIPTOR_FILE = "gptoss_tokenizer.json"
BPE_FILE = "tokenizer.json"
TOKENIZER_FILES_ENV = "GPTOSS_TOKENIZER_FILES"
TIKTOKEN_FILES = {"gpt2": ("vocab.bpe", "encoder.json"), "o200k_harmony": ("o200k_base.tiktoken",)}
ENCODE_PIECE_CHARS = 1 << 18


class Tokenizer(ABC):
    """The interface every kind implements."""

    kind: str

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids: every id is in range(vocab_size)."""

    @property
    @abstractmethod
    def eot_id(self) -> int | None:
        """Id of the end-of-text token, or None when the kind has none (`char`)."""

    @abstractmethod
    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        """Ids of each of `texts`, as int64 arrays, encoded in parallel where the backend can."""

    @abstractmethod
    def _decode_checked(self, ids: list[int]) -> str:
        """Text of `ids`, already checked to be in range."""

    @abstractmethod
    def _descriptor(self) -> dict:
        """What `gptoss_tokenizer.json` holds: the kind and how to rebuild this tokenizer."""

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids` (a list, or a 1-D numpy array or torch tensor)."""
        return self._decode_checked(self._checked_ids(ids))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`."""
        # Long texts go in pieces cut where no token can span the cut: the ids are the same, the
        # pieces are encoded in parallel, and the backends' per-call overhead (tokenizers keeps
        # offsets and token strings for every id: 2.7 GB for 12 MB of text) stays bounded.
        pieces = split_at_safe_cuts(text, ENCODE_PIECE_CHARS)
        return np.concatenate(self.encode_arrays(pieces)).tolist() if pieces else []

    @property
    def fingerprint(self) -> str:
        """sha256 of what defines this tokenizer: equal fingerprints give equal ids."""
        return hashlib.sha256(json.dumps(self._identity(), sort_keys=True).encode()).hexdigest()

    def _identity(self) -> dict:
        return self._descriptor()

    def save(self, directory: str | Path) -> Path:
        """Write this tokenizer into `directory` (created if needed); returns the folder."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_text_atomically(directory / DESCRIPTOR_FILE, json.dumps(self._descriptor(), indent=1))
        return directory

    def _checked_ids(self, ids: Sequence[int] | np.ndarray) -> list[int]:
        if hasattr(ids, "tolist"):  # numpy arrays and torch tensors
            ids = ids.tolist()
        checked = []
        for i in ids:  # numpy integers are ints too; floats, and the lists of a 2-D input, are not
            try:
                checked.append(operator.index(i))
            except TypeError:
                raise ValueError(
                    f"cannot decode {i!r}: ids must be ints in range({self.vocab_size}) for this {self.kind} "
                    "tokenizer (a flat sequence of them)"
                ) from None
        ids = checked
        if ids and not (0 <= min(ids) and max(ids) < self.vocab_size):
            raise ValueError(
                f"cannot decode ids from {min(ids)} to {max(ids)}: ids must be ints in "
                f"range({self.vocab_size}) for this {self.kind} tokenizer (a flat sequence of them)"
            )
        return ids

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size})"


class CharTokenizer(Tokenizer):
    """One id per character; the id of a character is its rank in the sorted vocabulary. Special
    tokens (`specials`, e.g. a chat template's `<|user|>`) take the ids after the characters."""

    kind = "char"

    def __init__(self, chars: Iterable[str], specials: Sequence[str] = ()):
        self.chars = sorted(set(chars))
        if not self.chars or any(len(char) != 1 for char in self.chars):
            raise ValueError("a char tokenizer needs a non-empty vocabulary of single characters")
        self.specials = list(dict.fromkeys(specials))
        self._special_ids = {name: len(self.chars) + i for i, name in enumerate(self.specials)}
        # longest first, so that no special token is read as a shorter one that starts it
        self._special_pattern = re.compile("(" + "|".join(map(re.escape, sorted(self.specials, key=len, reverse=True))) + ")") if self.specials else None
        # Code points in id order, for the vectorized encoder (searchsorted needs them sorted,
        # which they are: sorted() orders strings of one character by code point).
        self._code_points = np.array([ord(char) for char in self.chars], dtype=np.uint32)

    @classmethod
    def from_text(cls, text: str | Iterable[str]) -> CharTokenizer:
        """The tokenizer whose vocabulary is every character of `text` (a string or string chunks)."""
        chars: set[str] = set()
        for chunk in [text] if isinstance(text, str) else text:
            chars.update(chunk)
        if not chars:
            raise ValueError("cannot build a char tokenizer from an empty corpus")
        return cls(chars)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + len(self.specials)

    @property
    def eot_id(self) -> None:
        return None

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode_array(text) for text in texts]

    def encode_array(self, text: str) -> np.ndarray:
        """Ids of `text` as an int64 array, special tokens written in it as their ids."""
        if self._special_pattern is None:
            return self._encode_chars(text)
        pieces = self._special_pattern.split(text)  # [text, special, text, special, ..., text]
        arrays = [np.array([self._special_ids[piece]]) if i % 2 else self._encode_chars(piece) for i, piece in enumerate(pieces)]
        return np.concatenate(arrays).astype(np.int64)

    def _encode_chars(self, text: str) -> np.ndarray:
        """Ids of `text`'s characters (vectorized: a per-character dict lookup is much slower)."""
        code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._code_points, code_points)
        ids_in_range = np.minimum(ids, len(self.chars) - 1)
        unknown = np.flatnonzero(self._code_points[ids_in_range] != code_points)
        if unknown.size:
            position = int(unknown[0])
            raise ValueError(
                f"character {text[position]!r} at position {position} is not in this char "
                f"tokenizer's vocabulary of {self.vocab_size} characters (build it from a corpus "
                "that contains it, or use a byte-level kind: bpe, gpt2, o200k_harmony)"
            )
        return ids.astype(np.int64)

    def _decode_checked(self, ids: list[int]) -> str:
        n = len(self.chars)
        return "".join(self.chars[i] if i < n else self.specials[i - n] for i in ids)

    def _descriptor(self) -> dict:
        # without special tokens, the descriptor (and so the fingerprint) is what it always was
        return {"kind": self.kind, "chars": self.chars, **({"specials": self.specials} if self.specials else {})}


class BPETokenizer(Tokenizer):
    """Byte-level BPE (GPT-2 style) trained with Hugging Face `tokenizers`; any text encodes."""

    kind = "bpe"

    def __init__(self, backend):
        self._backend = backend  # a tokenizers.Tokenizer
        self._eot_id = backend.token_to_id(END_OF_TEXT)
        if self._eot_id is None:
            raise ValueError(f"this BPE tokenizer has no {END_OF_TEXT} token")

    @classmethod
    def train(cls, text: str | Iterable[str], vocab_size: int = 4096) -> BPETokenizer:
        """Train on `text` (a string or string chunks) up to `vocab_size` ids, `<|endoftext|>` included."""
        from tokenizers import Tokenizer as Backend, decoders, models, pre_tokenizers, trainers

        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + 1:
            raise ValueError(
                f"vocab_size {vocab_size} is too small for byte-level BPE: it needs at least "
                f"{len(alphabet) + 1} (256 bytes + {END_OF_TEXT})"
            )
        backend = Backend(models.BPE())
        # add_prefix_space=False: a space is only encoded where the text has one, so decoding
        # gives back exactly the input.
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[END_OF_TEXT],
            initial_alphabet=alphabet,  # all 256 bytes, so text unseen in training still encodes
            show_progress=False,
        )
        # One huge string costs the trainer gigabytes; pieces cut at safe cuts count the same words.
        chunks = split_at_safe_cuts(text, ENCODE_PIECE_CHARS) if isinstance(text, str) else text
        seen_text = False

        def noting_any_text():
            nonlocal seen_text
            for chunk in chunks:
                seen_text = seen_text or bool(chunk)
                yield chunk

        backend.train_from_iterator(noting_any_text(), trainer)
        if not seen_text:
            raise ValueError("cannot train a BPE tokenizer on an empty corpus")
        return cls(backend)

    @classmethod
    def from_file(cls, path: str | Path) -> BPETokenizer:
        """Load a `tokenizer.json` written by `save`."""
        from tokenizers import Tokenizer as Backend

        return cls(Backend.from_file(str(path)))

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def eot_id(self) -> int:
        return self._eot_id

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        # encode_batch_fast skips the character offsets, which we never use; it runs in parallel.
        encodings = self._backend.encode_batch_fast(texts, add_special_tokens=False)
        return [np.asarray(encoding.ids, dtype=np.int64) for encoding in encodings]

    def _decode_checked(self, ids: list[int]) -> str:
        return self._backend.decode(ids, skip_special_tokens=False)

    def encode_with_dropout(self, text: str, dropout: float, rng: random.Random) -> list[int]:
        """Ids of `text` with BPE-dropout (Provilkov et al., 2020): every merge that could apply is
        skipped with probability `dropout`, so the same text gets other, finer segmentations.

        Decoding gives back `text` whatever the draws; `dropout=0` gives exactly `encode(text)`.
        Written here rather than with the backend's own `dropout` option because that one draws
        from an unseeded generator: `rng` makes a training run, and its resume, reproducible.
        """
        if not 0 <= dropout < 1:
            raise ValueError(f"BPE dropout must be in [0, 1), got {dropout}")
        ids = []
        for i, piece in enumerate(text.split(END_OF_TEXT)):  # written specials stay special
            if i:
                ids.append(self._eot_id)
            for word, _ in self._backend.pre_tokenizer.pre_tokenize_str(piece):
                ids.extend(self._merge(word, dropout, rng))
        return ids

    def _merge(self, word: str, dropout: float, rng: random.Random) -> list[int]:
        """BPE of one pre-tokenized word (byte-level symbols): repeatedly apply the best-ranked
        merge among the adjacent pairs, each pair surviving the dropout draw."""
        ranks, vocab = self._merge_tables
        symbols = list(word)
        while len(symbols) > 1:
            best_rank, best = None, None
            # each pair survives the dropout independently and the best-ranked survivor is merged
            # (the leftmost on ties); a pair that could not beat the best so far needs no draw
            for i in range(len(symbols) - 1):
                rank = ranks.get((symbols[i], symbols[i + 1]))
                if rank is not None and (best_rank is None or rank < best_rank) and not (dropout and rng.random() < dropout):
                    best_rank, best = rank, i
            if best is None:
                break
            symbols[best : best + 2] = [symbols[best] + symbols[best + 1]]
        return [vocab[symbol] for symbol in symbols]

    @functools.cached_property
    def _merge_tables(self) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        """({(left, right): rank}, {symbol: id}) of the trained BPE model."""
        model = json.loads(self._backend.to_str())["model"]
        ranks = {tuple(merge): rank for rank, merge in enumerate(model["merges"])}
        return ranks, model["vocab"]

    def _descriptor(self) -> dict:
        return {"kind": self.kind, "file": BPE_FILE}

    def _identity(self) -> dict:
        return {"kind": self.kind, "tokenizer.json": self._backend.to_str()}

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # the descriptor last: once it names this kind, the file it points to is complete
        write_text_atomically(directory / BPE_FILE, self._backend.to_str(pretty=True))
        return super().save(directory)


class TiktokenTokenizer(Tokenizer):
    """OpenAI's `gpt2` or `o200k_harmony` encoding through tiktoken; ids equal tiktoken's."""

    def __init__(self, kind: str, files_dir: str | Path | None = None):
        if kind not in TIKTOKEN_KINDS:
            raise ValueError(f"unknown tiktoken kind {kind!r}; choose one of {TIKTOKEN_KINDS}")
        files_dir = files_dir or os.environ.get(TOKENIZER_FILES_ENV) or _shared_tokenizer_files(kind)
        self.kind = kind
        self.files_dir = Path(files_dir).resolve() if files_dir else None
        self._encoding = _tiktoken_encoding(kind, self.files_dir)

    @property
    def vocab_size(self) -> int:
        return self._encoding.n_vocab

    @property
    def eot_id(self) -> int:
        return self._encoding.eot_token

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        batches = self._encoding.encode_batch(texts, allowed_special="all")  # threads, GIL released
        return [np.asarray(ids, dtype=np.int64) for ids in batches]

    def _decode_checked(self, ids: list[int]) -> str:
        return self._encoding.decode(ids)

    def _descriptor(self) -> dict:
        return {"kind": self.kind, "files_dir": str(self.files_dir) if self.files_dir else None}

    def _identity(self) -> dict:
        # The files are verified against tiktoken's sha256, so the name alone fixes the ids.
        return {"kind": self.kind}


def shared_data_dir() -> Path:
    """The shared data folder: `$GPTOSS_SHARED_DATA`, else `../shared/data` beside this checkout."""
    configured = os.environ.get("GPTOSS_SHARED_DATA")
    return Path(configured) if configured else Path(__file__).resolve().parents[3] / "shared" / "data"


def _shared_tokenizer_files(kind: str) -> Path | None:
    """The shared data folder's `tokenizers/` when it holds the files of `kind`, so that gpt2 and
    o200k_harmony work offline in a checkout beside it; else None (tiktoken downloads them)."""
    folder = shared_data_dir() / "tokenizers"
    return folder if all((folder / name).is_file() for name in TIKTOKEN_FILES[kind]) else None


# tiktoken's constructor for each encoding names the download URL and the sha256 of every file it
# needs; we reuse it unchanged and only swap where the bytes come from.
@functools.lru_cache(maxsize=4)
def _tiktoken_encoding(kind: str, files_dir: Path | None):
    import tiktoken
    import tiktoken.load
    from tiktoken_ext import openai_public

    if files_dir is None:
        return tiktoken.get_encoding(kind)

    def read_local_copy(url: str, expected_hash: str | None = None) -> bytes:
        path = files_dir / url.rsplit("/", 1)[-1]
        if not path.is_file():
            raise FileNotFoundError(
                f"the {kind} tokenizer needs {path.name}, which is not in {files_dir}; copy it "
                f"there from {url}, or unset {TOKENIZER_FILES_ENV} / files_dir to let tiktoken "
                "download it"
            )
        data = path.read_bytes()
        actual_hash = hashlib.sha256(data).hexdigest()
        if expected_hash and actual_hash != expected_hash:
            raise ValueError(
                f"{path} has sha256 {actual_hash}, but tiktoken expects {expected_hash}: the file "
                f"is corrupt or a different version; replace it with a fresh copy of {url}"
            )
        return data

    with mock.patch.object(tiktoken.load, "read_file_cached", read_local_copy):
        definition = openai_public.ENCODING_CONSTRUCTORS[kind]()
    return tiktoken.Encoding(**definition)


def build_tokenizer(
    kind: str,
    text: str | Iterable[str] | None = None,
    vocab_size: int = 4096,
    files_dir: str | Path | None = None,
) -> Tokenizer:
    """A tokenizer of `kind`: `char`/`bpe` are built from `text`; `gpt2`/`o200k_harmony` are fixed."""
    if kind in TIKTOKEN_KINDS:
        return TiktokenTokenizer(kind, files_dir)
    if kind not in ("char", "bpe"):
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}")
    if text is None:
        raise ValueError(f"a {kind} tokenizer is built from a corpus: pass its text")
    if kind == "char":
        return CharTokenizer.from_text(text)
    return BPETokenizer.train(text, vocab_size)


def load_tokenizer(directory: str | Path, files_dir: str | Path | None = None) -> Tokenizer:
    """The tokenizer saved in `directory` by `save` (`files_dir` overrides a tiktoken files folder)."""
    directory = Path(directory)
    descriptor_path = directory / DESCRIPTOR_FILE
    if not descriptor_path.is_file():
        raise FileNotFoundError(
            f"no saved tokenizer in {directory}: {DESCRIPTOR_FILE} is missing (save one with "
            "tokenizer.save(directory))"
        )
    try:
        descriptor = json.loads(descriptor_path.read_text(encoding="utf-8"))
        kind = descriptor.get("kind")
        if kind == "char":
            return CharTokenizer(descriptor["chars"], descriptor.get("specials", ()))
        if kind == "bpe":
            return BPETokenizer.from_file(directory / descriptor["file"])
    except Exception as error:  # JSON, missing keys, wrong types; the tokenizers library raises bare Exceptions
        raise ValueError(
            f"the tokenizer saved in {directory} is damaged or incomplete ({type(error).__name__}: {error}); save "
            "it again (a prepared data folder: run prepare again, which redoes it)"
        ) from error
    if kind in TIKTOKEN_KINDS:
        saved_dir = descriptor.get("files_dir")
        if files_dir is None and saved_dir and Path(saved_dir).is_dir():
            files_dir = saved_dir
        return TiktokenTokenizer(kind, files_dir)
    raise ValueError(f"{descriptor_path} names an unknown tokenizer kind {kind!r}")


def with_special_tokens(tokenizer: Tokenizer, names: Sequence[str]) -> Tokenizer:
    """A copy of a char or bpe tokenizer that also has the special tokens `names` (those it lacks
    get new ids after its last one; written in a text, each encodes as its one id)."""
    if isinstance(tokenizer, CharTokenizer):
        return CharTokenizer(tokenizer.chars, [*tokenizer.specials, *names])
    if isinstance(tokenizer, BPETokenizer):
        from tokenizers import AddedToken, Tokenizer as Backend

        backend = Backend.from_str(tokenizer._backend.to_str())
        backend.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in names])
        return BPETokenizer(backend)
    raise ValueError(f"a {tokenizer.kind} tokenizer cannot gain special tokens here (only char and bpe can)")


def check_tokenizer_fits(tokenizer: Tokenizer, vocab_size: int) -> None:
    """Raise ValueError when the tokenizer makes ids that a model of `vocab_size` has no row for
    (a model may have more rows than its tokenizer: GPT-2 padded to 50304, say)."""
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(
            f"the {tokenizer.kind} tokenizer has {tokenizer.vocab_size:,} ids but the model only {vocab_size:,} "
            "(vocab_size): use the tokenizer the model was trained with"
        )


def resolve_tokenizer(spec: str, files_dir: str | Path | None = None, what: str = "tokenizer") -> Tokenizer:
    """The tokenizer an option names: a fixed kind (gpt2, o200k_harmony) or a folder holding a
    saved tokenizer (`files_dir`: where OpenAI's files are, for the fixed kinds; `what`: the
    option's name, for the error)."""
    if spec in TIKTOKEN_KINDS:
        return build_tokenizer(spec, files_dir=files_dir)
    if not Path(spec).is_dir():
        raise ValueError(f"{what} {spec!r} is neither a kind ({', '.join(TIKTOKEN_KINDS)}) nor a saved tokenizer folder")
    return load_tokenizer(spec, files_dir=files_dir)


def next_safe_cut(text: str, start: int = 0) -> int:
    """The first index at or after `start` where `text` may be cut before encoding; -1 if none.

    A safe cut is just before a newline that follows a letter. Encoding the two sides separately
    then gives the same ids as encoding the whole, for every kind here: gpt2's and o200k's
    pre-token patterns and byte-level BPE's all end a word at the newline (a word never takes in
    whitespace), the newline starts the next pre-token either way, and BPE never merges across
    pre-tokens. Special tokens hold no newline, so none is cut in two.
    """
    position = max(start, 1) - 1
    while (position := text.find("\n", position + 1)) > 0:
        if text[position - 1].isalpha():
            return position
    return -1


def split_at_safe_cuts(text: str, piece_chars: int) -> list[str]:
    """`text` cut at the first safe cut (see `next_safe_cut`) after every `piece_chars` characters."""
    pieces, start = [], 0
    while (cut := next_safe_cut(text, start + piece_chars)) > 0:
        pieces.append(text[start:cut])
        start = cut
    return pieces + [text[start:]] if start < len(text) else pieces
