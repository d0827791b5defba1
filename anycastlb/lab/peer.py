"""The catalog's ``peers``: BIRD 2 routers outside the fleet, fed by the route reflectors.

Each peer runs ``bird -f`` in its namespace with eBGP sessions (its ``asn`` to the
fleet's ``bgp.asn``) to every node with role ``route-reflector``, one over IPv4 and one
over IPv6, receiving every path (``add paths rx``), importing only prefixes inside
``vip_pools`` and installing them as ECMP routes (``merge paths on``). BFD uses the
catalog's ``bgp.bfd`` timers. Its files live in ``<statedir>/peers/<name>/``.
"""
from __future__ import annotations

import ipaddress
import re
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

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


def render(cat: LabCatalog, peer: str, log: Path | None = None) -> str:
    """The BIRD 2 configuration of peer router ``peer``."""
    me = cat.peers[peer]
    if cat.asn is None or me.asn is None:
        raise ValueError("the lab's peers need bgp.asn and an asn on every peer")
    pools4 = [ipaddress.ip_network(p) for p in cat.vip_pools if ipaddress.ip_network(p).version == 4]
    pools6 = [ipaddress.ip_network(p) for p in cat.vip_pools if ipaddress.ip_network(p).version == 6]
    bfd_int = duration_ms(cat.bfd.get("interval"), 100)
    bfd_mult = int(cat.bfd.get("multiplier", 3))
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
        "  ipv4 { import none; export all; };",
        "  merge paths on;",
        "}",
        "protocol kernel kernel6 {",
        "  ipv6 { import none; export all; };",
        "  merge paths on;",
        "}",
        "",
        "protocol bfd {",
        '  interface "*" {',
        f"    interval {bfd_int} ms;",
        f"    multiplier {bfd_mult};",
        "  };",
        "}",
        "",
        "template bgp fleet {",
        f"  local as {me.asn};",
        "  bfd on;",
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
    conf.write_text(render(cat, peer, d / "bird.log"))
    chk = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True)
    if chk.returncode != 0:
        raise RuntimeError(f"peer {peer}: bird -p failed: {chk.stderr.strip()}")
    pid = lab.spawn(peer, ["bird", "-f", "-c", str(conf), "-s", str(d / "bird.ctl"),
                           "-P", str(d / "bird.pid")], "bird")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if "BIRD" in birdc(lab, peer, "show", "status", timeout=2) and "ready" in birdc(lab, peer, "show", "status"):
            return pid
        time.sleep(0.1)
    raise RuntimeError(f"peer {peer}: BIRD did not answer within {wait}s (see {d / 'bird.log'})")


def start_peers(lab: "Lab") -> dict[str, int]:
    """Start BIRD on every peer router of the lab; return their PIDs."""
    cat = load(lab.catalog)
    return {p: start_peer(lab, p, cat) for p in lab.peers}
