"""Progress of long stages: a bar on a terminal, periodic lines in a log file.

Snakemake sends each job's output to a log file, where a progress bar's carriage-return redraws pile
up into one unreadable line. Every long stage (synthetic data, pretraining, training, masks, mask
projection, inference, scoring) therefore reports through :class:`Progress`: a tqdm bar when stderr
is a terminal, otherwise a line per :data:`REPORT_FRACTION` of the work (at most one per
:data:`QUIET_SECONDS`) and at least one per :data:`REPORT_SECONDS`, with the rate and the estimated
time left, between a first and a last line::

    infer results/cache/tiny-vit/demo/ft.zarr: 0/800 images
    infer results/cache/tiny-vit/demo/ft.zarr: 80/800 images (10%), 7.3 images/s, elapsed 0:00:11, left 0:01:39
    ...
    infer results/cache/tiny-vit/demo/ft.zarr: done, 800 images in 0:01:49 (7.34 images/s)

:class:`DaskProgress` reports a Dask computation (the scoring and projection stages) the same way.
"""

from __future__ import annotations

import datetime
import math
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TextIO, TypeVar

from dask.callbacks import Callback
from tqdm import tqdm

#: In a log file, a line whenever this much more of the work is done ...
REPORT_FRACTION = 0.1
#: ... unless the last line is more recent than this (a job of seconds logs its start and end only) ...
QUIET_SECONDS = 5.0
#: ... and a line whenever this many seconds have passed since the last one.
REPORT_SECONDS = 60.0

Item = TypeVar("Item")


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


class Progress:
    """Counts work done and reports it (see the module docstring); use as a context manager.

    Args:
        total: units of work expected, or None when unknown (no percentage or time left then).
        description: what is being done, the start of every line.
        unit: the unit of work, plural (``batches``, ``images``, ``tasks``).
        stream: where to report (default: stderr).
        terminal: draw a tqdm bar (default: when ``stream`` is a terminal).
        clock: seconds from a monotonic clock (tests pass a fake one).
        enabled: report at all (False: every method does nothing, e.g. on DDP ranks other than 0).
    """

    def __init__(self, total: int | None, description: str, unit: str = "items", *, stream: TextIO | None = None,
                 terminal: bool | None = None, clock: Callable[[], float] = time.monotonic,
                 enabled: bool = True) -> None:
        self.total, self.description, self.unit, self.enabled = total, description, unit, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self._clock = clock
        self._start = self._last_time = clock()
        self._last_done = 0
        self._bar = None
        if not enabled:
            return
        if self.stream.isatty() if terminal is None else terminal:
            self._bar = tqdm(total=total, desc=description, unit=f" {unit}", file=self.stream, leave=False)
        else:
            self._line(f"{self.done}/{total} {unit}" if total is not None else f"started ({unit})")

    def _line(self, text: str) -> None:
        print(f"{self.description}: {text}", file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done; in a log file, write a line if one is due."""
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self._clock()
        since = now - self._last_time
        step_done = bool(self.total) and self.done - self._last_done >= REPORT_FRACTION * self.total
        if (step_done and since >= QUIET_SECONDS) or since >= REPORT_SECONDS:
            self._last_done, self._last_time = self.done, now
            if self.done != self.total:  # the last one is reported by close()
                self._line(self._status(now))

    def _status(self, now: float) -> str:
        elapsed = now - self._start
        rate = self.done / elapsed if elapsed > 0 else float("nan")
        if self.total is None:
            return f"{self.done} {self.unit}, {rate:.3g} {self.unit}/s, elapsed {_duration(elapsed)}"
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        return (f"{self.done}/{self.total} {self.unit} ({self.done / self.total:.0%}), {rate:.3g} {self.unit}/s, "
                f"elapsed {_duration(elapsed)}, left {_duration(left) if math.isfinite(left) else '?'}")

    def write(self, message: str) -> None:
        """A line of its own (e.g. an epoch's loss) that does not break the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self, completed: bool = True) -> None:
        """Stop reporting: a last line with the totals (``completed``), or where the work stopped."""
        if not self.enabled:
            return
        self.enabled = False  # closed: nothing more to report
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            return
        elapsed = self._clock() - self._start
        if completed:
            rate = f" ({self.done / elapsed:.3g} {self.unit}/s)" if elapsed > 0 else ""
            self._line(f"done, {self.done} {self.unit} in {_duration(elapsed)}{rate}")
        else:
            self._line(f"stopped after {self.done}" + (f"/{self.total}" if self.total is not None else "")
                       + f" {self.unit}, elapsed {_duration(elapsed)}")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        self.close(completed=kind is None)


def track(items: Iterable[Item], description: str, unit: str = "items", total: int | None = None,
          **options: Any) -> Iterator[Item]:
    """Yield ``items`` while reporting their :class:`Progress` (``total`` defaults to ``len(items)``).

    ``options`` are :class:`Progress`'s keyword arguments.
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, description, unit, **options) as progress:
        for item in items:
            yield item
            progress.update()


class DaskProgress(Callback):
    """Reports the tasks of every Dask computation run under it (local schedulers) as :class:`Progress`.

    Args:
        description: the start of every line.
        **options: :class:`Progress`'s keyword arguments.
    """

    def __init__(self, description: str, **options: Any) -> None:
        super().__init__()
        self.description = description
        self.options = options
        self._progress: Progress | None = None

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        total = sum(len(state[key]) for key in ("ready", "waiting", "running", "finished"))
        self._progress = Progress(total, self.description, "tasks", **self.options)
        self._progress.update(len(state["finished"]))

    def _posttask(self, key: Any, result: Any, dsk: Any, state: dict[str, Any], worker_id: Any) -> None:
        if self._progress is not None:
            self._progress.update()

    def _finish(self, dsk: Any, state: dict[str, Any], errored: bool) -> None:
        if self._progress is not None:
            self._progress.close(completed=not errored)
            self._progress = None
