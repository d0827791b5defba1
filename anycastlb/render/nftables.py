"""nftables: one table of our own (``table inet anycastlb``), replaced whole on every apply.

The file creates, deletes and re-creates the table in one ``nft -f`` transaction, so
re-applying swaps the ruleset atomically and leaves every other table on the host
alone. The input chain drops by default; established/related, loopback and the ICMP
and ICMPv6 a network needs (echo, unreachable/packet-too-big, time-exceeded,
parameter-problem, neighbour discovery) are accepted, then every rule of
``model["firewall"]`` with its comment (the site's own ``firewall.accept`` rules among
them). A node whose firewall is ``unmanaged`` gets no file and nothing is loaded.

Flow steering (``model["steering"]``, docs/steering.md) goes into the same file and
transaction, in tables of its own (``table ip anycastlb_steer``, ``table ip6
anycastlb_steer``: nft refuses ``dup`` in an ``inet`` table), always deleted and made
again, so turning steering off removes them.

Pooled frontends with an ``anchor`` (docs/traffic.md) get their VIPs' connections through the
``pools`` chain (hook prerouting): a tcp packet to a pool's VIP and port that has a socket of its
own (an open connection, or a VIP HAProxy still binds by itself) is left alone; any other goes to
the pool's loopback listener (``tproxy``), keeping its destination. Rules for a pool whose
listener is not there yet do nothing (no socket: the packet goes on as if there were no rule).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from typing import Any

from ..service import NFT_TABLE, PREVIOUS_POOLS, Service
from . import CheckResult, DaemonSpec, RenderedFile, RenderError, renderer, template_file, under
from .haproxy import listeners
from .quote import Quoted, ip, nft_comment, port

PATH = "/etc/nftables.d/anycastlb.nft"
TABLE = NFT_TABLE
STEER_TABLE = "anycastlb_steer"
#: A steered copy leaves with this hop limit (set to 2 before ``dup``, which takes one off
#: in the input hook): the peers recognise copies by it, and no router forwards one.
COPY_HOPS = 1

# There is no process: the kernel holds the ruleset. Loading the file replaces our table
# whole; the probe exits 0 while our table is loaded.
SERVICE = Service(name="nftables", unit="", command=("nft", "-f", PATH), paths=(PATH,), pidfile="",
                  oneshot=True, probe=("nft", "list", "table", "inet", TABLE),
                  # every table of ours, each made first so that deleting one that is not there cannot fail
                  unload=("nft", "; ".join(f"table {t} {{}}; delete table {t}" for t in
                                           (f"inet {TABLE}", f"inet {PREVIOUS_POOLS}", f"ip {STEER_TABLE}",
                                            f"ip6 {STEER_TABLE}"))))

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _split(prefixes: list[str]) -> dict[str, list[str]]:
    """Prefixes split by family, ``{"ip": [...], "ip6": [...]}``, without overlapping set elements.

    An address or prefix inside another listed prefix is left out (nft refuses
    overlapping intervals); neighbours are not merged, so every listed host stays
    readable in the ruleset.
    """
    nets: dict[int, set[Net]] = {4: set(), 6: set()}
    for p in prefixes:
        net = ipaddress.ip_network(p, strict=False)
        nets[net.version].add(net)
    out: dict[str, list[str]] = {}
    for version, key in ((4, "ip"), (6, "ip6")):
        group = nets[version]
        kept = sorted((n for n in group if not any(o != n and n.subnet_of(o) for o in group)),  # type: ignore[arg-type]
                      key=lambda n: (n.network_address, n.prefixlen))
        out[key] = [str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n) for n in kept]
    return out


def _set(items: list[str] | list[int]) -> str:
    """An nft anonymous set, or the bare element when there is only one."""
    texts = [str(i) for i in items]
    return texts[0] if len(texts) == 1 else "{ " + ", ".join(texts) + " }"


_PROTOCOLS = ("tcp", "udp", "icmp", "icmpv6", "sctp")


def rule_lines(rule: dict[str, Any]) -> list[Quoted]:
    """The nft statements for one model rule (one per address family it applies to)."""
    src = _split(rule["sources"])
    dst = _split(rule["destinations"])
    proto = rule["protocol"]
    if proto not in _PROTOCOLS:
        raise RenderError(f"firewall protocol {proto!r} is not one of {', '.join(_PROTOCOLS)}")
    ports = sorted({int(port(p)) for p in rule["ports"]})
    comment = f'accept comment {nft_comment(rule["comment"])}'
    if proto == "icmp":   # every ICMP type; IPv6's is ipv6-icmp
        l4 = {"ip": "meta l4proto icmp", "ip6": "meta l4proto ipv6-icmp"}
    else:
        l4 = dict.fromkeys(("ip", "ip6"), f"{proto} dport {_set(ports)}" if ports else f"meta l4proto {proto}")
    if not rule["sources"] and not rule["destinations"] and proto != "icmp":
        return [Quoted(f"{l4['ip']} {comment}")]
    lines = []
    for fam in ("ip", "ip6"):
        if rule["sources"] and not src[fam]:
            continue
        if rule["destinations"] and not dst[fam]:
            continue
        parts = []
        if src[fam]:
            parts.append(f"{fam} saddr {_set(src[fam])}")
        if dst[fam]:
            parts.append(f"{fam} daddr {_set(dst[fam])}")
        lines.append(Quoted(" ".join(parts + [l4[fam], comment])))
    return lines


_HOPS = {"ip": "ip ttl", "ip6": "ip6 hoplimit"}


_TPROXY = {4: ("ip", "tproxy ip to"), 6: ("ip6", "tproxy ip6 to")}


def pool_rules(haproxy: dict[str, Any] | None) -> list[Quoted]:
    """The ``pools`` chain's rules: per anchored pool and address family, a packet with a socket of its
    own is accepted as it is, any other one is handed to the pool's listener (``tproxy``)."""
    lines = []
    for fe in (haproxy or {}).get("frontends") or []:
        if not fe.get("anchor"):
            continue
        comment = nft_comment(fe["name"])
        for address, anchor in listeners(fe):
            version = ipaddress.ip_address(address).version
            fam, tproxy = _TPROXY[version]
            vips = sorted({str(ip(v)) for v in fe["binds"] if ipaddress.ip_address(v).version == version},
                          key=ipaddress.ip_address)
            match = f"{fam} daddr {_set(vips)} tcp dport {int(port(fe['port']))}"
            lines.append(Quoted(f"{match} socket transparent 1 accept comment {comment}"))
            target = f"[{ip(address)}]" if version == 6 else ip(address)
            lines.append(Quoted(f"{match} {tproxy} {target}:{int(port(anchor))} accept comment {comment}"))
    return lines


def steering_tables(steering: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per family (``ip``, ``ip6``) the steering chains: one per group with VIPs and peers there.

    Each chain has two rules: a copy from a peer (hop limit 1) of a flow this node does not
    own is dropped; any other packet of a flow it does not own goes to every peer (``dup``,
    hop limit 1 on the copies) and the original is dropped. The ``input`` chain sends there
    the packets to the group's VIPs and tcp ports that are not a SYN and that conntrack
    does not know (``new``: picked up mid-stream; ``invalid``: a FIN or RST of no flow).
    """
    out = []
    for fam, vkey, akey in (("ip", "vips4", "address"), ("ip6", "vips6", "address6")):
        chains = []
        for i, g in enumerate((steering or {}).get("groups") or []):
            peers = [ip(p[akey]) for p in g["peers"] if p.get(akey)]
            if not g[vkey] or not peers or not g["ports"]:
                continue
            ports = sorted({int(port(p)) for p in g["ports"]})
            name = f"steer{i}"
            hops = _HOPS[fam]
            chains.append({
                "name": name,
                "comment": nft_comment(g["name"]),
                "match": Quoted(f"{fam} daddr {_set([str(ip(v)) for v in g[vkey]])} tcp dport {_set(ports)} "
                                f"tcp flags & (syn | ack) != syn ct state new,invalid"),
                "marked": Quoted(f"{hops} {COPY_HOPS}"),
                "send": Quoted(f"{hops} set {COPY_HOPS + 1} counter " + " ".join(f"dup to {p}" for p in peers)),
            })
        out.append({"family": fam, "chains": chains})
    return out


@renderer("nftables", PATH)
def render(model: dict[str, Any], secrets: dict[str, Any], root: str) -> list[RenderedFile]:
    """``/etc/nftables.d/anycastlb.nft`` for this node."""
    fw = model["firewall"]
    if fw["policy"] not in ("drop", "accept"):
        raise RenderError(f"firewall policy must be drop or accept, not {fw['policy']!r}")
    rules = [{"comment": r["comment"], "lines": rule_lines(r)} for r in fw["rules"]]
    return [template_file(PATH, "nftables/anycastlb.nft.j2", node=model["node"], table=TABLE,
                          policy=fw["policy"], rules=rules, steer_table=STEER_TABLE,
                          steering=steering_tables(model.get("steering")),
                          pools=pool_rules(model.get("haproxy")))]


def check(staging: str, files: list[RenderedFile]) -> CheckResult:
    """``nft -c -f`` on the staged file, in a throwaway network namespace when we can make one."""
    path = under(staging, PATH)
    cmd = ["nft", "-c", "-f", path]
    if shutil.which("unshare") and os.geteuid() == 0:
        cmd = ["unshare", "--net", "--"] + cmd
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except FileNotFoundError as exc:
        return CheckResult(False, " ".join(cmd), f"cannot run the checker: {exc}")
    return CheckResult(proc.returncode == 0, " ".join(cmd), (proc.stdout + proc.stderr).strip())


SPEC = DaemonSpec(
    name="nftables",
    wanted=lambda model: bool(model.get("firewall")) and model["firewall"].get("managed", True),
    render=render,
    check=check,
    owned=(PATH,),
    binary="nft",
    packages=("nftables",),
)
