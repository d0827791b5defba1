"""Starting, reloading and stopping daemons: the one switch between service managers.

Production hosts run systemd (``systemctl``); hosts without it (containers, the
lab's network namespaces) run the daemons as direct processes with their
ordinary pidfiles. The mode is chosen in one place, :func:`detect_mode`, and can
be forced with the pillar key ``anycastlb:service_mode`` or the environment
variable ``ANYCASTLB_SERVICE_MODE`` (``systemd`` or ``direct``).
"""

from __future__ import annotations

import os


class ServiceError(RuntimeError):
    """A daemon could not be started or reloaded; the message says why."""


def detect_mode(forced: str | None = None) -> str:
    """``systemd`` where systemd is PID 1, else ``direct``."""
    mode = forced or os.environ.get("ANYCASTLB_SERVICE_MODE")
    if mode:
        if mode not in ("systemd", "direct"):
            raise ServiceError(f"unknown service mode {mode!r} (systemd or direct)")
        return mode
    return "systemd" if os.path.isdir("/run/systemd/system") else "direct"


class ServiceControl:
    """Start / reload / stop the daemons anycastlb manages (implementation in progress)."""

    def __init__(self, mode: str | None = None):
        self.mode = detect_mode(mode)

    def running(self, daemon: str) -> bool:  # pragma: no cover - filled in by the traffic-path work
        raise NotImplementedError

    def start(self, daemon: str) -> str:  # pragma: no cover
        raise NotImplementedError

    def reload_or_start(self, daemon: str) -> str:  # pragma: no cover
        raise NotImplementedError

    def stop(self, daemon: str) -> str:  # pragma: no cover
        raise NotImplementedError
