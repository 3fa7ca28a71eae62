"""Progress bars for long CLI operations (ingest, reach --check, demo).

Bars go to stderr and only when stderr is a terminal (and TERM is not "dumb", and
HERALD_NO_PROGRESS is unset): pipes, files and CI logs get no bar, so stdout stays clean output
and errors on stderr stay plain lines. Built on click.progressbar.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import click

BAR_WIDTH = 30


def shows_progress(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    try:
        interactive = stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        return False
    return interactive and os.environ.get("TERM") != "dumb" and not os.environ.get("HERALD_NO_PROGRESS")


class Progress:
    """A bar that appears on the first update and can step aside for a line of output.

    `set(position)` moves it to an absolute position; `advance()` by one step; `pause()` ends the
    current line so that other output starts on a clean line (the next update draws a new bar).
    Disabled, every method does nothing.
    """

    def __init__(self, length: int, label: str, *, stream: TextIO | None = None, enabled: bool | None = None,
                 show: Callable[[Any], str | None] | None = None) -> None:
        self.length = max(1, length)
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = shows_progress(self.stream) if enabled is None else enabled
        self.show = show
        self.position = 0
        self._bar: Any = None

    def _open(self) -> Any:
        if self._bar is None:
            self._bar = click.progressbar(length=self.length, label=self.label, file=self.stream,
                                          width=BAR_WIDTH, show_pos=self.show is None, show_percent=True, show_eta=False,
                                          item_show_func=self.show)
            self._bar.__enter__()
            if self.position:
                self._bar.update(self.position)
        return self._bar

    def set(self, position: int, item: Any = None) -> None:
        position = min(max(position, self.position), self.length)
        if self.enabled:
            self._open().update(position - self.position, item)
        self.position = position

    def advance(self, steps: int = 1, item: Any = None) -> None:
        self.set(self.position + steps, item)

    def pause(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def finish(self) -> None:
        """Complete the bar on screen, if one is showing (a paused bar stays put: output followed it)."""
        if self._bar is not None:
            self.set(self.length)
        self.pause()


@contextmanager
def progress_bar(length: int, label: str, *, stream: TextIO | None = None, enabled: bool | None = None,
                 show: Callable[[Any], str | None] | None = None) -> Iterator[Progress]:
    """A Progress that completes when the block ends normally (and just ends its line on errors)."""
    bar = Progress(length, label, stream=stream, enabled=enabled, show=show)
    try:
        yield bar
    except BaseException:
        bar.pause()
        raise
    bar.finish()


def count_lines(path: Path, chunk_size: int = 1 << 20) -> int:
    """Lines in a file (a last line without a newline counts), read in binary chunks."""
    lines = 0
    last = b"\n"
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")
