"""Where the daemons keep their pidfiles and sockets, per init mode: the one place these paths are written.

``systemd`` is a production Debian 12 host: the paths Debian's own units use
(``/lib/systemd/system/haproxy.service`` runs ``haproxy -Ws -f /etc/haproxy/haproxy.cfg
-p /run/haproxy.pid -S /run/haproxy-master.sock``; ``bird.service`` runs ``bird -f -u bird
-g bird`` with the compiled-in control socket and no pidfile: its process is the unit's
MainPID). ``direct`` is the namespace lab, where anycastlb starts the daemons itself
(:mod:`anycastlb.lab.direct`). The stats socket is set by our own ``haproxy.cfg`` and is
the path Debian's default config uses, so it is the same in both modes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DaemonPaths:
    """Pidfiles and sockets of the daemons, as one init mode lays them out."""

    haproxy_pidfile: str
    haproxy_master_socket: str
    haproxy_admin_socket: str
    bird_socket: str
    bird_pidfile: str  # "" when the unit writes none (its MainPID is the process)
    healthd_pidfile: str  # "" when the unit writes none


SYSTEMD = DaemonPaths(
    haproxy_pidfile="/run/haproxy.pid",
    haproxy_master_socket="/run/haproxy-master.sock",
    haproxy_admin_socket="/run/haproxy/admin.sock",
    bird_socket="/run/bird/bird.ctl",
    bird_pidfile="",
    healthd_pidfile="",
)

DIRECT = DaemonPaths(
    haproxy_pidfile="/run/haproxy/haproxy.pid",
    haproxy_master_socket="/run/haproxy/master.sock",
    haproxy_admin_socket="/run/haproxy/admin.sock",
    bird_socket="/run/bird/bird.ctl",
    bird_pidfile="/run/bird/bird.pid",
    healthd_pidfile="/run/anycastlb/healthd.pid",
)

MODES = {"systemd": SYSTEMD, "direct": DIRECT}


def for_mode(mode: str | None = None) -> DaemonPaths:
    """The paths of ``mode`` (``None``: this host's mode, see :func:`anycastlb.service.detect_mode`)."""
    if mode is None:
        from .service import detect_mode
        mode = detect_mode()
    return MODES[mode]
