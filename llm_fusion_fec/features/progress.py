"""Progress of the long computations (extraction, `--choose`'s sweep): tqdm's bar on a terminal; where stderr is no
terminal (a log file: `nohup fec extract ... > log 2>&1`), a line every `PROGRESS_INTERVAL` seconds saying where the
work is, how much of it is done, how fast it goes and how long it has left. tqdm alone would write nothing there.

    llama, llama_window: train shard 3/12, 2304/12000 texts (19%), 41.7 texts/s, ETA 0:03:52
"""

from __future__ import annotations

import datetime
import sys
import time

PROGRESS_INTERVAL = 10.0
"""Seconds between two progress lines where stderr is no terminal (0: a line at every step)."""


def progress_bar(total: int, desc: str, unit: str = "text"):
    """The progress of `total` steps of `unit` named `desc`: a tqdm bar where stderr is a terminal, else
    `ProgressLines`. Either is a context manager with `update(n)` and `set_postfix_str(where)`."""
    if getattr(sys.stderr, "isatty", None) and sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit)
    return ProgressLines(total, desc, unit)


class ProgressLines:
    """Progress as lines on stderr, one every `PROGRESS_INTERVAL` seconds of work and a last one when done (where any
    was written): what a log file shows in place of a bar.

    Args:
        total (`int`): The steps to do.
        desc (`str`): What is computed, the start of each line.
        unit (`str`, *optional*, defaults to `"text"`): What a step is.
    """

    def __init__(self, total: int, desc: str, unit: str = "text"):
        self.total, self.desc, self.unit = total, desc, unit
        self.n, self.where, self.lines = 0, "", 0
        self.start = self.last = time.monotonic()

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *error) -> None:
        if self.lines and error[0] is None:
            self.where = f"done in {datetime.timedelta(seconds=round(time.monotonic() - self.start))}"
            self.write()

    def set_postfix_str(self, where: str = "", refresh: bool = True) -> None:
        """Where the work is (e.g. `train shard 3/12`), said by the next line."""
        self.where = where

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= PROGRESS_INTERVAL:
            self.write()

    def write(self) -> None:
        self.last, self.lines = time.monotonic(), self.lines + 1
        sys.stderr.write(self.line(self.last - self.start) + "\n")  # where tqdm's bar would go
        sys.stderr.flush()

    def line(self, elapsed: float) -> str:
        """The progress after `elapsed` seconds in one line: where, done of total, speed, time left."""
        rate = self.n / elapsed if elapsed > 0 else 0.0
        left = datetime.timedelta(seconds=round((self.total - self.n) / rate)) if rate > 0 else "?"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        where = f" {self.where}," if self.where else ""
        return f"{self.desc}:{where} {self.n}/{self.total} {self.unit}s{share}, {rate:.1f} {self.unit}s/s, ETA {left}"
