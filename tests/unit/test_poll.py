"""The one poll-until loop."""

from __future__ import annotations

import time

from anycastlb.poll import poll_until


def test_reads_until_good_and_says_how_long() -> None:
    values = iter([0, 0, 3, 9])
    p = poll_until(lambda: next(values), lambda v: v > 1, timeout=5, interval=0.01)
    assert p.done and p.value == 3 and 0.015 <= p.waited < 1


def test_times_out_with_the_last_value() -> None:
    p = poll_until(lambda: "no", lambda v: v == "yes", timeout=0.05, interval=0.01)
    assert not p.done and p.value == "no" and p.waited >= 0.05


def test_waited_counts_from_since() -> None:
    since = time.monotonic() - 0.5
    p = poll_until(lambda: True, timeout=1, since=since)
    assert p.done and p.waited >= 0.5 and p.waited_ms >= 500
