"""The client-visible outage of a fault: a paced prober and the arithmetic on its timeline.

The prober (``python -m anycastlb.lab.outage SPEC.json``, run inside a lab namespace)
starts a new request every ``interval`` seconds, each in its own thread with its own
``timeout``, so a hanging request never delays the next one. It stops by itself after
``duration`` seconds or ``max_requests`` requests, or when ``stop_file`` appears, and
prints its timeline as JSON: one ``[sent, ok, ms, detail]`` per request, ``sent`` on
``time.monotonic()``, which every process of the machine shares (network namespaces
do not change clocks), so a benchmark can put its fault on the same time axis.

:func:`outage` turns a timeline into milliseconds: from the first failed request to
the last failed one, plus one interval (the first request that succeeds again was
sent at most one interval later). This is what the anchors of
``machine-facts.md`` measure: a probe every 20 ms with a 200 ms timeout.

:class:`Prober` runs the prober in a lab host from the host side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .probe import probe
from .program import LabProgram, read_spec
from .salt import PYTHON

if TYPE_CHECKING:
    from .core import Lab

#: (monotonic send time, ok, milliseconds, detail)
Sample = tuple[float, bool, float, str]


def run(spec: dict[str, Any]) -> list[Sample]:
    """Probe ``spec["target"]`` every ``interval`` s until duration, count or stop file; bounded."""
    target = dict(spec["target"])
    target.setdefault("timeout", float(spec.get("timeout", 0.2)))
    interval = float(spec.get("interval", 0.02))
    end = time.monotonic() + min(float(spec.get("duration", 30)), 600.0)
    limit = min(int(spec.get("max_requests", 30000)), 100000)
    stop = spec.get("stop_file")
    ready = spec.get("ready_file")
    samples: list[Sample] = []
    lock = threading.Lock()
    threads: list[threading.Thread] = []

    def one(sent: float) -> None:
        r = probe(target)
        with lock:
            samples.append((round(sent, 4), bool(r["ok"]), r["ms"], r["detail"][:120]))

    n = 0
    nxt = time.monotonic()
    if ready:
        Path(ready).write_text(str(os.getpid()))
    while n < limit and time.monotonic() < end and not (stop and os.path.exists(stop)):
        now = time.monotonic()
        if now < nxt:
            time.sleep(nxt - now)
        sent = time.monotonic()
        t = threading.Thread(target=one, args=(sent,), daemon=True)
        t.start()
        threads.append(t)
        n += 1
        nxt += interval
        if nxt < time.monotonic() - interval:  # fell behind (a loaded machine): do not burst
            nxt = time.monotonic()
        threads = [t for t in threads if t.is_alive()]
    for t in threads:
        t.join(float(target["timeout"]) + 5)
    with lock:
        return sorted(samples)


def failures(timeline: Sequence[Sample], since: float | None = None, until: float | None = None) -> list[Sample]:
    """The failed samples sent within [since, until]."""
    return [s for s in timeline if not s[1] and (since is None or s[0] >= since) and (until is None or s[0] <= until)]


def outage(timeline: Sequence[Sample], since: float | None = None, until: float | None = None,
           interval: float = 0.02) -> float:
    """Milliseconds from the first to the last failed request in [since, until], plus one interval; 0 if none failed."""
    bad = failures(timeline, since, until)
    if not bad:
        return 0.0
    return round((bad[-1][0] - bad[0][0] + interval) * 1000, 1)


@dataclass
class Prober:
    """The paced prober in lab host ``source``, started and stopped from the host side."""

    lab: "Lab"
    source: str
    target: dict[str, Any]
    interval: float = 0.02
    timeout: float = 0.2
    duration: float = 120.0
    _prog: LabProgram | None = None
    timeline: list[Sample] | None = None

    def start(self, wait: float = 20.0) -> "Prober":
        """Start probing; return once the prober runs (its ready file exists)."""
        self._prog = LabProgram(self.lab, self.source, "anycastlb.lab.outage", "prober")
        self._prog.start({"target": self.target, "interval": self.interval, "timeout": self.timeout,
                          "duration": self.duration}, wait)
        return self

    def stop(self) -> list[Sample]:
        """Stop probing and return the timeline."""
        assert self._prog is not None, "start() first"
        self.timeline = [tuple(s) for s in self._prog.stop(self.timeout + 30)]  # type: ignore[misc]
        return self.timeline

    def __enter__(self) -> "Prober":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._prog is not None and self._prog.running:
            self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m anycastlb.lab.outage SPEC.json|-``: probe, then print the timeline as JSON."""
    print(json.dumps(run(read_spec(sys.argv[1:] if argv is None else argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
