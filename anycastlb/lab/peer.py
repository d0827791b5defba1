"""The catalog's ``peers``: routers outside the fleet, fed by the route reflectors.

Each peer runs BIRD 2 (``bird -f``, the default) or FRR (``lab up --peer frr``: zebra,
bfdd and bgpd) in its namespace with eBGP sessions (its ``asn`` to the fleet's
``bgp.asn``) to every node with role ``route-reflector``, one over IPv4 and one over
IPv6, receiving every path (add-path receive), importing only host routes inside
``vip_pools`` and installing them as ECMP routes. BFD uses the catalog's ``bgp.bfd``
timers. Its files live in ``<statedir>/peers/<name>/``. docs/routers.md shows both
configurations for the campus catalog (a test keeps them equal to these renderers).
"""
from __future__ import annotations

import ipaddress
import json
import os
import pwd
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..poll import poll_until
from .catalog import LabCatalog, load

if TYPE_CHECKING:
    from .core import Lab


def duration_ms(value: object, default: int) -> int:
    """``100ms``, ``1s``, ``0.5s`` or a bare number of milliseconds → milliseconds."""
    if value is None:
        return default
    m = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s)?\s*", str(value))
    if not m:
        raise ValueError(f"bad duration {value!r}")
    n = float(m.group(1))
    return int(n * 1000) if m.group(2) == "s" else int(n)


def _ident(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def session_knobs(catalog: str | Path, peer: str) -> dict[str, object]:
    """How the route reflectors reach ``peer`` (``multihop``, ``bfd``, ``bfd_timers``), read from the
    compiled catalog: the peer router mirrors what the fleet's side was told."""
    from ..compiler import compile_catalog

    fleet = compile_catalog(catalog)
    for nid in fleet.nodes:
        bgp = fleet.nodes[nid]["bgp"]
        for nb in bgp["neighbors"] if bgp else []:
            if nb["kind"] == "peer" and nb["name"] == peer:
                return {"multihop": nb["multihop"], "bfd": nb["bfd"], "bfd_timers": nb["bfd_timers"]}
    return {"multihop": False, "bfd": True, "bfd_timers": None}


def _bfd_timers(cat: LabCatalog, knobs: dict[str, object] | None) -> tuple[int, int]:
    own = (knobs or {}).get("bfd_timers")
    if isinstance(own, dict):
        return int(own["interval_ms"]), int(own["multiplier"])
    return duration_ms(cat.bfd.get("interval"), 100), int(cat.bfd.get("multiplier", 3))


def render(cat: LabCatalog, peer: str, log: Path | None = None, knobs: dict[str, object] | None = None,
           table: int | None = None) -> str:
    """The BIRD 2 configuration of peer router ``peer`` (``knobs``: :func:`session_knobs`; default: a
    direct session with the fleet's BFD timers; ``table``: the kernel protocols export there instead
    of ``main``, for the resilient mode's syncer, :mod:`anycastlb.lab.resilient`)."""
    me = cat.peers[peer]
    if cat.asn is None or me.asn is None:
        raise ValueError("the lab's peers need bgp.asn and an asn on every peer")
    pools4 = [ipaddress.ip_network(p) for p in cat.vip_pools if ipaddress.ip_network(p).version == 4]
    pools6 = [ipaddress.ip_network(p) for p in cat.vip_pools if ipaddress.ip_network(p).version == 6]
    bfd_int, bfd_mult = _bfd_timers(cat, knobs)
    multihop = bool((knobs or {}).get("multihop"))
    bfd = bool((knobs or {}).get("bfd", True))
    set4 = ", ".join(f"{p}+" for p in pools4) or "0.0.0.0/32"
    set6 = ", ".join(f"{p}+" for p in pools6) or "::/128"
    out = [
        f"# anycastlb lab: peer router {peer} (AS {me.asn}); generated, do not edit",
        f'log "{log}" all;' if log else "log stderr all;",
        f"router id {me.address};",
        "",
        f"define VIP_POOLS4 = [ {set4} ];",
        f"define VIP_POOLS6 = [ {set6} ];",
        "",
        "filter vip_only {",
        "  if net.type = NET_IP4 && net ~ VIP_POOLS4 then accept;",
        "  if net.type = NET_IP6 && net ~ VIP_POOLS6 then accept;",
        "  reject;",
        "}",
        "",
        "protocol device { scan time 10; }",
        "",
        "protocol kernel kernel4 {",
        *([f"  kernel table {table};"] if table else []),
        "  ipv4 { import none; export all; };",
        "  merge paths on;",
        "}",
        "protocol kernel kernel6 {",
        *([f"  kernel table {table};"] if table else []),
        "  ipv6 { import none; export all; };",
        "  merge paths on;",
        "}",
        "",
        "protocol bfd {",
        ('  multihop {' if multihop else '  interface "*" {'),
        f"    interval {bfd_int} ms;",
        f"    multiplier {bfd_mult};",
        "  };",
        "}",
        "",
        "template bgp fleet {",
        f"  local as {me.asn};",
        "  bfd on;" if bfd else "  bfd off;",
        *(["  multihop;"] if multihop else []),
        "  connect delay time 1;",
        "  connect retry time 2;",
        "  error wait time 1, 5;",
        "  hold time 6;",
        "  keepalive time 2;",
        "}",
    ]
    for rr in cat.with_role("route-reflector"):
        out += [
            "",
            f"protocol bgp fleet_{_ident(rr.name)}_v4 from fleet {{",
            f"  neighbor {rr.address} as {cat.asn};",
            f"  source address {me.address};",
            "  ipv4 { import filter vip_only; export none; add paths rx; };",
            "}",
        ]
        if rr.address6 and me.address6:
            out += [
                f"protocol bgp fleet_{_ident(rr.name)}_v6 from fleet {{",
                f"  neighbor {rr.address6} as {cat.asn};",
                f"  source address {me.address6};",
                "  ipv6 { import filter vip_only; export none; add paths rx; };",
                "}",
            ]
    return "\n".join(out) + "\n"


FRR_DIR = "/usr/lib/frr"
#: FRR's daemons in start order (bgpd and bfdd talk to zebra; bgpd asks bfdd for BFD sessions).
FRR_DAEMONS = ("zebra", "bfdd", "bgpd")


def render_frr(cat: LabCatalog, peer: str, knobs: dict[str, object] | None = None) -> dict[str, str]:
    """FRR's configuration of peer router ``peer``: ``{daemon: config}`` for zebra, bfdd and bgpd
    (``knobs`` as for :func:`render`)."""
    me = cat.peers[peer]
    if cat.asn is None or me.asn is None:
        raise ValueError("the lab's peers need bgp.asn and an asn on every peer")
    pools = [ipaddress.ip_network(p) for p in cat.vip_pools]
    bfd_int, bfd_mult = _bfd_timers(cat, knobs)
    multihop = bool((knobs or {}).get("multihop"))
    bfd = bool((knobs or {}).get("bfd", True))
    head = [f"! anycastlb lab: peer router {peer} (AS {me.asn}); generated, do not edit", "frr defaults traditional",
            f"hostname {peer}", "!"]
    zebra = head[:]
    bfdd = head + ["bfd", " profile fleet", f"  detect-multiplier {bfd_mult}", f"  receive-interval {bfd_int}",
                   f"  transmit-interval {bfd_int}", " exit", "exit", "!"]
    bgpd = head[:]
    for p in pools:   # host routes inside vip_pools only
        kw, plen = ("ip", 32) if p.version == 4 else ("ipv6", 128)
        bgpd.append(f"{kw} prefix-list VIP_POOLS{p.version} permit {p} ge {plen}")
    bgpd += ["!", "route-map FLEET_IN permit 10", " match ip address prefix-list VIP_POOLS4", "exit",
             "route-map FLEET_IN permit 20", " match ipv6 address prefix-list VIP_POOLS6",
             " set ipv6 next-hop prefer-global", "exit",
             "route-map FLEET_OUT deny 10", "exit", "!",
             f"router bgp {me.asn}", f" bgp router-id {me.address}", " no bgp default ipv4-unicast",
             " timers bgp 2 6"]
    sessions: list[tuple[str, int]] = []
    for rr in cat.with_role("route-reflector"):
        sessions.append((rr.address, 4))
        if rr.address6 and me.address6:
            sessions.append((rr.address6, 6))
    for addr, _ in sessions:
        bgpd += [f" neighbor {addr} remote-as {cat.asn}",
                 *([f" neighbor {addr} ebgp-multihop 8"] if multihop else []),
                 *([f" neighbor {addr} bfd profile fleet"] if bfd else []),
                 f" neighbor {addr} timers connect 2"]
    for version, afi in ((4, "ipv4"), (6, "ipv6")):
        members = [a for a, v in sessions if v == version]
        if not members:
            continue
        bgpd += [" !", f" address-family {afi} unicast", "  maximum-paths 64"]
        for addr in members:
            bgpd += [f"  neighbor {addr} activate", f"  neighbor {addr} route-map FLEET_IN in",
                     f"  neighbor {addr} route-map FLEET_OUT out"]
        bgpd.append(" exit-address-family")
    bgpd += ["exit", "!"]
    return {"zebra": "\n".join(zebra) + "\n", "bfdd": "\n".join(bfdd) + "\n", "bgpd": "\n".join(bgpd) + "\n"}


_FRR_ERRORS = re.compile(r"No such command|Command incomplete|Ambiguous command|Command not allowed|"
                         r"processing failure|Invalid|[Ee]rror|can't open|failed to open")


def frr_check(daemon: str, conf: Path) -> str:
    """``<daemon> -C -f CONF``; what it refused ('' if nothing). FRR exits 0 even on an unknown
    command or a file it cannot open, so its messages are read; the check runs on a copy user
    frr can read."""
    with tempfile.TemporaryDirectory(prefix="aclb-frr-check-", dir="/tmp") as d:
        os.chmod(d, 0o755)
        copy = Path(d) / f"{daemon}.conf"
        copy.write_text(Path(conf).read_text())
        copy.chmod(0o644)
        chk = subprocess.run([f"{FRR_DIR}/{daemon}", "-C", "-f", str(copy), "-u", "frr", "-g", "frr"],
                             capture_output=True, text=True, timeout=30)
    out = (chk.stdout + chk.stderr).strip()
    bad = [line for line in out.splitlines() if _FRR_ERRORS.search(line)]
    return "\n".join(bad) if bad or chk.returncode != 0 else ""


def vtysh(lab: "Lab", peer: str, *commands: str, timeout: float = 10) -> str:
    """Run ``vtysh -c CMD ...`` against ``peer``'s FRR and return its output."""
    args = [a for c in commands for a in ("-c", c)]
    r = subprocess.run(["vtysh", "--vty_socket", str(peer_dir(lab, peer)), *args], capture_output=True, text=True,
                       timeout=timeout)
    return r.stdout + r.stderr


def bgp_paths(lab: "Lab", peer: str, prefix: str) -> list[str]:
    """Next hops of every BGP path ``peer``'s FRR holds for ``prefix`` (``show bgp ... json``)."""
    afi = "ipv6" if ":" in prefix else "ipv4"
    out = vtysh(lab, peer, f"show bgp {afi} unicast {prefix} json")
    try:
        data = json.loads(out)
    except ValueError:
        return []
    hops = []
    for path in data.get("paths", []):
        for nh in path.get("nexthops", [])[:1]:
            hops.append(nh.get("ip", ""))
    return hops


def start_frr_peer(lab: "Lab", peer: str, cat: LabCatalog | None = None, wait: float = 15.0) -> int:
    """Write, check (``-C``) and start ``peer``'s FRR daemons; wait until bgpd answers; return bgpd's PID."""
    cat = cat or load(lab.catalog)
    d = peer_dir(lab, peer)
    d.mkdir(parents=True, exist_ok=True)
    frr = pwd.getpwnam("frr")
    os.chown(d, frr.pw_uid, frr.pw_gid)   # FRR's daemons drop to user frr: sockets, pid files, logs
    for parent in d.parents:   # ... and must traverse the lab's state dir (mkdtemp makes it 0700)
        if parent in (Path("/var/tmp"), Path("/tmp")) or not str(parent).startswith(("/var/tmp/", "/tmp/")):
            continue
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod((mode & 0o7777) | 0o011)
    confs = render_frr(cat, peer, session_knobs(lab.catalog, peer))
    pid = 0
    for daemon in FRR_DAEMONS:
        conf = d / f"{daemon}.conf"
        conf.write_text(confs[daemon])
        problems = frr_check(daemon, conf)
        if problems:
            raise RuntimeError(f"peer {peer}: {daemon} -C refused {conf}: {problems}")
        argv = [f"{FRR_DIR}/{daemon}", "-f", str(conf), "-i", str(d / f"{daemon}.pid"), "-z", str(d / "zserv.api"),
                "--vty_socket", str(d), "-u", "frr", "-g", "frr", "-P", "0", "--log", f"file:{d / daemon}.log"]
        if daemon == "bfdd":
            argv += ["--bfdctl", str(d / "bfdd.sock")]
        pid = lab.spawn(peer, argv, f"frr-{daemon}")
        deadline = time.monotonic() + wait
        while not (d / f"{daemon}.vty").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"peer {peer}: FRR {daemon} did not start within {wait}s (see {d / daemon}.log)")
            time.sleep(0.1)
    deadline = time.monotonic() + wait
    while "BGP router identifier" not in vtysh(lab, peer, "show bgp summary", timeout=5):
        if time.monotonic() > deadline:
            raise RuntimeError(f"peer {peer}: bgpd did not answer within {wait}s (see {d / 'bgpd.log'})")
        time.sleep(0.2)
    return pid


def peer_dir(lab: "Lab", peer: str) -> Path:
    """Host-side directory of one peer's BIRD files."""
    return lab.statedir / "peers" / peer


def birdc(lab: "Lab", peer: str, *args: str, timeout: float = 10) -> str:
    """Run ``birdc`` against ``peer``'s BIRD and return its output."""
    sock = peer_dir(lab, peer) / "bird.ctl"
    r = subprocess.run(["birdc", "-s", str(sock), *args], capture_output=True, text=True, timeout=timeout)
    return r.stdout + r.stderr


def start_peer(lab: "Lab", peer: str, cat: LabCatalog | None = None, wait: float = 10.0) -> int:
    """Write, check and start ``peer``'s BIRD; wait until it answers on its socket; return its PID."""
    cat = cat or load(lab.catalog)
    d = peer_dir(lab, peer)
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "bird.conf"
    conf.write_text(render(cat, peer, d / "bird.log", session_knobs(lab.catalog, peer)))
    chk = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True)
    if chk.returncode != 0:
        raise RuntimeError(f"peer {peer}: bird -p failed: {chk.stderr.strip()}")
    pid = lab.spawn(peer, ["bird", "-f", "-c", str(conf), "-s", str(d / "bird.ctl"),
                           "-P", str(d / "bird.pid")], "bird")
    if poll_until(lambda: "BIRD" in birdc(lab, peer, "show", "status", timeout=2)
                  and "ready" in birdc(lab, peer, "show", "status"), timeout=wait, interval=0.1).done:
        return pid
    raise RuntimeError(f"peer {peer}: BIRD did not answer within {wait}s (see {d / 'bird.log'})")


PEER_MODES = ("plain", "resilient")


def set_mode(lab: "Lab", peer: str, mode: str, wait: float = 10.0) -> None:
    """Switch ``peer``'s BIRD between ``plain`` (ECMP routes in ``main``, as BIRD writes them) and
    ``resilient`` (BIRD exports to table :data:`~anycastlb.lab.resilient.TABLE`, the syncer mirrors
    it into ``main`` through resilient nexthop groups). BIRD restarts its kernel protocols, so
    the routes are missing for a moment: switch between measurements, not during one."""
    from . import resilient
    from .salt import PYTHON

    if mode not in PEER_MODES:
        raise ValueError(f"unknown peer mode {mode!r} ({', '.join(PEER_MODES)})")
    d = peer_dir(lab, peer)
    conf = d / "bird.conf"
    table = resilient.TABLE if mode == "resilient" else None
    conf.write_text(render(load(lab.catalog), peer, d / "bird.log", session_knobs(lab.catalog, peer), table))
    if mode == "resilient":
        lab.spawn(peer, [PYTHON, "-m", "anycastlb.lab.resilient", str(resilient.TABLE)], "resilient",
                  cwd=str(lab.repo))
    else:
        lab.stop(peer, "resilient")
    out = birdc(lab, peer, "configure")
    if "Reconfigur" not in out:
        raise RuntimeError(f"peer {peer}: birdc configure: {out.strip()}")
    if mode == "plain":   # the syncer's routes and groups go; BIRD's own come back into main
        lab.exec(peer, ["ip", "nexthop", "flush"])
    lab.meta.setdefault("peer_modes", {})[peer] = mode
    lab.save()

    def routed() -> bool:
        r = lab.exec(peer, ["ip", "-j", "route", "show", "table", "main"]).stdout
        return any(("nhid" in x) == (mode == "resilient") for x in json.loads(r or "[]") if x.get("protocol") != "kernel"
                   and x.get("dst", "").startswith("192.0.2."))
    if not poll_until(routed, timeout=wait, interval=0.1).done:
        raise RuntimeError(f"peer {peer}: the routes did not come back in {mode} mode within {wait} s")


PEER_KINDS = ("bird", "frr")


def start_peers(lab: "Lab", kind: str = "bird") -> dict[str, int]:
    """Start BIRD (or FRR: ``kind="frr"``) on every peer router of the lab; return their (bgpd's) PIDs."""
    if kind not in PEER_KINDS:
        raise ValueError(f"unknown peer router {kind!r} ({', '.join(PEER_KINDS)})")
    cat = load(lab.catalog)
    start = start_frr_peer if kind == "frr" else start_peer
    return {p: start(lab, p, cat) for p in lab.peers}
