"""HAProxy 2.6: ``/etc/haproxy/haproxy.cfg`` and the TLS bundles, from ``model["haproxy"]``.

One frontend per (service, port) binding every VIP of the service (``transparent``
so the bind works before the VIP is on ``lo``), or per VIP:port that http services
share (routed by Host and path prefix, every service's certificate on the bind, picked
by SNI), or, on a cluster with ``frontends: pooled``, per port for the alike services of one tenant
(routed by destination address through a ``map_ip`` file), one backend per (service, server port). Catalog backend states are written into the config: ``drain`` is
``weight 0`` (HAProxy 2.6 has no ``drain`` server keyword; a weight-0 server
gets no new sessions and keeps its running ones), ``maintenance`` is
``disabled``. Checked with ``haproxy -c -f``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from .. import httpstatus
from ..paths import DIRECT
from . import (CheckResult, DaemonSpec, RenderedFile, RenderError, renderer, run_checker,
               template_file, under)
from .quote import Quoted, carry, haproxy_name, request_target, status_ranges

CONFIG = "/etc/haproxy/haproxy.cfg"
CERT_DIR = "/etc/haproxy/certs"
MAP_DIR = "/etc/haproxy/maps"
#: The stats socket our haproxy.cfg declares (the same in both init modes, see anycastlb/paths.py).
ADMIN_SOCKET = DIRECT.haproxy_admin_socket
STATE_FILE = "/var/lib/haproxy/server-state"


#: Where a pooled frontend with an ``anchor`` listens, per address family: nftables hands it the
#: connections to its VIPs (TPROXY keeps their destination, so ``dst`` still picks the backend).
ANCHOR_ADDRESSES = {4: "127.0.0.1", 6: "::1"}


def listeners(fe: dict[str, Any]) -> list[tuple[str, int]]:
    """The (address, port) pairs a frontend binds: each VIP on the frontend's port, or, for a pool with
    an ``anchor``, one loopback address per family of its VIPs on the anchor port."""
    if fe.get("anchor"):
        versions = sorted({ipaddress.ip_address(a).version for a in fe["binds"]})
        return [(ANCHOR_ADDRESSES[v], int(fe["anchor"])) for v in versions]
    return [(a, int(fe["port"])) for a in fe["binds"]]


_CERT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def cert_path(name: str) -> str:
    """Production path of the PEM bundle (certificate + key) of certificate ``name``.

    The name becomes a file name: anything but a plain name (``../``, ``/``) is refused.
    """
    if not _CERT_NAME.fullmatch(carry(name, "haproxy", "certificate name")) or ".." in name:
        raise RenderError(f"certificate name {name!r} is not a plain file name")
    return f"{CERT_DIR}/anycastlb-{name}.pem"


_MAP_PATH = re.compile(r"[A-Za-z0-9_./-]+")


def map_path(frontend: str, root: str) -> Quoted:
    """Where a pooled frontend's destination map lives (under ``root``). It is written bare into a
    sample expression, so anything but plain path characters is refused."""
    path = under(root, f"{MAP_DIR}/anycastlb-{haproxy_name(frontend)}.map")
    if not _MAP_PATH.fullmatch(path) or ".." in path:
        raise RenderError(f"pooled frontend map path {path!r} is not a plain path")
    return Quoted(path)


def _map(pool: list[dict[str, str]]) -> str:
    """A pooled frontend's ``map_ip`` file: each VIP (an address), then its service's backend."""
    return "".join(f"{ipaddress.ip_address(p['address'])} {haproxy_name(p['backend'])}\n" for p in pool)


def _pem(name: str, secrets: dict[str, Any]) -> str:
    """The bundle text: certificate (and chain) then key, each ending in a newline."""
    entry = (secrets.get("certificates") or {}).get(name)
    if not isinstance(entry, dict) or not entry.get("cert") or not entry.get("key"):
        raise RenderError(f"certificate {name!r} needs 'cert' and 'key' in the secrets", file=cert_path(name))
    parts = [str(entry["cert"]).strip(), str(entry["key"]).strip()]
    return "\n".join(parts) + "\n"


def _check(check: dict[str, Any]) -> dict[str, Any]:
    """A backend's check with what the template prints: the request target and the status list."""
    check = dict(check)
    if check.get("type") == "http":
        check["target"] = request_target(check.get("path"), "haproxy")
        check["status"] = httpstatus.text(status_ranges(check.get("expect", 200)))
    return check


def _raw(directives: list[str]) -> list[Quoted]:
    """The catalog's raw directives, printed as written: one line each (root files only, lint's rule)."""
    return [Quoted(carry(d, "haproxy", "raw directive")) for d in directives]


#: The named ``defaults`` section the http backends take their common lines from (``backend … from``);
#: no proxy can be named so (theirs end in a port, a digest or are ``stats``).
HTTP_DEFAULTS = "anycastlb-http"

#: The ring HAProxy writes its state changes to (a server or backend going down or up, a proxy
#: stopping at a reload) and anycastlb-healthd follows with ``show events <ring> -w``: it reads the
#: stats when something changed, and otherwise only to reconcile (docs/traffic.md).
HEALTH_RING = "anycastlb-health"


@renderer("haproxy", CONFIG)
def render(model: dict[str, Any], secrets: dict[str, Any], root: str) -> list[RenderedFile]:
    """haproxy.cfg plus one 0600 PEM bundle per certificate the node terminates."""
    hap = model["haproxy"]
    frontends = []
    maps: list[RenderedFile] = []   # each pooled frontend's destination map
    for fe in hap["frontends"]:
        fe = dict(fe)
        if fe["tls"]:
            names = fe["tls"].get("certificates") or [fe["tls"]["certificate"]]
            fe["tls"] = {**fe["tls"], "pems": [under(root, cert_path(c)) for c in names]}
        fe["raw"] = _raw(fe.get("raw", []))
        fe["listen"] = listeners(fe)
        if fe.get("pool"):
            fe["map"] = map_path(fe["name"], root)
            maps.append(RenderedFile(map_path(fe["name"], ""), _map(fe["pool"]), 0o644))
        frontends.append(fe)
    files = [template_file(
        CONFIG, "haproxy/haproxy.cfg.j2",
        node=model["node"],
        paths={"admin_socket": under(root, ADMIN_SOCKET), "state_file": under(root, STATE_FILE)},
        stats=hap["stats"],
        frontends=frontends,
        acme=hap.get("acme"),
        acme_probe={**probe, "pems": [under(root, cert_path(c)) for c in probe["certificates"]]}
        if (probe := hap.get("acme_probe")) else None,
        backends=[{**be, "check": _check(be["check"]), "raw": _raw(be.get("raw", [])), "shared": False}
                  for be in hap["backends"]],
        http_backends=any(be["mode"] == "http" for be in hap["backends"]),
        HTTP_DEFAULTS=HTTP_DEFAULTS,
        HEALTH_RING=HEALTH_RING,
        checks=[{**c, "check": _check(c["check"]), "shared": True, "raw": [], "stick": None, "server_maxconn": None,
                 "timeouts_ms": {"connect": c["timeouts_ms"]["connect"], "server": None, "tunnel": None}}
                for c in hap.get("checks", [])],
    )]
    for name in hap["certificates"]:
        files.append(RenderedFile(cert_path(name), _pem(name, secrets), 0o600))
    return files + maps


def check(staging: str, files: list[RenderedFile]) -> CheckResult:
    """``haproxy -c -f`` on the staged config (which points at the staged bundles)."""
    cmd = ["haproxy", "-c", "-f", under(staging, CONFIG)]
    return run_checker(cmd)


SPEC = DaemonSpec(
    name="haproxy",
    wanted=lambda m: m.get("haproxy") is not None,
    render=render,
    check=check,
    owned=(f"{CERT_DIR}/anycastlb-*.pem", f"{MAP_DIR}/anycastlb-*.map"),
    leaves=(CONFIG,),
    binary="haproxy",
    packages=("haproxy",),
)
