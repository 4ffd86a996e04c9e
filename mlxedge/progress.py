"""Progress on stderr: a tqdm bar when stderr is a terminal, else one line when a stage starts and
one when it ends (logs, CI, pipes: no carriage-return bars); nothing when disabled.

    convert: 272 tensors ...
    convert: 272 tensors done in 12.3 s

A bar stays on screen when its loop ends (tqdm's leave=True), so that the seconds of work after a
loop (convert hashing its source and writing config, tokenizer and mlxedge.json) never run with no
progress shown; `stage(desc)` shows such work as a stage of its own.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator, Optional

from tqdm import tqdm


def progress(iterable=None, desc: str = "", unit: str = "it", disable: bool = False, total=None):
    """tqdm over `iterable` (or a bar to `update()` by hand when it is None) on a terminal, two
    lines otherwise; the same calls (iteration, update, close, `with`) work on both."""
    if disable or sys.stderr.isatty():
        return tqdm(iterable, desc=desc, unit=unit, total=total, leave=True, file=sys.stderr, disable=disable)
    return Lines(iterable, desc, unit, total)


@contextmanager
def stage(desc: str, disable: bool = False) -> Iterator[None]:
    """Work with no count of its own: `desc ...` when it starts, `desc done in S s` when it ends.
    Nothing more is printed for work that fails (its error says so)."""
    if disable:
        yield
        return
    with Lines(None, desc, "s", None):  # lines on a terminal too: a bar with no count shows nothing
        yield


class Lines:
    """The part of tqdm's interface mlxedge uses, written as a start line and a done line."""

    def __init__(self, iterable, desc: str, unit: str, total: Optional[int]):
        self.iterable, self.desc, self.unit = iterable, desc, unit
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.closed = total, 0, False
        self.start = time.monotonic()
        amount = f" {self._amount(total)}" if total is not None else ""
        _say(f"{desc}:{amount} ..." if amount else f"{desc} ...")

    def _amount(self, n: int) -> str:
        if self.unit == "B":
            for size, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
                if n >= size:
                    return f"{n / size:.1f} {name}"
            return f"{n} B"
        return f"{n} {self.unit}" + ("s" if n != 1 and self.unit != "s" else "")

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.n += 1
        self.close()  # only a loop that ran to its end is done

    def __len__(self) -> int:
        return self.total or 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        elapsed = time.monotonic() - self.start
        if self.unit == "s":  # a stage: no count
            _say(f"{self.desc} done in {elapsed:.1f} s")
        else:
            _say(f"{self.desc}: {self._amount(self.n)} done in {elapsed:.1f} s")

    def __enter__(self) -> "Lines":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.closed = True  # failed: the error says so, not a done line


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
