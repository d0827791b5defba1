"""Icinga2: hosts, VIP pseudo-hosts, services, users, log and mail notifications of the fleet.

Two modes (catalog ``monitoring.icinga``). ``standalone``: ``/etc/icinga2/icinga2.conf``
(Debian's, minus its example objects) is written too. ``conf.d``: only
``/etc/icinga2/conf.d/anycastlb/*.conf`` is added to an existing Icinga 2, whose
``icinga2.conf`` and ``conf.d`` stay as they are (checked together as one tree). Owned in
both: ``conf.d/anycastlb/*.conf`` and the plugins anycastlb ships, deployed from
:mod:`anycastlb.plugins` to ``/usr/local/lib/anycastlb/plugins/``. Contacts (``contacts``)
get an ``email`` and mail through Debian's ``mail-host-notification`` and
``mail-service-notification`` commands.

Debian's ``conf.d`` examples are left out on purpose: their apply rules would add
ping/ssh/disk/http services to every host we define, and ``object Host NodeName``
clashes with our host of the same name on the monitoring node. ``conf.d/api-users.conf``
(``icinga2 api setup``) and your own ``conf.d/**/local*.conf`` files are still included.

Node state ``drain`` and backend state ``drain`` are shown in display names and in
``vars``; a node in ``maintenance`` gets no notifications and an all-day
ScheduledDowntime (not monitored as an error).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from ..plugins import DEPLOYED
from ..service import Service
from . import CheckResult, DaemonSpec, RenderedFile, RenderError, renderer, template_file, under
from . import quote
from .. import httpstatus

CONFDIR = "/etc/icinga2"
OURS = f"{CONFDIR}/conf.d/anycastlb"
PLUGIN_DIR = "/usr/local/lib/anycastlb/plugins"
BIRD_SOCKET = "/run/bird/bird.ctl"
HAPROXY_STATS_URI = "/metrics"
#: What the poller reads on each LB node: the stats page's CSV, about a tenth of ``/metrics``.
HAPROXY_POLL_URI = "/;csv"
#: The poller's spec (every passive check; read by ``check_anycastlb_poll``) and the pipe it writes.
POLL_SPEC = f"{OURS}/poll.json"
COMMAND_PIPE = "/run/icinga2/cmd/anycastlb.cmd"
#: Check types whose results come from the poller (one run per interval for the whole fleet),
#: not from a process per check: Icinga2 never schedules them itself (``enable_active_checks``
#: false), but "check now" still runs their own plugin (check_http, check_tcp,
#: check_anycastlb_udp, ...) for one fresh answer.
PASSIVE = frozenset({"haproxy-frontend", "announcers", "rr-sessions", "http", "https", "tcp", "udp"})
#: What the udp CheckCommand gives check_anycastlb_udp (``vars.anycastlb_udp_timeout``), in seconds.
UDP_TIMEOUT = 5
#: Check timing when the model does not say (monitoring.intervals).
INTERVALS = {"check_s": 60, "retry_s": 30, "attempts": 3}
#: Certificate expiry thresholds in days (warning, critical).
CERT_DAYS = (30, 14)
#: What the udp check sends to a service checked by neither DNS nor Kerberos (any answer is OK).
UDP_SEND = "anycastlb-probe"

#: Runtime directories ``icinga2 daemon -C`` is pointed at (under the staging root).
RUNTIME_DIRS = {"DataDir": "/var/lib/icinga2", "CacheDir": "/var/cache/icinga2", "LogDir": "/var/log/icinga2",
                "InitRunDir": "/run/icinga2", "SpoolDir": "/var/spool/icinga2"}

#: How the service layer runs Icinga2 outside systemd: Debian's prepare-dirs (creates and
#: chowns /run/icinga2 etc. for the nagios user), then ``icinga2 daemon -d``; reload =
#: SIGHUP (Icinga2 validates the new config itself and keeps the old one if it fails).
SERVICE = Service(
    name="icinga2", unit="icinga2",
    command=("sh", "-c", "/usr/lib/icinga2/prepare-dirs /etc/default/icinga2 && "
                         "exec icinga2 daemon -d -e /var/log/icinga2/error.log"),
    pidfile="/run/icinga2/icinga2.pid", reload="SIGHUP", log="/var/log/icinga2/error.log")

_PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


#: The Icinga2 DSL literal filter (kept under its old name for callers).
q = quote.icinga


def _is6(addr: str | None) -> bool:
    try:
        return addr is not None and ipaddress.ip_address(addr).version == 6
    except ValueError:
        return False


def _resolve_host(check: dict[str, Any], hosts: dict[str, dict[str, Any]], vip_hosts: set[str]) -> str:
    """The host a check belongs to.

    Work-around: the compiler puts the HTTP ``Host`` header into ``host`` for backend
    http checks; such a check is moved to the host whose address it probes.
    """
    name = check["host"]
    if name in hosts or name in vip_hosts:
        return name
    by_addr = [h for h, x in hosts.items() if check.get("address") in (x["address"], x.get("address6"))]
    if len(by_addr) == 1:
        return by_addr[0]
    raise RenderError(f"check {check['name']!r} names host {name!r}, which is neither a host nor a VIP host")


def _service(check: dict[str, Any], host: str, hosts: dict[str, dict[str, Any]], neighbors: dict[str, list[str]]
             ) -> list[dict[str, Any]]:
    """One model check → the Icinga2 Service object(s) for it (name, command, vars)."""
    t = check["type"]
    state = check.get("backend_state", "active")
    display = check["name"] + ("" if state == "active" else f" [{state}]")
    host_state = hosts.get(host, {}).get("state", "active")
    base: dict[str, Any] = {"name": check["name"], "host": host, "display": display,
                            "notify": [] if host_state == "maintenance" else list(check.get("notify", [])),
                            "maintenance": host_state == "maintenance",
                            "passive": t in PASSIVE,
                            "vars": {"anycastlb_type": t, "anycastlb_service": check.get("service"),
                                     "anycastlb_backend_state": state}}
    addr = check.get("address")
    out = [base]
    if t in ("http", "https"):
        base["command"] = "http"
        base["vars"].update({"http_address": addr, "http_port": check["port"], "http_uri": quote.request_target(check.get("path") or "/", "icinga2"),
                             "http_ipv6": _is6(addr)})
        if check.get("http_host"):
            base["vars"]["http_vhost"] = check["http_host"]
        if check.get("expect"):
            # check_http -e: a list of strings, one of which the status line must contain
            base["vars"]["http_expect"] = ",".join(map(str, httpstatus.codes(quote.status_ranges(check["expect"]))))
        if t == "https" or check.get("tls"):
            base["vars"].update({"http_ssl": True, "http_sni": True})
            cert = {**base, "name": check["name"] + " certificate", "display": display + " certificate",
                    "vars": {**base["vars"], "http_certificate": "{},{}".format(*check.get("cert_days", CERT_DAYS))}}
            cert["vars"].pop("http_expect", None)
            out = [cert] if check.get("certificate_only") else out + [cert]
    elif t == "tcp":
        base["command"] = "tcp"
        base["vars"].update({"tcp_address": addr, "tcp_port": check["port"], "tcp_ipv6": _is6(addr)})
    elif t == "udp":
        base["command"] = "anycastlb-udp"
        base["vars"].update({"anycastlb_udp_address": addr, "anycastlb_udp_port": check["port"],
                             "anycastlb_udp_send": check.get("send", UDP_SEND)})
        if check.get("dns"):   # a resolver: a DNS query, OK only on NOERROR
            base["vars"].update({"anycastlb_udp_dns": check["dns"], "anycastlb_udp_dns_type": check["dns_type"]})
        if check.get("krb"):   # a KDC: an AS-REQ, OK only when a KDC of the realm answers
            base["vars"]["anycastlb_udp_krb"] = check["krb"]
    elif t == "haproxy-frontend":
        base["command"] = "anycastlb-haproxy"
        base["vars"].update({"anycastlb_address": addr, "anycastlb_port": check["port"],
                             "anycastlb_frontend": check["frontend"], "anycastlb_backend": check["backend"],
                             "anycastlb_node": check["host"]})
    elif t == "acme-serial":
        base["command"] = "anycastlb-acme-serial"
        base["vars"].update({"anycastlb_acme_sni": check["sni"], "anycastlb_acme_port": check["port"],
                             "anycastlb_acme_nodes": list(check["nodes"])})
    elif t == "acme-renewal":
        base["command"] = "anycastlb-acme-renewal"
        base["vars"]["anycastlb_acme_certificate"] = check["certificate"]
    elif t == "announcers":
        base["command"] = "anycastlb-announcers"
        base["vars"].update({"anycastlb_prefix": check["prefix"], "anycastlb_expected": list(check["expected"])})
    elif t == "rr-sessions":
        rr = check["host"]
        nbs = neighbors.get(rr) or [a for a in (hosts[rr]["address"], hosts[rr].get("address6")) if a]
        base["command"] = "anycastlb-rr-sessions"
        base["vars"].update({"anycastlb_rr": rr, "anycastlb_neighbors": nbs,
                             "anycastlb_expected": list(check["expected"])})
    else:
        raise RenderError(f"check {check['name']!r} has an unknown type {t!r}")
    return out


def objects(model: dict[str, Any]) -> dict[str, Any]:
    """The template context: hosts, VIP hosts, services, users, speakers."""
    mon = model["monitoring"]
    hosts = {h["name"]: h for h in mon["hosts"]}
    vip_hosts = set(mon["vip_hosts"])
    neighbors: dict[str, list[str]] = {}
    for nb in (model.get("bgp") or {}).get("neighbors", []):
        if nb["kind"] == "route-reflector":
            neighbors.setdefault(nb["name"], []).append(nb["address"])
    services: list[dict[str, Any]] = []
    vips: dict[str, dict[str, Any]] = {v: {"name": v, "service": v.removeprefix("vip-"), "addresses": []}
                                       for v in sorted(vip_hosts)}
    for check in mon["checks"]:
        host = _resolve_host(check, hosts, vip_hosts)
        services.extend(_service(check, host, hosts, neighbors))
        if host in vips and check.get("address") and check["address"] not in vips[host]["addresses"]:
            vips[host]["addresses"].append(check["address"])
        elif host in vips and check.get("prefix"):
            addr = check["prefix"].split("/")[0]
            if addr not in vips[host]["addresses"]:
                vips[host]["addresses"].append(addr)
    dup = sorted(n for n, k in Counter(s["name"] for s in services).items() if k > 1)
    if dup:
        raise RenderError(f"two checks share a name: {', '.join(dup)}")
    speakers = [f"{h['name']}=" + ",".join(a for a in (h["address"], h.get("address6")) if a)
                for h in mon["hosts"] if h["managed"]]
    return {"hosts": mon["hosts"], "vips": list(vips.values()), "services": services, "users": mon["users"],
            "contacts": mon.get("contacts", {}),
            "speakers": speakers, "intervals": {**INTERVALS, **mon.get("intervals", {})}}


def _probe(v: dict[str, Any]) -> dict[str, Any]:
    """A network check's vars (what its check_http, check_tcp or check_anycastlb_udp would be
    given) as a probe of the poller."""
    t = v["anycastlb_type"]
    if t == "tcp":
        return {"kind": "tcp", "address": v["tcp_address"], "port": v["tcp_port"]}
    if t == "udp":
        out = {"kind": "udp", "address": v["anycastlb_udp_address"], "port": v["anycastlb_udp_port"],
               "send": v["anycastlb_udp_send"], "timeout": UDP_TIMEOUT}
        if v.get("anycastlb_udp_dns"):
            out.update({"dns": v["anycastlb_udp_dns"], "dns_type": v["anycastlb_udp_dns_type"]})
        if v.get("anycastlb_udp_krb"):
            out["krb"] = v["anycastlb_udp_krb"]
        return out
    out = {"kind": "http", "address": v["http_address"], "port": v["http_port"], "vhost": v.get("http_vhost"),
           "uri": v["http_uri"], "tls": bool(v.get("http_ssl")), "sni": bool(v.get("http_sni")),
           "expect": [int(c) for c in v["http_expect"].split(",")] if v.get("http_expect") else None}
    if v.get("http_certificate"):   # check_http -C: the handshake and the certificate, no request
        warn, crit = (int(d) for d in v["http_certificate"].split(","))
        out.update({"kind": "certificate", "days": [warn, crit], "expect": None})
    return out


def poll_spec(services: list[dict[str, Any]], speakers: list[str], bird_socket: str) -> dict[str, Any]:
    """What ``check_anycastlb_poll`` evaluates: the passive checks, HAProxy's grouped by LB node,
    the network checks (http, https, certificates, tcp, udp) as probes.

    A name the external command syntax cannot carry (``;``, a line break) is refused here,
    at render time, rather than dropped by Icinga2 at run time.
    """
    nodes: dict[tuple[str, int], dict[str, Any]] = {}
    ann: list[dict[str, Any]] = []
    rrs: list[dict[str, Any]] = []
    probes: list[dict[str, Any]] = []
    for s in services:
        if not s["passive"]:
            continue
        if any(c in s["host"] + s["name"] for c in ";\n\r"):
            raise RenderError(f"check {s['name']!r} of host {s['host']!r}: ';' or a line break in a passive check's name")
        v, ref = s["vars"], {"host": s["host"], "service": s["name"]}
        if v["anycastlb_type"] == "haproxy-frontend":
            src = nodes.setdefault((v["anycastlb_address"], v["anycastlb_port"]), {
                "node": v["anycastlb_node"], "address": v["anycastlb_address"], "port": v["anycastlb_port"],
                "uri": HAPROXY_POLL_URI, "checks": []})
            src["checks"].append({**ref, "frontend": v["anycastlb_frontend"], "backend": v["anycastlb_backend"]})
        elif v["anycastlb_type"] == "announcers":
            ann.append({**ref, "prefix": v["anycastlb_prefix"], "expected": v["anycastlb_expected"]})
        elif v["anycastlb_type"] == "rr-sessions":
            rrs.append({**ref, "rr": v["anycastlb_rr"], "neighbors": v["anycastlb_neighbors"],
                        "expected": v["anycastlb_expected"]})
        else:
            probes.append({**ref, **_probe(v)})
    return {"haproxy": [nodes[k] for k in sorted(nodes)],
            "bird": {"socket": bird_socket, "speakers": speakers, "announcers": ann, "rr_sessions": rrs},
            "probes": probes}


@renderer("icinga2")
def render(model: dict[str, Any], secrets: dict[str, Any], root: str) -> list[RenderedFile]:
    """The Icinga2 configuration of a monitoring node, and the plugins it runs."""
    ctx = objects(model)
    mon = model["monitoring"]
    bird_socket = mon.get("bird_socket", BIRD_SOCKET)
    common = {"node": model["node"], "q": q, "plugin_dir": under(root, mon.get("plugin_dir", PLUGIN_DIR)),
              "bird_socket": bird_socket, "poll_spec": under(root, POLL_SPEC), "command_pipe": under(root, COMMAND_PIPE),
              "stats_uri": mon.get("haproxy_stats_uri", HAPROXY_STATS_URI), "udp_send": UDP_SEND,
              "udp_timeout": UDP_TIMEOUT, **ctx}
    standalone = mon.get("icinga", "standalone") == "standalone"
    files = []
    if standalone:   # conf.d mode: the site's icinga2.conf stays as it is
        files.append(template_file(f"{CONFDIR}/icinga2.conf", "icinga2/icinga2.conf.j2", **common))
    for name in ("00-base", "hosts", "services", "users"):
        files.append(template_file(f"{OURS}/{name}.conf", f"icinga2/{name}.conf.j2", **common))
    spec = poll_spec(ctx["services"], ctx["speakers"], bird_socket)
    files.append(RenderedFile(POLL_SPEC, json.dumps(spec, indent=1, sort_keys=True) + "\n", 0o644))
    if standalone:   # a site's own Livestatus feature would listen on the same socket
        files.append(template_file(f"{OURS}/status.conf", "icinga2/status.conf.j2", socket=LIVESTATUS_SOCKET))
    plugin_dir = mon.get("plugin_dir", PLUGIN_DIR)
    for src, dest in sorted(DEPLOYED.items()):
        files.append(RenderedFile(f"{plugin_dir}/{dest}", (_PLUGINS / src).read_text(encoding="utf-8"), 0o755))
    return files


#: Where the monitoring node answers Livestatus queries (check states for status tools).
LIVESTATUS_SOCKET = "/run/icinga2/cmd/livestatus"
#: Every service's state; :func:`parse_livestatus` reads the answer.
LIVESTATUS_QUERY = ("GET services\nColumns: host_name description state has_been_checked plugin_output\n"
                    "OutputFormat: json\n\n")
STATES = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}


def parse_livestatus(text: str) -> dict[str, dict[str, str]]:
    """``host!service`` → ``{"state", "output"}`` from a Livestatus JSON answer (PENDING if never checked)."""
    import json
    out: dict[str, dict[str, str]] = {}
    for host, desc, state, checked, output in json.loads(text or "[]"):
        out[f"{host}!{desc}"] = {"state": STATES.get(int(state), "UNKNOWN") if checked else "PENDING",
                                 "output": str(output)[:200]}
    return out


def check_command(staging: str) -> list[str]:
    """``icinga2 daemon -C`` on the staged tree, every runtime directory inside the staging root."""
    cmd = ["icinga2", "daemon", "-C", "-c", under(staging, f"{CONFDIR}/icinga2.conf"),
           f"-DConfigDir={under(staging, CONFDIR)}"]
    cmd += [f"-D{k}={under(staging, v)}" for k, v in RUNTIME_DIRS.items()]
    return cmd + ["-DRunAsUser=root", "-DRunAsGroup=root"]


def check(staging: str, files: list[RenderedFile]) -> CheckResult:
    """Validate the whole staged tree with Icinga2's own config compiler."""
    for d in RUNTIME_DIRS.values():
        os.makedirs(under(staging, d), exist_ok=True)
    cmd = check_command(staging)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError as exc:
        return CheckResult(False, " ".join(cmd), f"cannot run the checker: {exc}")
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        out = "\n".join(line for line in out.splitlines() if "critical/" in line or "Error" in line
                        or "Location" in line or "^" in line or line.startswith(("(", " "))) or out
    return CheckResult(proc.returncode == 0, " ".join(cmd), out.strip())


SPEC = DaemonSpec(
    name="icinga2",
    wanted=lambda model: bool(model.get("monitoring")),
    render=render,
    check=check,
    tree=(CONFDIR, "/var/lib/icinga2/certs"),
    # icinga2.conf is written in standalone mode only and never removed: in conf.d mode it is the site's
    owned=(f"{OURS}/*.conf", POLL_SPEC, f"{PLUGIN_DIR}/*"),
    leaves=(f"{CONFDIR}/icinga2.conf",),  # ours (standalone) only when it carries our header
    binary="icinga2",
    packages=("icinga2", "monitoring-plugins"),
)
