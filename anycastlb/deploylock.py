"""One rolling deploy at a time on a master: a lock file naming the deploy that holds it.

``anycastlb.orch.deploy`` takes the lock first (``salt-run anycastlb.lock``) and gives it
back last (``anycastlb.unlock``). A second deploy is refused while the first runs, and
told when it started and which process runs it. A deploy that stopped on a failure
(failhard: its last state never ran) does not block the next one for ever: the lock is
free again once its process is gone (``salt-run`` exited), once its thread no longer runs
an orchestration (the reactor runs orchestrations in threads of its own long-lived
process: a deploy started there checks the holder's thread from the inside), or after
``max_age`` seconds. No Salt here: the runner passes its cache dir.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

#: The lock's file under the master's cache dir.
LOCK_NAME = os.path.join("anycastlb", "deploy.lock")
#: A deploy older than this (seconds) no longer holds the lock, even if its process lives.
MAX_AGE_S = 4 * 3600


class DeployLocked(Exception):
    """Another deploy holds the lock."""


@dataclass
class Holder:
    """Who holds the lock: the process running the orchestration, and since when."""

    pid: int
    proc_start: str  # field 22 of /proc/PID/stat: tells a reused PID from the holder
    started: float   # time.time() at lock
    what: str        # e.g. "anycastlb.orch.deploy"
    thread: int = 0  # threading.get_ident() of the thread running the orchestration

    def is_me(self) -> bool:
        return self.pid == os.getpid() and self.thread == threading.get_ident()

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        return f"{self.what} started {when} (pid {self.pid})"


def _proc_start(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return ""
    # the command name (field 2) may hold spaces and parentheses: count from the last ')'
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else ""


def _in_orchestration(thread: int) -> bool:
    """Whether a thread of this process is inside Salt's ``state.orchestrate`` runner now."""
    frame = sys._current_frames().get(thread)
    marker = os.path.join("runners", "state.py")
    while frame is not None:
        code = frame.f_code
        if code.co_name in ("orchestrate", "orch") and code.co_filename.endswith(marker):
            return True
        frame = frame.f_back
    return False


def _alive(h: Holder, now: float, max_age: float) -> bool:
    if now - h.started > max_age:
        return False
    if not h.proc_start or _proc_start(h.pid) != h.proc_start:
        return False
    if h.pid == os.getpid() and h.thread and h.thread != threading.get_ident():
        return _in_orchestration(h.thread)  # another thread of this (reactor) process
    return True


def _read(f: Any) -> Holder | None:
    f.seek(0)
    text = f.read()
    if not text.strip():
        return None
    try:
        return Holder(**json.loads(text))
    except (ValueError, TypeError):
        return None  # unreadable: treated as free (it names nobody)


def _locked_file(path: str) -> Any:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - closed by the callers
    fcntl.flock(f, fcntl.LOCK_EX)  # held only while the file is read and written
    return f


def acquire(cachedir: str, what: str = "anycastlb.orch.deploy", pid: int | None = None,
            max_age: float = MAX_AGE_S) -> Holder:
    """Take the lock for the calling process; raises :class:`DeployLocked` naming the running deploy."""
    pid = os.getpid() if pid is None else pid
    path = os.path.join(cachedir, LOCK_NAME)
    now = time.time()
    with _locked_file(path) as f:
        held = _read(f)
        if held is not None and _alive(held, now, max_age) and not (held.pid == pid and (
                held.thread in (0, threading.get_ident()) or pid != os.getpid())):
            raise _locked(held)
        me = Holder(pid=pid, proc_start=_proc_start(pid), started=now, what=what,
                    thread=threading.get_ident() if pid == os.getpid() else 0)
        f.seek(0)
        f.truncate()
        f.write(json.dumps(asdict(me)))
        f.flush()
        return me


def _locked(held: Holder) -> DeployLocked:
    return DeployLocked(f"another deploy is running: {held.describe()}; wait for it, or, if it is "
                        f"gone, salt-run anycastlb.unlock force=True")


def check(cachedir: str, max_age: float = MAX_AGE_S) -> None:
    """Raise :class:`DeployLocked` while another deploy holds the lock; takes nothing, writes nothing."""
    held = holder(cachedir, max_age)
    if held is not None and not held.is_me():
        raise _locked(held)


def release(cachedir: str, pid: int | None = None, force: bool = False) -> Holder | None:
    """Give the lock back (only its holder, unless ``force``); returns the holder it removed."""
    pid = os.getpid() if pid is None else pid
    path = os.path.join(cachedir, LOCK_NAME)
    if not os.path.exists(path):
        return None
    with _locked_file(path) as f:
        held = _read(f)
        if held is None:
            return None
        if held.pid != pid and not force:
            raise DeployLocked(f"the lock is not this deploy's: {held.describe()}")
        f.seek(0)
        f.truncate()
        return held


def holder(cachedir: str, max_age: float = MAX_AGE_S) -> Holder | None:
    """The deploy holding the lock now, or None."""
    path = os.path.join(cachedir, LOCK_NAME)
    if not os.path.exists(path):
        return None
    with _locked_file(path) as f:
        held = _read(f)
    return held if held is not None and _alive(held, time.time(), max_age) else None
