"""Preparation: a corpus tokenized once, streaming, into token files, cached by content.

`prepare(corpus, tokenizer, out_dir)` writes `train.bin` and `val.bin` (flat uint16 ids, uint32 when
the vocabulary needs it), `meta.json` and the tokenizer. A second call with the same text and
tokenizer reads nothing but the text. `TokenDataset` / `load_tokens(path)` open the files as
read-only `numpy.memmap`s, so a corpus larger than RAM trains.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gptoss.data.corpora import iter_corpus
from gptoss.data.tokenizers import ENCODE_PIECE_CHARS, KINDS, Tokenizer, build_tokenizer, load_tokenizer, next_safe_cut
from gptoss.util.files import write_text_atomically

META_FILE = "meta.json"
META_FORMAT = 1


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
