"""Corpora, preparation into token files, and batching.

- `load_corpus(name_or_path)` / `iter_corpus(...)`: text by name (`pystdlib`, `shakespeare`) or from
  a file, a folder (every non-hidden file below it, recursively) or a glob of UTF-8 text. Several
  files are joined in sorted order with a blank line (`FILE_SEPARATOR`) between them.
- `prepare(corpus, tokenizer, out_dir)`: tokenizes a corpus once, streaming, into `train.bin` and
  `val.bin` (flat uint16 ids, uint32 when the vocabulary needs it), `meta.json` and the tokenizer.
  It is cached by content: a second call with the same text and tokenizer reads nothing but the text.
- `TokenDataset` / `load_tokens(path)`: the prepared files as read-only `numpy.memmap`s, so a
  corpus larger than RAM trains; `random_batch` and `epoch_batches` cut (input, target) windows.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import os
import re
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gptoss.files import cache_dir, write_file_atomically, write_text_atomically
from gptoss.tokenizers import (
    ENCODE_PIECE_CHARS,
    KINDS,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
    next_safe_cut,
    shared_data_dir,
)

CORPUS_NAMES = ("pystdlib", "shakespeare")
FILE_SEPARATOR = "\n\n"
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_RELATIVE_PATH = "tinyshakespeare/input.txt"
DOWNLOAD_TIMEOUT_S = 30
READ_CHUNK_BYTES = 1 << 20
# Folders of the standard library that hold its tests or third-party code, not the library itself.
STDLIB_EXCLUDED_DIRS = {"tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
META_FILE = "meta.json"
META_FORMAT = 1


class ChecksumError(ValueError):
    """A downloaded or cached file does not have the sha256 it must have."""


# ---------------------------------------------------------------------------------------------
# Corpora


def load_corpus(name_or_path: str | Path, max_chars: int | None = None) -> str:
    """The text of a corpus (see the module doc), cut to its first `max_chars` characters if given.

    `pystdlib` is the Python standard library's own source (about 12 MB on Python 3.11): every
    `*.py` under `sysconfig.get_paths()["stdlib"]` except test folders and site-packages.
    """
    text = "".join(iter_corpus(name_or_path, max_chars))
    if not text:
        raise ValueError(f"corpus {str(name_or_path)!r} is empty: there is no text to train on")
    return text


def iter_corpus(name_or_path: str | Path, max_chars: int | None = None) -> Iterator[str]:
    """The text of `load_corpus(name_or_path, max_chars)` in pieces of at most about 1 MB."""
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1):
        raise ValueError(f"max_chars must be a positive number of characters (or None: all), got {max_chars!r}")
    remaining = max_chars
    files = corpus_files(name_or_path)
    for index, path in enumerate(files):
        pieces = _iter_file_text(path)
        if index > 0:
            pieces = _chain_first(FILE_SEPARATOR, pieces)
        for piece in pieces:
            if remaining is not None:
                piece = piece[:remaining]
                remaining -= len(piece)
            if piece:
                yield piece
            if remaining == 0:
                return


def corpus_files(name_or_path: str | Path) -> list[Path]:
    """The files a corpus name, file, folder or glob stands for, in the order they are joined."""
    spec = str(name_or_path)
    if spec == "pystdlib":
        return pystdlib_files()
    if spec == "shakespeare":
        return [shakespeare_path()]
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*") if p.is_file() and not _is_hidden(p.relative_to(path))),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        if not files:
            raise ValueError(f"corpus folder {path} holds no files")
        return files
    if glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True))
        files = [p for p in files if p.is_file()]
        if not files:
            raise FileNotFoundError(f"no file matches the corpus pattern {spec!r}")
        return files
    raise FileNotFoundError(
        f"corpus {spec!r} is not a file, folder or glob that exists, nor a corpus name "
        f"({', '.join(CORPUS_NAMES)})"
    )


def pystdlib_files() -> list[Path]:
    """The standard library's `*.py` files without its tests, sorted by path relative to it."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in root.rglob("*.py"):
        folders = path.relative_to(root).parts[:-1]
        # "test*" catches test, tests and the test packages of ctypes, tkinter, unittest, ...
        if not any(f.startswith("test") or f in STDLIB_EXCLUDED_DIRS for f in folders):
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def shakespeare_path(local_copy: str | Path | None = None) -> Path:
    """Tiny Shakespeare's `input.txt`, checked by sha256: `local_copy` if given, else the cached copy,
    else the shared data folder's copy, else downloaded into the cache."""
    if local_copy is not None:
        return _verified(Path(local_copy), SHAKESPEARE_SHA256)
    cached = cache_dir() / SHAKESPEARE_RELATIVE_PATH
    if cached.exists():
        return _verified(cached, SHAKESPEARE_SHA256)
    shared = shared_data_dir() / SHAKESPEARE_RELATIVE_PATH
    if shared.exists():
        return _verified(shared, SHAKESPEARE_SHA256)
    how_to_supply = (
        f"put a copy of input.txt at {cached}, or set GPTOSS_SHARED_DATA to a folder holding "
        f"{SHAKESPEARE_RELATIVE_PATH}, or pass the file's path as the corpus"
    )
    return download(SHAKESPEARE_URL, cached, SHAKESPEARE_SHA256, how_to_supply)


def download(url: str, destination: Path, sha256: str, how_to_supply: str) -> Path:
    """Fetch `url` into `destination` atomically, after checking its sha256; returns `destination`."""
    try:
        data = fetch_url(url)
    except (urllib.error.URLError, OSError) as error:
        raise ConnectionError(f"could not download {url} ({error}). No network? {how_to_supply}.") from error
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ChecksumError(
            f"the file downloaded from {url} has sha256 {actual}, expected {sha256}; it was not "
            f"saved. Try again later, or {how_to_supply}"
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    return write_file_atomically(destination, lambda tmp: tmp.write_bytes(data))


def fetch_url(url: str) -> bytes:
    """The body of `url` (tests replace this function, so they never touch the network)."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        return response.read()


def split_train_val(tokens: Sequence, val_fraction: float = 0.1) -> tuple[Sequence, Sequence]:
    """(first 1 - val_fraction, last val_fraction) of `tokens` (any sliceable sequence), like nanoGPT."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    split = int(len(tokens) * (1 - val_fraction))
    return tokens[:split], tokens[split:]


def _iter_file_text(path: Path) -> Iterator[str]:
    """The UTF-8 text of `path` in pieces; invalid bytes raise an error naming the byte offset."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as file:
        while True:
            data = file.read(READ_CHUNK_BYTES)
            pending = len(decoder.getstate()[0])  # bytes of a character split across two reads
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path} is not UTF-8 text: invalid byte {error.object[error.start:error.start + 1]!r} "
                    f"at byte offset {offset - pending + error.start}; convert it to UTF-8 "
                    f"(e.g. iconv -f latin1 -t utf-8) or leave it out of the corpus"
                ) from None
            if text:
                yield text
            if not data:
                return
            offset += len(data)


def _chain_first(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _verified(path: Path, sha256: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(READ_CHUNK_BYTES), b""):
            digest.update(block)
    if digest.hexdigest() != sha256:
        raise ChecksumError(
            f"{path} has sha256 {digest.hexdigest()}, expected {sha256}: it is damaged or a "
            "different file; replace it with the right one (or delete a downloaded copy to fetch it again)"
        )
    return path


# ---------------------------------------------------------------------------------------------
# Preparation: text -> train.bin / val.bin / meta.json / tokenizer, streamed and cached by content


@dataclass
class TokenDataset:
    """A prepared corpus: train and val ids as read-only memmaps, its tokenizer and `meta.json`."""

    directory: Path
    meta: dict
    tokenizer: Tokenizer
    train: np.ndarray
    val: np.ndarray

    @classmethod
    def load(cls, directory: str | Path, tokenizer_files_dir: str | Path | None = None) -> TokenDataset:
        """The dataset that `prepare` wrote into `directory`."""
        directory = Path(directory)
        meta = _read_meta(directory)
        if meta is None:
            raise FileNotFoundError(f"{directory} holds no prepared corpus ({META_FILE} is missing); run prepare")
        tokenizer = load_tokenizer(directory, tokenizer_files_dir)
        if tokenizer.fingerprint != meta["tokenizer"].get("fingerprint"):
            raise ValueError(
                f"the tokenizer saved in {directory} is not the one its tokens were made with (its fingerprint "
                f"differs from {META_FILE}'s): run prepare again"
            )
        return cls(
            directory=directory,
            meta=meta,
            tokenizer=tokenizer,
            train=_load_part(directory, meta, "train"),
            val=_load_part(directory, meta, "val"),
        )


def prepare(
    corpus: str | Path,
    tokenizer: Tokenizer | str,
    out_dir: str | Path,
    val_fraction: float = 0.1,
    *,
    vocab_size: int = 4096,
    tokenizer_files_dir: str | Path | None = None,
    max_chars: int | None = None,
    chunk_chars: int = ENCODE_PIECE_CHARS,
    progress: bool = True,
) -> TokenDataset:
    """Tokenize `corpus` into `out_dir` (train.bin, val.bin, meta.json, tokenizer) and load it.

    `tokenizer` is a built tokenizer, or a kind: `char`/`bpe` are then trained on the whole corpus
    (`vocab_size` for bpe), `gpt2`/`o200k_harmony` read `tokenizer_files_dir` if given. The split
    is by characters, like nanoGPT: the first 1 - val_fraction of the text is train. Memory stays
    bounded: the text is read and encoded in pieces of about `chunk_chars` characters, cut where
    the ids do not change (`tokenizers.next_safe_cut`), so they equal encoding the train and val
    text each at once (unless a stretch of 4 * chunk_chars characters has no safe cut at all, and
    is cut anyway). Nothing is redone when `out_dir` already holds this text prepared with
    this tokenizer.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out_dir = Path(out_dir)
    source = _scan_source(corpus, max_chars)
    request = _tokenizer_request(tokenizer, vocab_size)
    try:
        meta = _read_meta(out_dir)
    except ValueError:
        meta = None  # a damaged meta.json: prepare again, which rewrites it
    if meta is not None and _is_cached(meta, out_dir, source, val_fraction, request):
        try:
            dataset = TokenDataset.load(out_dir, tokenizer_files_dir)
        except (ValueError, FileNotFoundError) as error:  # a damaged or missing tokenizer: prepare again
            if progress:
                print(f"{out_dir}: {error}; preparing it again")
        else:
            if progress:
                print(f"{out_dir}: already prepared from this text with this tokenizer, reusing it")
            return dataset

    if isinstance(tokenizer, str):
        tokenizer = build_tokenizer(
            tokenizer, _TextChunks(corpus, max_chars), vocab_size, tokenizer_files_dir
        )
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    split_char = int(source["chars"] * (1 - val_fraction))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META_FILE).unlink(missing_ok=True)  # the old files are no longer valid from here on

    counts = {}
    temporaries = {name: out_dir / f".{name}.bin.{os.getpid()}.tmp" for name in ("train", "val")}
    with tqdm(total=source["chars"], unit="char", unit_scale=True, desc="tokenizing", disable=not progress) as bar:
        pieces = _safe_pieces(iter_corpus(corpus, max_chars), chunk_chars, split_char)
        files = {name: open(path, "wb") for name, path in temporaries.items()}
        try:
            for part, batch in _batches_by_part(pieces, split_char, batch_chars=4 * chunk_chars):
                for ids in tokenizer.encode_arrays(batch):
                    ids.astype(dtype).tofile(files[part])
                    counts[part] = counts.get(part, 0) + len(ids)
                bar.update(sum(len(text) for text in batch))
            for file in files.values():  # on disk before meta.json says they are complete
                file.flush()
                os.fsync(file.fileno())
        except BaseException:
            for path in temporaries.values():
                path.unlink(missing_ok=True)  # an error or Ctrl-C leaves no half-written files behind
            raise
        finally:
            for file in files.values():
                file.close()
    for name, path in temporaries.items():
        os.replace(path, out_dir / f"{name}.bin")

    tokenizer.save(out_dir)
    meta = {
        "format": META_FORMAT,
        "corpus": str(corpus),
        "source_sha256": source["sha256"],
        "source_chars": source["chars"],
        "source_bytes": source["bytes"],
        "val_fraction": val_fraction,
        "split_char": split_char,
        "tokenizer": {
            "kind": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id,
            "fingerprint": tokenizer.fingerprint,
            "request": request,
        },
        "dtype": np.dtype(dtype).name,
        "train_tokens": counts.get("train", 0),
        "val_tokens": counts.get("val", 0),
        "files": {"train": "train.bin", "val": "val.bin"},
    }
    write_text_atomically(out_dir / META_FILE, json.dumps(meta, indent=1))  # last: its presence means the rest is complete
    return TokenDataset.load(out_dir, tokenizer_files_dir)


def default_prepared_dir(corpus: str | Path, tokenizer: str, vocab_size: int = 4096, max_chars: int | None = None) -> Path:
    """data_cache/CORPUS-TOKENIZER[VOCAB][-Nchars]: where `gptoss prepare` writes by default and
    where `gptoss train` looks, so a corpus prepared once is found by training with the same
    settings (the bpe vocabulary size and a character limit are part of the name)."""
    label = re.sub(r"[^\w.-]+", "_", Path(corpus).name) or "corpus"
    vocab = str(vocab_size) if tokenizer == "bpe" else ""
    limit = f"-{max_chars}chars" if max_chars else ""
    return Path("data_cache") / f"{label}-{tokenizer}{vocab}{limit}"


def load_tokens(path: str | Path) -> np.ndarray:
    """The ids in a `.bin` file written by `prepare`, as a read-only memmap (dtype from meta.json)."""
    path = Path(path)
    meta = _read_meta(path.parent)
    if meta is None:
        raise FileNotFoundError(f"{path.parent / META_FILE} is missing: {path} was not written by prepare")
    part = next((name for name, file in meta["files"].items() if file == path.name), None)
    if part is None:
        raise ValueError(f"{path.name} is not one of the files {META_FILE} lists ({sorted(meta['files'].values())})")
    return _load_part(path.parent, meta, part)


def _load_part(directory: Path, meta: dict, part: str) -> np.ndarray:
    """The `part` ("train" or "val") of a prepared folder whose meta.json is `meta`, checked against
    the size meta.json gives it."""
    path = directory / meta["files"][part]
    dtype = np.dtype(meta["dtype"])
    expected = meta[f"{part}_tokens"] * dtype.itemsize
    if path.stat().st_size != expected:
        raise ValueError(
            f"{path} holds {path.stat().st_size:,} bytes, but {META_FILE} says {expected:,}: the file is "
            "truncated or was replaced; run prepare again"
        )
    if expected == 0:  # mmap cannot map an empty file
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class _TextChunks:
    """The corpus's text in pieces cut at safe cuts, re-readable: tokenizer training iterates it
    without holding the text, and counts the same words as in the whole text."""

    def __init__(self, corpus: str | Path, max_chars: int | None):
        self.corpus, self.max_chars = corpus, max_chars

    def __iter__(self) -> Iterator[str]:
        return _safe_pieces(iter_corpus(self.corpus, self.max_chars), ENCODE_PIECE_CHARS)


def _scan_source(corpus: str | Path, max_chars: int | None) -> dict:
    """sha256 and size of the corpus text: the cache key, read once before any tokenizing."""
    digest, chars, size = hashlib.sha256(), 0, 0
    for piece in iter_corpus(corpus, max_chars):
        data = piece.encode("utf-8")
        digest.update(data)
        chars += len(piece)
        size += len(data)
    if chars == 0:
        raise ValueError(f"corpus {str(corpus)!r} is empty: there is no text to prepare")
    return {"sha256": digest.hexdigest(), "chars": chars, "bytes": size}


def _tokenizer_request(tokenizer: Tokenizer | str, vocab_size: int) -> dict:
    """What the caller asked for: a built tokenizer's fingerprint, or a kind to build."""
    if isinstance(tokenizer, Tokenizer):
        return {"fingerprint": tokenizer.fingerprint}
    if tokenizer not in KINDS:
        raise ValueError(f"unknown tokenizer kind {tokenizer!r}; choose one of {', '.join(KINDS)}")
    return {"kind": tokenizer, "vocab_size": vocab_size if tokenizer == "bpe" else None}


def _is_cached(meta: dict, directory: Path, source: dict, val_fraction: float, request: dict) -> bool:
    """Whether `directory` already holds this text prepared with this tokenizer, complete."""
    if meta["format"] != META_FORMAT or meta["source_sha256"] != source["sha256"]:
        return False
    if meta["val_fraction"] != val_fraction:
        return False
    if request not in (meta["tokenizer"].get("request"), {"fingerprint": meta["tokenizer"].get("fingerprint")}):
        return False
    itemsize = np.dtype(meta["dtype"]).itemsize
    for part in ("train", "val"):
        path = directory / meta["files"][part]
        if not path.is_file() or path.stat().st_size != meta[f"{part}_tokens"] * itemsize:
            return False
    return True


def _read_meta(directory: Path) -> dict | None:
    """meta.json of a prepared folder, or None when there is none; ValueError when it is damaged."""
    path = directory / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        missing = {"format", "source_sha256", "val_fraction", "dtype", "files", "train_tokens", "val_tokens", "tokenizer"} - set(meta)
    except (ValueError, TypeError) as error:
        missing, meta = {f"valid JSON ({error})"}, None
    if missing:
        raise ValueError(f"{path} is damaged or not written by prepare (no {', '.join(sorted(missing))}); run prepare again")
    return meta


def _safe_pieces(texts: Iterator[str], chunk_chars: int, split_char: int | None = None) -> Iterator[str]:
    """Re-cut `texts` into pieces of `chunk_chars` and a bit, at cuts that leave the ids unchanged
    (see `next_safe_cut`), and at `split_char`, the train/val boundary. Text with no safe cut for
    4 * chunk_chars is cut anyway, to bound memory (the ids may then differ at that one cut)."""
    buffer, emitted = "", 0
    for text in texts:
        buffer += text
        while True:
            if split_char is not None and emitted < split_char <= emitted + len(buffer):
                cut = split_char - emitted
            elif len(buffer) >= chunk_chars:
                cut = next_safe_cut(buffer, chunk_chars)
                if cut < 0:  # none yet: wait for more text, up to a bound
                    cut = len(buffer) if len(buffer) >= 4 * chunk_chars else 0
            else:
                cut = 0
            if cut == 0:
                break
            yield buffer[:cut]
            emitted += cut
            buffer = buffer[cut:]
    if buffer:
        yield buffer


def _batches_by_part(pieces: Iterator[str], split_char: int, batch_chars: int):
    """(part, pieces) with part "train" or "val": pieces grouped so a batch encoder can run them in
    parallel, never mixing the two parts."""
    batch, batch_size, emitted = [], 0, 0
    part = "train" if split_char > 0 else "val"
    for piece in pieces:
        piece_part = "train" if emitted < split_char else "val"
        if batch and (piece_part != part or batch_size >= batch_chars):
            yield part, batch
            batch, batch_size = [], 0
        part = piece_part
        batch.append(piece)
        batch_size += len(piece)
        emitted += len(piece)
    if batch:
        yield part, batch


# ---------------------------------------------------------------------------------------------
# Batching


def random_batch(
    tokens: np.ndarray | torch.Tensor,
    batch_size: int,
    seq_len: int,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` windows at random starts: inputs x and targets y = x shifted by one, int64."""
    tokens = _as_array(tokens)
    _check_length(tokens, seq_len, batch_size)
    starts = torch.randint(len(tokens) - seq_len, (batch_size,), generator=generator).tolist()
    return _windows(tokens, starts, seq_len, device)


def epoch_batches(
    tokens: np.ndarray | torch.Tensor,
    batch_size: int,
    seq_len: int,
    shuffle: bool = True,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch: every non-overlapping window exactly once (in an order fixed by `seed` when
    shuffled), as (x, y) batches; the last batch may be smaller. Pass seed + epoch for new orders."""
    tokens = _as_array(tokens)
    _check_length(tokens, seq_len, batch_size)
    count = (len(tokens) - 1) // seq_len  # windows of seq_len + 1 tokens, overlapping by one
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(count)
    for first in range(0, count, batch_size):
        starts = (order[first : first + batch_size] * seq_len).tolist()
        yield _windows(tokens, starts, seq_len, device)


def _as_array(tokens: np.ndarray | torch.Tensor | Sequence[int]) -> np.ndarray:
    if isinstance(tokens, torch.Tensor):
        return tokens.cpu().numpy()
    return np.asarray(tokens)  # a memmap stays a view of the file: nothing is read yet


def _check_length(tokens: np.ndarray, seq_len: int, batch_size: int) -> None:
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if len(tokens) < seq_len + 1:
        raise ValueError(
            f"only {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1} needed for one "
            "(input, target) window: use a shorter seq_len or more text"
        )


def _windows(tokens: np.ndarray, starts: list[int], seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    windows = np.stack([tokens[start : start + seq_len + 1] for start in starts]).astype(np.int64)
    x = torch.from_numpy(np.ascontiguousarray(windows[:, :-1]))
    y = torch.from_numpy(np.ascontiguousarray(windows[:, 1:]))
    return (x.to(device), y.to(device)) if device is not None else (x, y)


# ---------------------------------------------------------------------------------------------
# Command line


def register_cli(subparsers) -> None:
    """Add the `prepare` verb: `gptoss prepare --corpus shakespeare --tokenizer bpe --out DIR`."""
    parser = subparsers.add_parser(
        "prepare",
        help="tokenize a corpus once into train.bin / val.bin for training",
        description="Tokenize a corpus into train.bin, val.bin and meta.json (plus its tokenizer); "
        "cached by content, so running it again on the same text is instant.",
    )
    parser.add_argument("--corpus", default="pystdlib", help="pystdlib, shakespeare, or a file, folder or glob of UTF-8 text (default: pystdlib)")
    parser.add_argument("--tokenizer", default="bpe", choices=KINDS, help="tokenizer kind (default: bpe)")
    parser.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size of a bpe tokenizer (default: 4096)")
    parser.add_argument("--out", type=Path, help="output folder (default: data_cache/CORPUS-TOKENIZER, plus the bpe vocabulary size and -Nchars "
                        "with --max-chars: the folder gptoss train looks in for the same settings)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="last fraction of the text kept for validation (default: 0.1)")
    parser.add_argument("--max-chars", type=int, help="use only the first MAX_CHARS characters of the corpus")
    parser.add_argument("--tokenizer-files", type=Path, help="folder with OpenAI's tokenizer files, for offline gpt2 / o200k_harmony")
    parser.set_defaults(func=_run_prepare)


def _run_prepare(args) -> int:
    out = args.out or default_prepared_dir(args.corpus, args.tokenizer, args.vocab_size, args.max_chars)
    dataset = prepare(
        args.corpus,
        args.tokenizer,
        out,
        args.val_fraction,
        vocab_size=args.vocab_size,
        tokenizer_files_dir=args.tokenizer_files,
        max_chars=args.max_chars,
    )
    meta = dataset.meta
    tokens = meta["train_tokens"] + meta["val_tokens"]
    print(
        f"{out}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens ({meta['dtype']}), "
        f"{meta['source_chars'] / tokens:.2f} characters per token, {meta['tokenizer']['kind']} "
        f"tokenizer with {meta['tokenizer']['vocab_size']:,} ids"
    )
    return 0

