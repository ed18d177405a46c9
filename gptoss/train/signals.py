"""Stopping a run cleanly: SIGINT (Ctrl-C) and SIGTERM ask the trainer to save and stop."""

from __future__ import annotations

import contextlib
import signal


class StopSignals:
    """Within `with`, SIGINT and SIGTERM set `received` instead of killing the process, so the
    trainer can save a checkpoint and exit cleanly; a second signal stops at once."""

    def __init__(self):
        self.received: str | None = None
        self.previous = {}

    def handle(self, number, frame) -> None:
        """The signal handler: remember the first signal, give up on the second."""
        if self.received is not None:  # the user insists
            raise KeyboardInterrupt
        self.received = signal.Signals(number).name

    def __enter__(self) -> StopSignals:
        with contextlib.suppress(ValueError):  # only the main thread may install handlers
            for number in (signal.SIGINT, signal.SIGTERM):
                self.previous[number] = signal.signal(number, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
