"""Progress for people, lines for logs.

On a terminal a long loop draws a tqdm bar. Written to a file (cron's `distill nightly >> log`), a
bar's frames would all land on one line (one nightly once left a 90,840-character line), so there a
loop prints a line when it starts, one every `every_s` seconds ($DISTILL_PROGRESS_EVERY_S, default
120) and one when it ends, each with its figures:

    training: 0/37 steps
    training: 12/37 steps (32%) in 2m 01s, loss 1.032
    training: 37/37 steps (100%) in 6m 14s, loss 0.241

    >>> import io
    >>> bar = Progress(3, "checking", "item", stream=io.StringIO(), every_s=0)
    >>> for _ in range(3): bar.update()
    >>> bar.close()
    >>> bar.stream.getvalue().splitlines()[-1].split(" in ")[0]
    'checking: 3/3 items (100%)'
"""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

EVERY_ENV = "DISTILL_PROGRESS_EVERY_S"
T = TypeVar("T")


def on_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


BAR_VARIABLES = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")  # read when each is imported
LOADED_BARS = {"huggingface_hub": ("huggingface_hub.utils", "disable_progress_bars"),  # and how to stop one loaded
               "datasets": ("datasets", "disable_progress_bars"),
               "transformers": ("transformers.utils.logging", "disable_progress_bar")}


def quiet_library_bars(stream: TextIO | None = None) -> None:
    """Off a terminal, stop the bars transformers, datasets and huggingface_hub draw themselves
    (loading weights, saving a dataset, writing shards): in a log each is one long line of frames."""
    if on_terminal(stream):
        return
    import importlib

    for variable in BAR_VARIABLES:  # transformers follows huggingface_hub's
        os.environ.setdefault(variable, "1")
    for library, (module, stop) in LOADED_BARS.items():
        if library in sys.modules:
            getattr(importlib.import_module(module), stop)()


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


class Progress:
    """A tqdm bar on a terminal, a line every `every_s` seconds elsewhere; `disable` shows nothing."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int = 0, disable: bool = False,
                 stream: TextIO | None = None, every_s: float | None = None):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.stream = stream or sys.stderr
        self.every_s = float(os.environ.get(EVERY_ENV, 120)) if every_s is None else every_s
        self.figures: dict[str, str] = {}
        self.bar = None
        self.disabled = disable
        self.started = self.last_line = time.monotonic()
        if disable:
            return
        if on_terminal(self.stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream)
        else:
            self._line()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif not self.disabled and time.monotonic() - self.last_line >= self.every_s:
            self._line()

    def set_figures(self, **figures) -> None:
        """Figures shown beside the count, e.g. set_figures(loss="0.412")."""
        self.figures.update({k: str(v) for k, v in figures.items()})
        if self.bar is not None:
            self.bar.set_postfix(self.figures)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif not self.disabled:
            self._line()
        self.disabled = True

    def _line(self) -> None:
        self.last_line = time.monotonic()
        units = self.unit + ("" if self.unit.endswith("s") else "s")
        text = f"{self.desc}: {self.n}/{self.total} {units}" if self.total else f"{self.desc}: {self.n} {units}"
        if self.total and self.n:
            text += f" ({self.n / self.total:.0%}) in {_duration(self.last_line - self.started)}"
        if self.figures:
            text += ", " + ", ".join(f"{k} {v}" for k, v in self.figures.items())
        print(text, file=self.stream, flush=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(items: Iterable[T], desc: str, unit: str, total: int | None = None, disable: bool = False) -> Iterator[T]:
    """Iterate `items` with a `Progress` (a bar on a terminal, lines in a log)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit, disable=disable) as bar:
        for item in items:
            yield item
            bar.update()
