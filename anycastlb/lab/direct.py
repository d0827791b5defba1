"""Direct mode: the namespace lab's stand-in for an init system.

A production host runs systemd (:class:`anycastlb.service.ServiceControl` drives its units).
The namespace lab (``anycastlb lab up``, no ``--init systemd``) has no init system in its
nodes, so there anycastlb starts the daemons itself: the daemon's own command with its
direct-mode paths (:data:`anycastlb.paths.DIRECT`), a daemon that does not fork detached
in its own session with a pidfile written for it, its pidfile read for "is it running",
SIGTERM to stop it and its reload signal (SIGUSR2 for the HAProxy master) to reload it.
:class:`anycastlb.service.ServiceControl` hands ``mode="direct"`` to :class:`DirectControl`.
"""

from __future__ import annotations

import os
import shlex
import signal
import time

from ..poll import poll_until
from ..service import START_TIMEOUT_S, ServiceControl, ServiceError, _pid_alive


class DirectControl(ServiceControl):
    """:class:`~anycastlb.service.ServiceControl` for hosts with no init system (the namespace lab)."""

    def pid(self, daemon: str) -> int | None:
        """The pid in the daemon's pidfile, if that process runs."""
        try:
            with open(self.path(self._service(daemon).pidfile), encoding="ascii") as fh:
                text = fh.readline().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() and _pid_alive(int(text)) else None

    def running(self, daemon: str) -> bool:
        """Whether the daemon runs (for a oneshot: whether its config is loaded)."""
        if self._service(daemon).oneshot:
            return super().running(daemon)
        return self.pid(daemon) is not None

    def start(self, daemon: str) -> str:
        """Start the daemon (no-op if it runs) and wait until it serves; :class:`ServiceError` if it does not."""
        svc = self._service(daemon)
        if svc.oneshot:
            return self._oneshot(daemon)
        if self.running(daemon):
            return f"{daemon} already running (pid {self.pid(daemon)})"
        for d in svc.dirs:
            os.makedirs(self.path(d), exist_ok=True)
        argv = self.argv(daemon)
        if svc.ready and os.path.exists(self.path(svc.ready)) and not os.path.isdir(self.path(svc.ready)):
            os.remove(self.path(svc.ready))  # a stale socket of a dead daemon
        if svc.daemonizes:
            self._check(argv, f"start {daemon}")
        else:
            self._spawn_detached(daemon, argv)
        if poll_until(lambda: self.pid(daemon) is not None and (not svc.ready or os.path.exists(self.path(svc.ready))),
                      timeout=START_TIMEOUT_S).done:
            return f"{daemon} started (pid {self.pid(daemon)})"
        raise ServiceError(f"{daemon} did not come up within {START_TIMEOUT_S:.0f} s ({shlex.join(argv)})"
                           + self._log_tail(daemon))

    def _spawn_detached(self, daemon: str, argv: list[str]) -> None:
        """Run a foreground program in the background, in its own session; write its pidfile."""
        svc = self._service(daemon)
        log = self.path(svc.log) if svc.log else os.devnull
        # sh exits at once: the daemon is re-parented and never becomes our zombie.
        script = f"setsid {shlex.join(argv)} </dev/null >>{shlex.quote(log)} 2>&1 & echo $!"
        proc = self._run(["sh", "-c", script])
        pid = (proc.stdout or "").strip()
        if proc.returncode != 0 or not pid.isdigit():
            raise ServiceError(f"start {daemon} failed: {proc.stderr or proc.stdout}")
        pidfile = self.path(svc.pidfile)
        tmp = f"{pidfile}.tmp"
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(f"{pid}\n")
        os.replace(tmp, pidfile)

    def _log_tail(self, daemon: str) -> str:
        svc = self._service(daemon)
        if not svc.log:
            return ""
        try:
            with open(self.path(svc.log), encoding="utf-8", errors="replace") as fh:
                return "\n" + "".join(fh.readlines()[-10:])
        except OSError:
            return ""

    def _signal_reload(self, daemon: str) -> str:
        """Send the daemon's reload signal and check that it survived it."""
        svc = self._service(daemon)
        pid = self.pid(daemon)
        assert pid is not None
        os.kill(pid, getattr(signal, svc.reload))
        time.sleep(0.2)
        if not _pid_alive(pid):
            raise ServiceError(f"{daemon} (pid {pid}) exited after {svc.reload}" + self._log_tail(daemon))
        return f"{daemon} reloaded ({svc.reload} to pid {pid})"

    def stop(self, daemon: str) -> str:
        """Stop the daemon (SIGTERM to the pid in its pidfile) and wait for it."""
        if self._service(daemon).oneshot:
            return f"{daemon} has no process to stop"
        pid = self.pid(daemon)
        if pid is None:
            return f"{daemon} was not running"
        os.kill(pid, signal.SIGTERM)
        if not poll_until(lambda: not _pid_alive(pid), timeout=START_TIMEOUT_S).done:
            raise ServiceError(f"{daemon} (pid {pid}) did not stop on SIGTERM")
        return f"{daemon} stopped (pid {pid})"
