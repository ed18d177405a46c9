"""Data: tokenizers, corpora, their preparation into token files, and batches of windows.

    tokenizers   text <-> ids: char, bpe (trained here), gpt2 and o200k_harmony (tiktoken)
    corpora      text by name (pystdlib, shakespeare) or from files, folders and globs
    token_files  a corpus tokenized once into train.bin / val.bin, cached by content
    batches      (input, target) windows: random batches and epochs; the train/val split
"""

from gptoss.data.batches import epoch_batches, random_batch, split_train_val
from gptoss.data.corpora import load_corpus
from gptoss.data.token_files import TokenDataset, prepare
from gptoss.data.tokenizers import build_tokenizer, load_tokenizer

__all__ = ["TokenDataset", "build_tokenizer", "epoch_batches", "load_corpus", "load_tokenizer", "prepare", "random_batch",
           "split_train_val"]  # fmt: skip
