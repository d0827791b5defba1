"""The nftables part of a node model: default-deny input, every accept rule says why."""

from __future__ import annotations

from typing import Iterable

from .. import schema as S
from ..model import FirewallModel, FirewallRule, Neighbor, NodeModel
from .base import (ACME_CHALLENGE_PORT, ACME_PROBE_PORT, BFD_MULTIHOP_PORT, BFD_PORTS, BGP_PORT, HAPROXY_STATS_PORT, SALT_PORTS,
                   SSH_PORT, _addr_key)
from .index import Index


class FirewallBuilder(Index):
    """A node's firewall rules."""

    def firewall_model(self, nid: str, model: NodeModel) -> FirewallModel:
        """Default-deny input; every accept rule names why it exists."""
        rules: list[FirewallRule] = []

        def rule(comment: str, proto: str, ports: Iterable[int], sources: Iterable[str],
                 destinations: Iterable[str] = ()) -> None:
            srcs = sorted(set(sources), key=_addr_key)
            if "any" in srcs:
                srcs = []
            rules.append({"comment": comment, "protocol": proto, "ports": sorted(set(ports)),
                          "sources": srcs, "destinations": sorted(set(destinations), key=_addr_key)})

        mgmt = [str(p) for p in self.management]
        own = self.addrs(nid)   # node services answer on the node's addresses, never on a VIP
        rule("ssh from management", "tcp", [SSH_PORT], mgmt or ["any"], own)
        if "salt-master" in model["roles"]:
            minions = [a for x in sorted(self.nodes) for a in self.addrs(x)]
            sm = self.nodes[nid].salt or S.SaltMaster()
            rule("salt from management and minions", "tcp", SALT_PORTS, mgmt + minions, own)
            if sm.minion_networks:  # the master's other minions (a shared master)
                rule("salt from minion networks", "tcp", SALT_PORTS, sm.minion_networks, own)
            if sm.api is not None:
                rule("salt-api", "tcp", [sm.api.port], sm.api.sources or mgmt or ["any"], own)
        bgp = model["bgp"]
        if bgp is not None:
            by_name: dict[tuple[str, str], list[Neighbor]] = {}
            for nb in bgp["neighbors"]:
                by_name.setdefault((nb["kind"], nb["name"]), []).append(nb)
            for (kind, name), nbs in by_name.items():
                addrs = [nb["address"] for nb in nbs]
                rule(f"bgp from {kind} {name}", "tcp", [BGP_PORT], addrs, own)
                # single-hop BFD: control 3784 and echo 3785; multihop BFD (RFC 5883): 4784
                bfd_ports = {p for nb in nbs if nb["bfd"]
                             for p in ((BFD_MULTIHOP_PORT,) if nb["multihop"] else BFD_PORTS)}
                if bfd_ports:
                    rule(f"bfd from {kind} {name}", "udp", bfd_ports, addrs, own)
        monitors = [a for x in self.monitors for a in self.addrs(x)]
        vips_of: dict[str, list[str]] = {}
        for v in (bgp["vips"] if bgp else []):
            for sname in v["services"]:
                vips_of.setdefault(sname, []).append(v["address"])
        # one hole per VIP:port: services that share one (lint: same VIPs, same allow) get one rule
        holes: dict[tuple[str, tuple[str, ...], tuple[str, ...]], dict[int, list[str]]] = {}
        for sname, addresses in sorted(vips_of.items()):
            svc = self.services[sname]
            for p in svc.ports:
                key = (p.protocol, tuple(sorted(addresses)), tuple(svc.model.allow + monitors))
                holes.setdefault(key, {}).setdefault(p.port, []).append(sname)
        for (proto, addresses_t, sources), by_port in holes.items():
            by_services: dict[tuple[str, ...], list[int]] = {}
            for port, names in by_port.items():
                by_services.setdefault(tuple(names), []).append(port)
            for names_t, ports in by_services.items():
                what = (f"service {names_t[0]} on its VIPs" if len(names_t) == 1
                        else f"services {', '.join(names_t)} on their shared VIPs")
                rule(what, proto, ports, sources, addresses_t)
        acme = model["acme"]
        if acme:
            lbs = sorted({a for c in acme["certificates"] for x in c["nodes"] for a in self.addrs(x)},
                         key=_addr_key)
            rule("acme challenges from the LB nodes", "tcp", [ACME_CHALLENGE_PORT], lbs, [model["address"]])
        if model["haproxy"] is not None and monitors:
            rule("haproxy stats for monitoring", "tcp", [HAPROXY_STATS_PORT], monitors + mgmt, [model["address"]])
            if model["haproxy"]["acme_probe"]:
                rule("acme certificate probe for monitoring", "tcp", [ACME_PROBE_PORT], monitors,
                     [model["address"]])
        for sname in self.backend_of.get(nid, []):
            svc = self.services[sname]
            lbs = [a for x in self.clusters[svc.model.cluster].nodes if x in self.nodes  # type: ignore[index]
                   for a in self.addrs(x)]
            sports = {self.server_port(svc, p) for p in svc.ports}
            rule(f"backend of {sname} from its LB nodes and monitoring", "tcp", sports, lbs + monitors, own)
        for sname in self.anycast_of.get(nid, []):
            svc = self.services[sname]
            for proto in ("tcp", "udp"):
                ports = [p.port for p in svc.ports if p.protocol == proto]
                if ports and monitors:
                    rule(f"monitoring of {sname} on the node", proto, ports, monitors, self.addrs(nid))
        node_fw = self.nodes[nid].firewall
        extra = list(self.firewall.accept) + (list(node_fw.accept) if node_fw is not None else [])
        for x in extra:
            rule(f"site: {x.name}", x.protocol, x.ports, x.sources)
        rules.sort(key=lambda r: (r["comment"], r["protocol"]))
        # unmanaged: nothing is rendered or loaded; the rules say what the site's firewall must open
        return {"policy": "drop", "managed": not (node_fw is not None and node_fw.unmanaged), "rules": rules}
