"""Progress bars for long work: rich on stderr when asked for, silent otherwise.

The library never prints on its own; callers (the CLI) pass ``show_progress=True``.
"""

from __future__ import annotations


class Progress:
    """A rich progress bar on stderr when asked for, nothing otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bar = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            from rich.console import Console

            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=False)
            self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None

    def add(self, description: str, total: int):
        return self._bar.add_task(description, total=total) if self._bar else None

    def advance(self, task, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(task, steps)

    def describe(self, task, description: str) -> None:
        if self._bar is not None:
            self._bar.update(task, description=description)
