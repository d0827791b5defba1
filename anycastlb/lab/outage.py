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
    _proc: subprocess.Popen | None = None
    timeline: list[Sample] | None = None

    def _files(self) -> tuple[Path, Path]:
        tag = f"outage-{id(self)}"
        return self.lab.statedir / f"{tag}.stop", self.lab.statedir / f"{tag}.ready"

    def start(self, wait: float = 20.0) -> "Prober":
        """Start probing; return once the prober runs (its ready file exists)."""
        stop, ready = self._files()
        stop.unlink(missing_ok=True)
        ready.unlink(missing_ok=True)
        spec = {"target": self.target, "interval": self.interval, "timeout": self.timeout,
                "duration": self.duration, "stop_file": str(stop), "ready_file": str(ready)}
        self._proc = subprocess.Popen(
            self.lab.argv(self.source, [PYTHON, "-m", "anycastlb.lab.outage", "-"], cwd=str(self.lab.repo)),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(spec))
        self._proc.stdin.close()
        self._proc.stdin = None  # communicate() must not flush it again
        deadline = time.monotonic() + wait
        while not ready.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._proc.kill()
                err = self._proc.stderr.read() if self._proc.stderr else ""
                raise RuntimeError(f"the prober in {self.source} did not start: {err[-500:]}")
            time.sleep(0.01)
        return self

    def stop(self) -> list[Sample]:
        """Stop probing and return the timeline."""
        stop, ready = self._files()
        assert self._proc is not None, "start() first"
        stop.touch()
        try:
            out, err = self._proc.communicate(timeout=self.timeout + 30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, err = self._proc.communicate()
        finally:
            stop.unlink(missing_ok=True)
            ready.unlink(missing_ok=True)
        if self._proc.returncode != 0:
            raise RuntimeError(f"the prober in {self.source} failed ({self._proc.returncode}): {err[-1000:]}")
        self.timeline = [tuple(s) for s in json.loads(out)]  # type: ignore[misc]
        return self.timeline

    def __enter__(self) -> "Prober":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m anycastlb.lab.outage SPEC.json|-``: probe, then print the timeline as JSON."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(open(argv[0]).read() if argv and argv[0] != "-" else sys.stdin.read())
    print(json.dumps(run(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
