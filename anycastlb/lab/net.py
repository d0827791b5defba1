"""The lab network: one network namespace per host, L2 bridges inside a fabric namespace.

Layout (``P`` is the lab prefix)::

    P-fabric   br0 (fabric: catalog nodes + peers)   br1 (client net: first peer, client, external backends)
    P-<node>   eth0 = catalog address/24 + address6/64, default via the first peer
    P-<peer>   eth0 on br0; the first peer also has eth1 on br1 (203.0.113.1/24, 2001:db8:203::1/64)
    P-client   eth0 on br1 = 203.0.113.100, 2001:db8:203::100, default via the first peer
    P-<ext>    eth0 on br1 = the given address, default via the first peer

Nothing is created in the host's namespace: every veth is created inside the fabric
namespace with its other end directly in the host namespace, and no namespace has a
route to anything outside the documentation ranges it is given.
"""
from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .catalog import LabCatalog, LabCatalogError

CLIENT_NET4 = ipaddress.IPv4Network("203.0.113.0/24")
CLIENT_NET6 = ipaddress.IPv6Network("2001:db8:203::/64")
CLIENT_GW4 = "203.0.113.1"
CLIENT_GW6 = "2001:db8:203::1"
CLIENT_ADDR4 = "203.0.113.100"
CLIENT_ADDR6 = "2001:db8:203::100"
FABRIC = "fabric"
CLIENT = "client"
_DOC_RANGES = [ipaddress.ip_network(n) for n in
               ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]


class LabNetError(RuntimeError):
    """A step of building the lab network failed."""


@dataclass
class Iface:
    """One interface of a lab host (the host end of a veth pair)."""

    name: str
    bridge: str
    veth: str
    addr4: str | None = None
    addr6: str | None = None


@dataclass
class HostPlan:
    """A namespace of the lab and what goes into it."""

    name: str
    ns: str
    kind: str  # node | peer | client | external
    ifaces: list[Iface] = field(default_factory=list)
    gw4: str | None = None
    gw6: str | None = None
    router: bool = False

    @property
    def address(self) -> str | None:
        """The host's first IPv4 address without prefix length."""
        return self.ifaces[0].addr4.split("/")[0] if self.ifaces and self.ifaces[0].addr4 else None

    @property
    def address6(self) -> str | None:
        """The host's first IPv6 address without prefix length."""
        return self.ifaces[0].addr6.split("/")[0] if self.ifaces and self.ifaces[0].addr6 else None


def _check_doc(addr: str, what: str) -> None:
    ip = ipaddress.ip_interface(addr).ip
    if not any(ip in n for n in _DOC_RANGES):
        raise LabCatalogError(f"{what}: {ip} is outside the documentation ranges")


def plan(cat: LabCatalog, prefix: str, external: list[tuple[str, str]]) -> tuple[str, dict[str, HostPlan]]:
    """Compute every namespace, interface and address of the lab (no side effects)."""
    first = next(iter(cat.peers.values()))
    net4 = ipaddress.ip_network(f"{first.address}/24", strict=False)
    net6 = ipaddress.ip_network(f"{first.address6}/64", strict=False) if first.address6 else None
    hosts: dict[str, HostPlan] = {}
    idx = 0

    def veth(kind: str) -> str:
        nonlocal idx
        idx += 1
        return f"{kind}{idx}"

    for kind, group in (("peer", cat.peers), ("node", cat.nodes)):
        for h in group.values():
            if ipaddress.ip_address(h.address) not in net4:
                raise LabCatalogError(f"{kind} {h.name}: {h.address} is not in the fabric {net4}")
            a6 = None
            if h.address6:
                if net6 is None or ipaddress.ip_address(h.address6) not in net6:
                    raise LabCatalogError(f"{kind} {h.name}: {h.address6} is not in the fabric {net6}")
                a6 = f"{h.address6}/{net6.prefixlen}"
            _check_doc(h.address, f"{kind} {h.name}")
            hp = HostPlan(h.name, f"{prefix}-{h.name}", kind,
                          [Iface("eth0", "br0", veth("f"), f"{h.address}/{net4.prefixlen}", a6)])
            if kind == "peer":
                hp.router = True
            else:
                hp.gw4, hp.gw6 = first.address, (first.address6 if h.address6 else None)
            hosts[h.name] = hp
    hosts[first.name].ifaces.append(
        Iface("eth1", "br1", veth("c"), f"{CLIENT_GW4}/{CLIENT_NET4.prefixlen}", f"{CLIENT_GW6}/{CLIENT_NET6.prefixlen}"))
    edge: list[tuple[str, str, str, str | None]] = [(CLIENT, "client", CLIENT_ADDR4, CLIENT_ADDR6)]
    edge += [(n, "external", a, None) for n, a in external]
    for name, kind, a4, a6 in edge:
        if name in hosts or name == FABRIC:
            raise LabCatalogError(f"lab host name {name!r} is already taken")
        if ipaddress.ip_address(a4) not in CLIENT_NET4:
            raise LabCatalogError(f"{kind} {name}: {a4} is not in the client net {CLIENT_NET4}")
        hosts[name] = HostPlan(name, f"{prefix}-{name}", kind,
                               [Iface("eth0", "br1", veth("c"), f"{a4}/{CLIENT_NET4.prefixlen}",
                                      f"{a6}/{CLIENT_NET6.prefixlen}" if a6 else None)],
                               gw4=CLIENT_GW4, gw6=CLIENT_GW6 if a6 else None)
    if FABRIC in hosts:
        raise LabCatalogError(f"lab host name {FABRIC!r} is reserved")
    return f"{prefix}-{FABRIC}", hosts


def plan_to_json(hosts: dict[str, HostPlan]) -> dict:
    """Serialisable form of a plan."""
    return {n: asdict(h) for n, h in hosts.items()}


def plan_from_json(data: dict) -> dict[str, HostPlan]:
    """Inverse of :func:`plan_to_json`."""
    out = {}
    for n, h in data.items():
        h = dict(h)
        h["ifaces"] = [Iface(**i) for i in h["ifaces"]]
        out[n] = HostPlan(**h)
    return out


def _run(argv: list[str], stdin: str | None = None) -> None:
    r = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        raise LabNetError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}\n{stdin or ''}")


def ip_batch(ns: str, lines: list[str]) -> None:
    """Run iproute2 commands inside ``ns`` in one process."""
    _run(["ip", "-n", ns, "-batch", "-"], "\n".join(lines) + "\n")


def _sysctl(ns: str, settings: dict[str, str | int]) -> None:
    """Set sysctls inside network namespace ``ns`` (``/proc/sys/net`` is per namespace)."""
    _run(["nsenter", f"--net=/run/netns/{ns}", "sysctl", "-q", "-w",
          *(f"{k}={v}" for k, v in settings.items())])


COMMON_SYSCTLS = {
    "net.ipv6.conf.all.accept_dad": 0,
    "net.ipv6.conf.default.accept_dad": 0,
    "net.ipv6.conf.all.accept_ra": 0,
    "net.ipv6.conf.default.accept_ra": 0,
    "net.ipv4.conf.all.rp_filter": 0,
    "net.ipv4.conf.default.rp_filter": 0,
}
ROUTER_SYSCTLS = {
    "net.ipv4.ip_forward": 1,
    "net.ipv6.conf.all.forwarding": 1,
    "net.ipv4.fib_multipath_hash_policy": 1,
    "net.ipv6.fib_multipath_hash_policy": 1,
}


def up(fabric_ns: str, hosts: dict[str, HostPlan]) -> None:
    """Create the fabric namespace, every host namespace, the links, addresses and routes."""
    for ns in [fabric_ns, *(h.ns for h in hosts.values())]:
        if Path(f"/run/netns/{ns}").exists():
            raise LabNetError(f"namespace {ns} already exists (tear the old lab down first)")
        _run(["ip", "netns", "add", ns])
    # The fabric namespace is pure L2: no IPv6 on the bridges, no forwarding.
    _sysctl(fabric_ns, {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1})
    for h in hosts.values():
        # Before any interface exists, so new interfaces inherit these defaults.
        _sysctl(h.ns, {**COMMON_SYSCTLS, **(ROUTER_SYSCTLS if h.router else {})})
    fab = ["link set lo up"]
    for br in ("br0", "br1"):
        fab += [f"link add {br} type bridge stp_state 0 forward_delay 0 mcast_snooping 0",
                f"link set {br} up"]
    for h in hosts.values():
        for i in h.ifaces:
            fab += [f"link add {i.veth} type veth peer name {i.name} netns {h.ns}",
                    f"link set {i.veth} master {i.bridge}", f"link set {i.veth} up"]
    ip_batch(fabric_ns, fab)
    for h in hosts.values():
        ip_batch(h.ns, host_commands(h))


def host_commands(h: HostPlan, iface: str | None = None) -> list[str]:
    """The iproute2 commands that give ``h`` (or only its interface ``iface``) its links up,
    addresses and default routes. Idempotent (``replace``): they also repair an interface
    that went down, which flushed its IPv6 addresses and every route through it."""
    cmds = [] if iface else ["link set lo up"]
    for i in h.ifaces:
        if iface and i.name != iface:
            continue
        cmds.append(f"link set {i.name} up")
        if i.addr4:
            cmds.append(f"address replace {i.addr4} dev {i.name}")
        if i.addr6:
            cmds.append(f"address replace {i.addr6} dev {i.name} nodad")
    if not iface or iface == h.ifaces[0].name:
        if h.gw4:
            cmds.append(f"route replace default via {h.gw4}")
        if h.gw6:
            cmds.append(f"route replace ::/0 via {h.gw6}")
    return cmds


def exists(ns: str) -> bool:
    """True if the named network namespace exists."""
    return Path(f"/run/netns/{ns}").exists()


def delete(names: list[str]) -> list[str]:
    """Delete the given network namespaces (only those exact names); return failures."""
    failed = []
    for ns in names:
        if exists(ns):
            r = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
            if r.returncode != 0 and exists(ns):
                failed.append(f"{ns}: {r.stderr.strip()}")
    return failed
