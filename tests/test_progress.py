"""Progress in log files: periodic lines with rate and time left, never carriage-return redraws."""

from __future__ import annotations

import io

import dask.array as da
import numpy as np
import pytest

from rationality.progress import QUIET_SECONDS, REPORT_SECONDS, DaskProgress, Progress, track


class FakeClock:
    """A monotonic clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(stream: io.StringIO) -> list[str]:
    text = stream.getvalue()
    assert "\r" not in text
    return text.splitlines()


def test_a_line_per_tenth_of_the_work_with_rate_and_time_left() -> None:
    stream, clock = io.StringIO(), FakeClock()
    with Progress(100, "infer x", "batches", stream=stream, terminal=False, clock=clock) as progress:
        for _ in range(100):
            clock.now += 0.5  # 2 batches/s: a tenth takes 5 s, just enough to be reported
            progress.update()
    assert lines(stream) == [
        "infer x: 0/100 batches",
        *(f"infer x: {k}/100 batches ({k}%), 2 batches/s, elapsed 0:00:{k // 2:02d}, left 0:{(100 - k) // 120:02d}:"
          f"{(100 - k) // 2 % 60:02d}" for k in range(10, 100, 10)),
        "infer x: done, 100 batches in 0:00:50 (2 batches/s)",
    ]


def test_short_jobs_log_their_start_and_end_only() -> None:
    stream, clock = io.StringIO(), FakeClock()
    for item in track(range(30), "masks demo", "images", stream=stream, terminal=False, clock=clock):
        clock.now += (QUIET_SECONDS - 0.1) / 30
    assert lines(stream) == ["masks demo: 0/30 images", "masks demo: done, 30 images in 0:00:05 (6.12 images/s)"]


def test_slow_work_is_reported_every_minute() -> None:
    stream, clock = io.StringIO(), FakeClock()
    progress = Progress(1000, "train", "batches", stream=stream, terminal=False, clock=clock)
    for _ in range(3):
        clock.now += REPORT_SECONDS
        progress.update()
    progress.close(completed=False)
    assert lines(stream) == ["train: 0/1000 batches",
                             "train: 1/1000 batches (0%), 0.0167 batches/s, elapsed 0:01:00, left 16:39:00",
                             "train: 2/1000 batches (0%), 0.0167 batches/s, elapsed 0:02:00, left 16:38:00",
                             "train: 3/1000 batches (0%), 0.0167 batches/s, elapsed 0:03:00, left 16:37:00",
                             "train: stopped after 3/1000 batches, elapsed 0:03:00"]


def test_unknown_total_and_interleaved_messages() -> None:
    stream, clock = io.StringIO(), FakeClock()
    with Progress(None, "pretrain", "batches", stream=stream, terminal=False, clock=clock) as progress:
        clock.now += REPORT_SECONDS
        progress.update(4)
        progress.write("pretrain epoch 1/1: loss 0.5, accuracy 0.75")
    assert lines(stream) == ["pretrain: started (batches)",
                             "pretrain: 4 batches, 0.0667 batches/s, elapsed 0:01:00",
                             "pretrain epoch 1/1: loss 0.5, accuracy 0.75",
                             "pretrain: done, 4 batches in 0:01:00 (0.0667 batches/s)"]


def test_disabled_progress_writes_nothing() -> None:
    stream = io.StringIO()
    assert list(track("abc", "rank 1", stream=stream, terminal=False, enabled=False)) == ["a", "b", "c"]
    assert stream.getvalue() == ""


def test_a_terminal_gets_a_bar() -> None:
    stream = io.StringIO()
    assert list(track(range(3), "check", "images", stream=stream, terminal=True)) == [0, 1, 2]
    assert "check:   0%|" in stream.getvalue() and "\r" in stream.getvalue()


def test_dask_computations_report_their_tasks() -> None:
    stream = io.StringIO()
    array = da.ones((12, 3), chunks=(4, 3)).sum(axis=1)
    with DaskProgress("write scores.zarr", stream=stream, terminal=False, clock=FakeClock()):
        assert array.compute(scheduler="sync").tolist() == [3.0] * 12
    first, last = lines(stream)[0], lines(stream)[-1]
    total = int(first.removeprefix("write scores.zarr: 0/").removesuffix(" tasks"))
    assert total >= 3  # at least one task per block
    assert last == f"write scores.zarr: done, {total} tasks in 0:00:00"


def test_a_failed_dask_computation_says_where_it_stopped() -> None:
    def fail(block):
        raise ValueError("boom")

    stream = io.StringIO()
    with pytest.raises(ValueError, match="boom"), DaskProgress("score", stream=stream, terminal=False):
        da.ones((4,), chunks=2).map_blocks(fail, meta=np.empty((0,))).compute(scheduler="sync")
    assert lines(stream)[-1].startswith("score: stopped after ")
