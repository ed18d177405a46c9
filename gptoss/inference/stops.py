"""Stop strings: which generated tokens may be shown while a stop string could still be forming.

A token is released once its text lies wholly before the first stop string, and before any tail of
the text that could still grow into one; text that ends in an unfinished multi-byte character is
held back too (its decoder shows U+FFFD until the character is complete).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gptoss.util.checks import is_int

REPLACEMENT_CHARACTER = "\ufffd"  # what a decoder shows for the first bytes of an unfinished character


def scan_for_stop(text: str, stop_strings: Sequence[str]) -> tuple[int, bool]:
    """(how many leading characters of `text` are safe to show, whether a stop string occurs).

    Safe means before the first stop string, and before a tail that could still grow into one
    (text ending in "<|e" while "<|end|>" is a stop string): that tail is held back until the next
    tokens tell.
    """
    hits = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    if hits:
        return min(hits), True
    held = max((k for s in stop_strings for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return len(text) - held, False


def settled_tokens(tokenizer, tokens: Sequence[int], safe_text: str) -> int:
    """The most leading `tokens` whose text lies wholly inside `safe_text`, the start of their
    decoded text. A token that ends mid-character decodes to U+FFFD on its own, so it settles
    together with the token that finishes the character: every prefix is tried, not only up to the
    first that fails."""
    settled = 0
    for count in range(1, len(tokens) + 1):
        text = tokenizer.decode(tokens[:count])
        if len(text) > len(safe_text) + 1:  # past it (+1: an unfinished character shows as one U+FFFD)
            break
        if safe_text.startswith(text):
            settled = count
    return settled


class StopStringWatcher:
    """Per sequence: which generated tokens may be emitted, given stop strings on the decoded text.

    A token is released once its text lies wholly in the safe part of the continuation (see
    scan_for_stop). When a stop string appears, generation of this sequence ends; the tokens whose
    text reaches into the stop string are never released.

    Released text can never be where a stop string starts (it is neither one nor the start of one
    that the next text could complete), so only the pending tokens are decoded at each step: the
    work per token stays small however long the generation.
    """

    def __init__(self, tokenizer, stop_strings: Sequence[str]):
        self.tokenizer, self.stop_strings = tokenizer, stop_strings
        self.pending: list[int] = []  # generated tokens not released yet
        self.stopped = False

    def push(self, token: int) -> list[int]:
        """Add one generated token; return the tokens that became safe to emit."""
        self.pending.append(token)
        text = self.tokenizer.decode(self.pending)
        # an unfinished character at the end (decoded as U+FFFD for now) may complete a stop string,
        # or begin one: scan the text before it, so that a stop string's start is held back there too
        safe, self.stopped = scan_for_stop(text.rstrip(REPLACEMENT_CHARACTER), self.stop_strings)
        released = settled_tokens(self.tokenizer, self.pending, text[:safe])
        out, self.pending = self.pending[:released], self.pending[released:]
        return out

    def flush(self) -> list[int]:
        """Release every held token: generation ended without completing a stop string."""
        out, self.pending = self.pending, []
        return out


def check_stops(stop_token_ids: Iterable[int], stop_strings: Sequence[str], tokenizer, vocab_size: int) -> set[int]:
    """Validate the stop options; returns the stop ids as a set."""
    stop_ids = set(stop_token_ids)
    bad = [i for i in stop_ids if not is_int(i) or not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"stop_token_ids must be ids in [0, {vocab_size}), got {bad}")
    if isinstance(stop_strings, str):
        raise TypeError("stop_strings must be a list of strings, e.g. ['\\n\\n'], not one string")
    if any(not isinstance(s, str) or not s for s in stop_strings):
        raise ValueError(f"stop_strings must be non-empty strings, got {list(stop_strings)!r}")
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need the tokenizer (tokenizer=...) to decode the generated tokens")
    return stop_ids
