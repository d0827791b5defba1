"""anycastlb-healthd: ``/etc/anycastlb/healthd.json`` from ``model["health"]``.

One entry per announced prefix (the contract of :mod:`anycastlb.healthd`):
an HAProxy-served VIP watches the HAProxy master (pidfd) and its stats socket, read when
the ring of state changes our haproxy.cfg fills tells of one (``events``) and every
``reconcile_ms``;
an anycast VIP watches its own tcp/http check. The kernel table and route
protocol are the ones the BIRD config learns (:mod:`anycastlb.render.bird`).
Checked with healthd's own config parser.

JSON has no comments and healthd refuses unknown keys, so this file carries no
managed-by header (see docs/traffic.md).
"""

from __future__ import annotations

import re
from typing import Any

from .. import httpstatus
from . import CheckResult, DaemonSpec, RenderedFile, RenderError, renderer, under
from .quote import carry, haproxy_name, ip, prefix, request_target, status_ranges, tojson
from .bird import HEALTH_PROTO, HEALTH_TABLE
from .haproxy import HEALTH_RING
from ..paths import for_mode

CONFIG = "/etc/anycastlb/healthd.json"
PIDFILE = "/run/anycastlb/healthd.pid"
STATE_FILE = "/run/anycastlb/healthd.state.json"
DRAIN_FILE = "/var/lib/anycastlb/drain"
LOG_FILE = "/var/log/anycastlb/healthd.log"
HAPROXY_INTERVAL_MS = 100
HAPROXY_RECONCILE_MS = 1000

_TIMERS = ("interval_ms", "timeout_ms", "rise", "fall", "unit")  # unit: check.unit, the server's systemd unit
_PROBE_KEYS = {"tcp": ("address", "port") + _TIMERS,
               "http": ("address", "port", "path", "host", "expect") + _TIMERS,
               "dns": ("address", "port", "name", "qtype") + _TIMERS,
               "kerberos": ("address", "port", "realm", "protocol") + _TIMERS}


def _watch(prefix: str, watch: dict[str, Any], root: str, mode: str | None = None) -> dict[str, Any]:
    """A model watch in healthd's contract; HAProxy's pidfile and socket are those of init ``mode``."""
    kind = watch["type"]
    if kind == "haproxy":
        paths = for_mode(mode)
        return {"type": "haproxy", "pidfile": under(root, paths.haproxy_pidfile),
                "stats_socket": under(root, paths.haproxy_admin_socket),
                "frontends": [str(haproxy_name(n)) for n in watch["frontends"]],
                "backends": [str(haproxy_name(n)) for n in watch["backends"]], "interval_ms": HAPROXY_INTERVAL_MS,
                "events": HEALTH_RING, "reconcile_ms": HAPROXY_RECONCILE_MS}
    if kind not in _PROBE_KEYS:
        raise RenderError(f"healthd: {prefix}: unknown watch type {kind!r}")
    if not watch.get("port"):
        raise RenderError(f"healthd: {prefix}: a {kind} check needs a port")
    out: dict[str, Any] = {"type": kind}
    for key in _PROBE_KEYS[kind]:
        value = watch.get(key)
        if value is None:
            continue
        if key == "expect":
            ranges = status_ranges(value)
            value = ranges[0][0] if len(ranges) == 1 and ranges[0][0] == ranges[0][1] else httpstatus.text(ranges)
        elif key == "path":
            value = request_target(value, "healthd")
        elif key == "address":
            value = str(ip(value))
        elif key == "host":
            value = carry(value, "healthd", "Host header")
            if not _HOST.fullmatch(value):
                raise RenderError(f"{prefix}: Host header {value!r} is not a host name")
        out[key] = value
    return out


#: What healthd may send as a Host header: a host name, an IPv4 address or a bracketed IPv6 one, a port.
_HOST = re.compile(r"[A-Za-z0-9._-]+(:[0-9]+)?|\[[0-9A-Fa-f:.]+\](:[0-9]+)?")


def config(model: dict[str, Any], root: str = "/") -> dict[str, Any]:
    """The healthd.json document (a plain dict) for this host's init mode (pillar ``service_mode``, else
    detected: :func:`anycastlb.service.detect_mode`)."""
    anns = []
    for ann in model["health"]["announcements"]:
        anns.append({"prefix": str(prefix(ann["prefix"])), "service": ",".join(ann["services"]),
                     "watch": _watch(ann["prefix"], ann["watch"], root, model.get("service_mode"))})
    return {"table": HEALTH_TABLE, "proto": HEALTH_PROTO,
            "state_file": under(root, STATE_FILE), "drain_file": under(root, DRAIN_FILE),
            "announcements": anns}


@renderer("healthd", CONFIG)
def render(model: dict[str, Any], secrets: dict[str, Any], root: str) -> list[RenderedFile]:
    """healthd.json, deterministic (sorted keys, ASCII only)."""
    return [RenderedFile(CONFIG, tojson(config(model, root), indent=2) + "\n")]


def check(staging: str, files: list[RenderedFile]) -> CheckResult:
    """healthd's own parser (:func:`anycastlb.healthd.load_config`) on the staged file."""
    from anycastlb.healthd import ConfigError, load_config

    path = under(staging, CONFIG)
    command = f"anycastlb.healthd.load_config({path})"
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        return CheckResult(False, command, str(exc))
    return CheckResult(True, command, f"{len(cfg.announcements)} announcement(s)")


def wanted(model: dict[str, Any]) -> bool:
    """Every BGP speaker runs healthd (a drained one too: it then announces nothing)."""
    return model.get("bgp") is not None and model["bgp"]["role"] == "speaker"


#: What the health agent leaves on a node besides its config: its drain and state files and the
#: systemd unit anycastlb ships for it (anycastlb.units); removed when the node stops running it.
LEAVES = (CONFIG, DRAIN_FILE, STATE_FILE, PIDFILE, "/etc/systemd/system/anycastlb-healthd.service")

SPEC = DaemonSpec(name="healthd", wanted=wanted, render=render, check=check, leaves=LEAVES)
