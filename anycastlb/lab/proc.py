"""The lab's PID registry and the killing of processes that are provably ours.

A registered process is identified by its PID *and* its start time (field 22 of
``/proc/PID/stat``), so a recycled PID is never signalled.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from ..poll import poll_until


def start_time(pid: int) -> int | None:
    """The kernel start time of ``pid`` in clock ticks, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(pid: int, started: int | None = None) -> bool:
    """True if ``pid`` runs (and, when given, started at ``started``); zombies count as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return False
    return started is None or int(fields[19]) == started


class Registry:
    """PID files under ``<statedir>/pids``: one JSON document per spawned process."""

    def __init__(self, statedir: Path) -> None:
        self.dir = Path(statedir) / "pids"

    def add(self, host: str, label: str, pid: int, argv: list[str], log: str | None) -> Path:
        """Record a process we started."""
        self.dir.mkdir(parents=True, exist_ok=True)
        f = self.dir / f"{host}.{label}.json"
        f.write_text(json.dumps({"host": host, "label": label, "pid": pid,
                                 "start": start_time(pid), "argv": argv, "log": log}))
        return f

    def entries(self) -> list[dict]:
        """Every recorded process (running or not)."""
        if not self.dir.is_dir():
            return []
        out = []
        for f in sorted(self.dir.glob("*.json")):
            try:
                out.append(json.loads(f.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def get(self, host: str, label: str) -> dict | None:
        """The record of ``host``'s process ``label``, if any."""
        f = self.dir / f"{host}.{label}.json"
        return json.loads(f.read_text()) if f.exists() else None

    def running(self) -> list[int]:
        """PIDs of recorded processes that still run (start time verified)."""
        return [e["pid"] for e in self.entries() if alive(e["pid"], e.get("start"))]

    def remove(self, host: str, label: str) -> None:
        """Forget a record."""
        (self.dir / f"{host}.{label}.json").unlink(missing_ok=True)


def netns_pids(ns: str) -> list[int]:
    """PIDs of processes living in network namespace ``ns`` (empty if it does not exist)."""
    if not Path(f"/run/netns/{ns}").exists():
        return []
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(x) for x in r.stdout.split()]


def ns_inode(path: str | Path) -> int | None:
    """Inode of a namespace file (a bind-mounted nsfs file or /proc/PID/ns/X)."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def mntns_pids(inodes: set[int]) -> list[int]:
    """PIDs whose mount namespace is one of ``inodes``."""
    if not inodes:
        return []
    me = os.getpid()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            if os.stat(f"/proc/{d}/ns/mnt").st_ino in inodes:
                out.append(int(d))
        except OSError:
            continue
    return out


def kill_all(pids: list[int], grace: float = 3.0) -> list[int]:
    """SIGTERM ``pids``, wait up to ``grace`` seconds, SIGKILL survivors; return those still alive."""
    maybe = {p: start_time(p) for p in set(pids) if p != os.getpid()}
    starts = {p: s for p, s in maybe.items() if s is not None}
    for p in starts:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def left() -> list[int]:
        _reap(starts)
        return [p for p, s in starts.items() if alive(p, s)]

    if not poll_until(left, lambda pids: not pids, timeout=grace).value:
        return []
    for p, s in starts.items():
        if alive(p, s):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return poll_until(left, lambda pids: not pids, timeout=2.0).value


def _reap(pids: dict[int, int]) -> None:
    """Collect those of ``pids`` that are our exited children, so they do not linger as zombies."""
    for p in pids:
        try:
            os.waitpid(p, os.WNOHANG)
        except ChildProcessError:
            pass
