"""Progress bars on stderr (tqdm), off when not asked for or when stderr is not a terminal."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress(iterable, desc: str = "", unit: str = "it", disable: bool = False, total=None):
    return tqdm(iterable, desc=desc, unit=unit, total=total, leave=False, file=sys.stderr,
                disable=disable or not sys.stderr.isatty())
