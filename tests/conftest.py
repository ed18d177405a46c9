"""Shared test fixtures.

Tests that need the real data in ../shared/data use `shared_data`. When GPTOSS_SHARED_DATA is set
(.ci/run sets it) a missing file fails the test; without it, the test is skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent

# Tests run two at a time (pytest -n 2) on a 2-core machine: one thread each avoids oversubscription.
torch.set_num_threads(1)


def shared_data_path(relative: str) -> Path:
    """Path of a file under the shared data folder; fails or skips (see module doc) when missing."""
    return _required(_data_root() / relative)


def seed_document() -> Path:
    """The seed document, ../shared/docs/SEED.md (beside the shared data folder)."""
    return _required(_data_root().parent / "docs" / "SEED.md")


def _data_root() -> Path:
    """GPTOSS_SHARED_DATA (relative to the repository when not absolute), else ../shared/data."""
    configured = os.environ.get("GPTOSS_SHARED_DATA")
    root = Path(configured) if configured else REPO_ROOT.parent / "shared" / "data"
    return root if root.is_absolute() else REPO_ROOT / root


def _required(path: Path) -> Path:
    if not path.exists():
        message = f"shared data file {path} is missing"
        if os.environ.get("GPTOSS_SHARED_DATA"):
            pytest.fail(message + " (GPTOSS_SHARED_DATA is set, so it is required)")
        pytest.skip(message)
    return path


@pytest.fixture
def shakespeare_text() -> str:
    """The Tiny Shakespeare corpus."""
    return shared_data_path("tinyshakespeare/input.txt").read_text(encoding="utf-8")


@pytest.fixture
def tokenizer_dir() -> Path:
    """The folder with OpenAI's tokenizer files (vocab.bpe, encoder.json, o200k_base.tiktoken)."""
    return shared_data_path("tokenizers/o200k_base.tiktoken").parent
