"""What a node keeps that the catalog no longer gives it: ``leftovers(lab, node) -> list[str]``.

After a change is deployed (``anycastlb lab deploy``), "nothing left behind" (issue 13) means,
for every node, against the catalog the lab's master now reads:

* no address of the VIP pools on ``lo`` that the node does not announce;
* no route at the peers or the route reflectors through the node for a prefix it does not announce;
* every config file anycastlb renders for the node is on the node exactly as rendered (so no
  frontend, backend, vhost, firewall rule or Icinga object more, nor one less), no other file
  of the daemon's own (its ``owned`` globs), and no anycastlb config of a daemon it no longer runs;
* no process (direct lab) or active or enabled unit (``--init systemd``) of a daemon it no longer runs;
* for a node gone from the catalog: no other node's config still names it or its addresses.

Each finding is one line naming the node and what is left. The lab tests and the benchmarks
call it after each deploy; ``leftovers_everywhere`` checks every host at once.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import yaml

from ..compiler import Fleet, compile_catalog
from ..render import HEADER, daemons
from ..service import services
from . import catalog as cat_mod
from .salt import PYTHON

if TYPE_CHECKING:
    from .core import Lab

#: The process name (``comm``) of each daemon with a process; healthd is found by its module.
PROCESS = {"haproxy": "haproxy", "bird": "bird", "apache2": "apache2", "icinga2": "icinga2"}
HEALTHD_MODULE = "anycastlb.healthd_main"

# Runs in a node: {"paths": [...], "globs": [...]} on stdin -> {path: text or null} (glob matches included).
_READ = r"""
import glob, json, sys
req = json.load(sys.stdin)
paths = list(req["paths"]) + [p for g in req["globs"] for p in sorted(glob.glob(g))]
out = {}
for p in paths:
    try:
        with open(p, encoding="utf-8", errors="replace") as fh:
            out[p] = fh.read()
    except OSError:
        out[p] = None
print(json.dumps(out))
"""


def read_files(lab: "Lab", node: str, paths: Iterable[str], globs: Iterable[str] = ()) -> dict[str, str | None]:
    """Path → text (None: absent) of ``paths`` and of every file matching ``globs``, as ``node`` sees them."""
    r = lab.exec(node, [PYTHON, "-c", _READ], input=json.dumps({"paths": sorted(set(paths)), "globs": list(globs)}),
                 timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"{node}: reading its files failed: {r.stderr.strip()[-500:]}")
    data: dict[str, str | None] = json.loads(r.stdout)
    return data


def lab_secrets(lab: "Lab") -> dict[str, Any]:
    """The secrets the lab's pillar serves (``<statedir>/secrets.yaml``), in the renderers' shape."""
    path = lab.statedir / "secrets.yaml"
    data = yaml.safe_load(path.read_text()) if path.exists() else {}
    return {"certificates": (data or {}).get("certificates") or {}, "bgp_passwords": (data or {}).get("bgp_passwords") or {}}


def _first_diff(old: str, new: str) -> str:
    """The first changed lines of ``old`` (live) against ``new`` (rendered), ``-`` live ``+`` rendered."""
    lines = [ln for ln in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0)
             if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    return "; ".join(ln.strip()[:90] for ln in lines[:4]) + (" ..." if len(lines) > 4 else "")


def _vips_on_lo(lab: "Lab", node: str, model: Any, pools: list[Any]) -> list[str]:
    r = lab.exec(node, ["ip", "-j", "addr", "show", "dev", "lo"], timeout=20)
    wanted = {ipaddress.ip_address(v["address"]) for v in ((model or {}).get("bgp") or {}).get("vips", [])}
    out = []
    for link in json.loads(r.stdout or "[]"):
        for a in link.get("addr_info", []):
            ip = ipaddress.ip_address(a["local"])
            if ip not in wanted and any(ip.version == p.version and ip in p for p in pools):
                out.append(f"{node}: VIP {ip} still on lo")
    return out


def _routes(lab: "Lab", fleet: Fleet, node: str, announce: set[str]) -> list[str]:
    """Prefixes the peers' BIRDs and the route reflectors carry through ``node`` that it does not announce."""
    from ..answers.bird import carried_via, parse_routes
    from .peer import birdc

    h = lab.host(node)
    mine = [a for a in (h.address, h.address6) if a]
    views: dict[str, str] = {}
    if lab.meta.get("peer_router", "bird") == "bird":
        for p in lab.peers:
            views[p] = birdc(lab, p, "show", "route", "all", timeout=20)
    for rr, m in fleet.nodes.items():
        if "route-reflector" in m["roles"] and rr != node:
            views[rr] = lab.exec(rr, ["birdc", "-s", "/run/bird/bird.ctl", "show", "route", "all"], timeout=20).stdout
    return [f"{node}: {where} still routes {prefix} through it"
            for where, text in views.items() for prefix in carried_via(parse_routes(text), mine)
            if prefix not in announce]


def _running(lab: "Lab", node: str, daemon: str) -> list[str]:
    """What still runs (or is enabled) of ``daemon`` in ``node``."""
    svc = services().get(daemon)
    if svc is None:
        return []
    if svc.oneshot:  # nftables: the table loaded in the node's network namespace
        r = lab.exec(node, list(svc.probe), timeout=20)
        return [f"{node}: {daemon} still loaded ({' '.join(svc.probe)})"] if r.returncode == 0 else []
    if lab.init == "systemd":
        out = []
        for verb in ("is-active", "is-enabled"):
            r = lab.exec(node, ["systemctl", verb, svc.unit], timeout=20)
            state = r.stdout.strip()
            if state in ("active", "activating", "reloading", "enabled", "enabled-runtime"):
                out.append(f"{node}: {svc.unit} is {state}")
        return out
    from . import nodefs, proc

    inode = proc.ns_inode(nodefs.mnt_file(lab.statedir, node))
    found = []
    for pid in proc.mntns_pids({inode} if inode is not None else set()):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (daemon == "healthd" and HEALTHD_MODULE in cmdline) or comm == PROCESS.get(daemon):
            found.append(pid)
    return [f"{node}: {daemon} still runs (pid {', '.join(map(str, sorted(found)))})"] if found else []


def _private(lab: "Lab", path: str) -> bool:
    """Whether ``path`` is the node's own (a booted node's whole tree; else the private trees of
    :mod:`anycastlb.lab.nodefs`: ``/etc``, ``/var/lib``, ``/var/www``, ``/run`` ...)."""
    from . import nodefs

    return lab.init == "systemd" or any(path == d or path.startswith(d + "/")
                                        for d in (*nodefs.OVERLAYS, *nodefs.BINDS))


def _files(lab: "Lab", fleet: Fleet, node: str, model: Any, secrets: dict[str, Any]) -> list[str]:
    """Rendered files against the live ones; the files of daemons the node no longer runs."""
    rendered: dict[str, Any] = {}
    for d in daemons():
        if model is not None and d.wanted(model):
            rendered.update({f.path: (d.name, f) for f in d.render(model, secrets, "/")})
    # Where each daemon's files are on the nodes that run it (a lost daemon's files are looked for there).
    elsewhere = {f.path: d.name for d in daemons() for n, m in fleet.nodes.items() if n != node and d.wanted(m)
                 for f in d.render(m, secrets, "/")}
    owned = [g for d in daemons() for g in d.owned]
    live = read_files(lab, node, set(rendered) | set(elsewhere), owned)
    out = []
    for path, text in sorted(live.items()):
        if path not in rendered and not _private(lab, path):
            continue  # the namespace lab shares this tree between its nodes: not this node's to have
        if path in rendered:
            name, f = rendered[path]
            if text is None:
                out.append(f"{node}: {path} ({name}) missing")
            elif text != f.content:
                detail = "" if f.secret else f": {_first_diff(text, f.content)}"
                out.append(f"{node}: {path} ({name}) differs from the catalog's{detail}")
        elif text is not None and HEADER in text:
            out.append(f"{node}: {path} ({elsewhere.get(path) or 'anycastlb'}) left behind")
    return out


def _mentions(lab: "Lab", fleet: Fleet, node: str, secrets: dict[str, Any]) -> list[str]:
    """Other nodes' live configs that still name ``node`` (gone from the catalog) or its addresses."""
    h = lab.host(node)
    words = [node] + [a for a in (h.address, h.address6) if a]
    pattern = re.compile("|".join(rf"(?<![\w.:-]){re.escape(w)}(?![\w.:-]|/(?!32|128))" for w in words))
    out = []
    for other, m in fleet.nodes.items():
        paths = {f.path for d in daemons() if d.wanted(m) for f in d.render(m, secrets, "/")}
        for path, text in sorted(read_files(lab, other, paths).items()):
            if text and (hit := pattern.search(text)):
                out.append(f"{node}: {other}'s {path} still names {hit.group(0)}")
    return out


def leftovers(lab: "Lab", node: str, fleet: Fleet | None = None, secrets: dict[str, Any] | None = None) -> list[str]:
    """Everything ``node`` (or, if the catalog no longer has it, any other host) keeps that the lab's
    current catalog does not give it, one line each; empty when nothing is left behind."""
    fleet = fleet if fleet is not None else compile_catalog(lab.catalog)
    secrets = secrets if secrets is not None else lab_secrets(lab)
    model: Any = fleet.nodes.get(node)
    pools = [ipaddress.ip_network(p) for p in cat_mod.load(lab.catalog).vip_pools]
    bgp: Any = (model or {}).get("bgp") or {}
    announce = set(bgp.get("announce") or []) if bgp.get("role") == "speaker" else set()
    out = _vips_on_lo(lab, node, model, pools)
    out += _routes(lab, fleet, node, announce)
    out += _files(lab, fleet, node, model, secrets)
    for d in daemons():
        if model is None or not d.wanted(model):
            out += _running(lab, node, d.name)
    if model is None:
        out += _mentions(lab, fleet, node, secrets)
    return out


def leftovers_everywhere(lab: "Lab", nodes: Iterable[str] | None = None) -> list[str]:
    """:func:`leftovers` of ``nodes`` (default: every node of the lab, in the catalog or not)."""
    fleet = compile_catalog(lab.catalog)
    secrets = lab_secrets(lab)
    return [line for n in (nodes if nodes is not None else lab.nodes) for line in leftovers(lab, n, fleet, secrets)]


__all__ = ["leftovers", "leftovers_everywhere", "read_files", "lab_secrets"]
