"""Validated objects → every node's model: the node, its BGP sessions, and the per-daemon parts
(``build_*.py``)."""

from __future__ import annotations

import ipaddress
from typing import Any

from .. import schema as S
from ..model import Bfd, BgpModel, Neighbor, NodeModel, PeerExport, SecretNames
from .base import MODEL_VERSION, Net, family, ident
from .build_firewall import FirewallBuilder
from .build_haproxy import HaproxyBuilder, anchor_pools
from .build_health import HealthBuilder
from .build_monitoring import MonitoringBuilder
from .build_steering import SteeringBuilder
from .context import _Svc
from .fleet import Fleet, NodeModels
from .sharing import tls_ports, vip_request


def _build(name: str, bgp: S.Bgp, pools: list[Net], management: list[Net], nodes: dict[str, S.Node],
           peers: dict[str, S.Peer], clusters: dict[str, S.Cluster], services: dict[str, _Svc],
           firewall: S.Firewall | None = None, icinga: dict[str, Any] | None = None,
           acme: tuple[S.Acme, str] | None = None, tenant_of: dict[str, str] | None = None) -> Fleet:
    """Compute every node's model from validated objects (``acme``: the section and the issuer node;
    ``tenant_of``: service → tenant, for pooled frontends)."""
    b = _Builder(bgp, pools, management, nodes, peers, clusters, services, firewall or S.Firewall())
    b.tenant_of = tenant_of or {}
    b.acme, b.issuer = acme if acme is not None else (None, None)
    b.icinga = icinga or {"mode": "standalone", "contacts": {}}
    models = NodeModels(sorted(nodes), b.node_model)
    svc_summary = {sname: b.service_summary(sname) for sname in sorted(services)}
    roles: dict[str, int] = {}
    for nid in nodes:
        for r in b.roles(nid):
            roles[r] = roles.get(r, 0) + 1
    vips = sorted({str(ip) for s in services.values() for ip in s.vips})
    summary = {"services": len(services), "vips": len(vips), "nodes": len(nodes), "roles": dict(sorted(roles.items())),
               "peers": len(peers), "clusters": len(clusters)}
    return Fleet(catalog=name, nodes=models, services=svc_summary, summary=summary)


class _Builder(HaproxyBuilder, HealthBuilder, FirewallBuilder, MonitoringBuilder, SteeringBuilder):
    """Derives per-node models; indexes the fleet once so each node's slice is cheap."""

    def node_model(self, nid: str) -> NodeModel:
        n = self.nodes[nid]
        roles = self.roles(nid)
        model: NodeModel = {
            "version": MODEL_VERSION, "node": nid, "address": n.address, "address6": n.address6,
            "state": n.state, "roles": roles,
            "management": [str(p) for p in self.management],
            "services": sorted(set(self.backend_of.get(nid, []) + self.anycast_of.get(nid, []) + [
                s for c in self.node_clusters.get(nid, []) for s in self.cluster_services[c]])),
            "bgp": self.bgp_model(nid, roles) if "bird" in roles else None,
            "haproxy": self.haproxy_model(nid) if "haproxy" in roles else None,
            "apache": self.apache_model(nid) if "apache" in roles else None,
            "monitoring": self.monitoring_model() if "monitoring" in roles else None,
            "salt_master": {"interface": n.address} if "salt-master" in roles else None,
            "acme": self.acme_model() if nid == self.issuer and self.acme is not None else None,
            "health": None, "firewall": None, "steering": None,
            "secrets": {"certificates": [], "bgp_passwords": []},
        }
        model["health"] = self.health_model(nid, model)
        model["firewall"] = self.firewall_model(nid, model)
        fw = model["firewall"]
        if model["haproxy"] is not None and fw is not None and fw["managed"]:   # our nftables hands pools their VIPs
            anchor_pools(model["haproxy"]["frontends"])
        model["steering"] = self.steering_model(nid, model)
        model["secrets"] = self.secret_names(nid, model)
        return model

    def bgp_model(self, nid: str, roles: list[str]) -> BgpModel:
        n = self.nodes[nid]
        bfd: Bfd = {"interval_ms": self.bgp.bfd.interval, "multiplier": self.bgp.bfd.multiplier}
        neighbors: list[Neighbor] = []

        def add(name: str, kind: str, addr: str | None, asn: int, password: str | None,
                add_paths: str | None, local: str | None, peer: S.Peer | None = None) -> None:
            if addr is None or local is None:
                return
            fam = family(ipaddress.ip_address(addr))
            session = peer.session if peer is not None else self.bgp.session
            pb = peer.bfd if peer is not None else S.PeerBfd()
            timers: Bfd | None = None
            if pb.enabled and (pb.interval is not None or pb.multiplier is not None):
                timers = {"interval_ms": pb.interval or self.bgp.bfd.interval,
                          "multiplier": pb.multiplier or self.bgp.bfd.multiplier}
            export: PeerExport | None = None
            if peer is not None:
                parsed = [[int(x) for x in c.split(":")] for c in peer.communities]
                export = {"communities": [c for c in parsed if len(c) == 2],
                          "large_communities": [c for c in parsed if len(c) == 3],
                          "med": peer.med, "prepend": peer.prepend, "local_pref": peer.local_pref}
            neighbors.append({"name": name, "ident": ident(f"{kind[:4]}_{name}_{fam[-1]}"), "kind": kind,
                              "address": addr, "family": fam, "local_address": local, "asn": asn,
                              "password": password, "add_paths": add_paths, "bfd": pb.enabled,
                              "bfd_timers": timers, "multihop": session == "multihop",
                              "export": export, "ebgp": asn != self.bgp.asn})

        if "route-reflector" in roles:
            role = "route-reflector"
            for other in self.speakers:
                o = self.nodes[other]
                add(other, "client", o.address, self.bgp.asn, self.bgp.password, None, n.address)
                add(other, "client", o.address6, self.bgp.asn, self.bgp.password, None, n.address6)
            for mon in self.monitors:
                if mon == nid:
                    continue
                o = self.nodes[mon]
                add(mon, "listener", o.address, self.bgp.asn, self.bgp.password, "tx", n.address)
                add(mon, "listener", o.address6, self.bgp.asn, self.bgp.password, "tx", n.address6)
            for pid in sorted(self.peers):
                p = self.peers[pid]
                add(pid, "peer", p.address, p.asn, p.password, "tx", n.address, p)
                add(pid, "peer", p.address6, p.asn, p.password, "tx", n.address6, p)
        else:
            role = "speaker" if ("haproxy" in roles or "anycast" in roles) else "listener"
            for rr in self.rrs:
                o = self.nodes[rr]
                add(rr, "route-reflector", o.address, self.bgp.asn, self.bgp.password,
                    "rx" if role == "listener" else None, n.address)
                add(rr, "route-reflector", o.address6, self.bgp.asn, self.bgp.password,
                    "rx" if role == "listener" else None, n.address6)
        vips = [(ip, str(ip), svcs) for ip, svcs in self.node_vips(nid)]   # each address printed once
        announce = [] if n.state != "active" else [f"{a}/{ip.max_prefixlen}" for ip, a, _ in vips]
        return {
            "asn": self.bgp.asn, "router_id": n.address, "role": role, "bfd": bfd,
            "hold_ms": self.bgp.hold,
            "vip_pools": {"ipv4": [str(p) for p in self.pools if p.version == 4],
                          "ipv6": [str(p) for p in self.pools if p.version == 6]},
            "neighbors": sorted(neighbors, key=lambda x: (x["kind"], x["name"], x["family"])),
            "vips": [{"address": a, "prefix": f"{a}/{ip.max_prefixlen}", "family": family(ip),
                      "services": svcs} for ip, a, svcs in vips],
            "announce": announce,
        }

    def secret_names(self, nid: str, model: NodeModel) -> SecretNames:
        """Names of the secrets this node uses (the pillar fills in the values)."""
        certs = sorted(model["haproxy"]["certificates"]) if model["haproxy"] else []
        bgp = model["bgp"]
        pw = sorted({nb["password"] for nb in (bgp["neighbors"] if bgp else []) if nb["password"]})
        return {"certificates": certs, "bgp_passwords": pw}

    def service_summary(self, sname: str) -> dict[str, Any]:
        """What a reviewer reads about one service in ``anycastlb diff``."""
        svc = self.services[sname]
        m = svc.model
        return {
            "mode": m.mode, "cluster": m.cluster, "vips": list(svc.vip_texts),
            "ports": [str(p) for p in svc.ports], "backend_port": m.backend_port, "balance": m.balance,
            "allow": list(m.allow), "tls": ("acme" if m.tls.acme else m.tls.certificate) if m.tls else None, "redirect_http": m.redirect_http,
            "backends": {b: {"address": be.address or self.nodes[b].address, "weight": be.weight,
                             "backup": be.backup, "state": be.state} for b, be in sorted(m.backends.items())},
            "check": self.check_model(svc, None), "announcers": self.announcers(sname),
            "apache": m.apache.model_dump() if m.apache else None, "notify": list(m.monitor.notify),
            "haproxy": m.haproxy.model_dump(exclude_defaults=True) if m.haproxy else None,
            "route": m.route.model_dump(exclude_defaults=True) if m.route else None,
            "tls_ports": sorted(tls_ports(m)),
            # what a client sends to reach it through a VIP, per http port (the lab's probes ask the same)
            "requests": {str(p.port): vip_request(m, p.port) for p in svc.ports if m.mode == "http"},
        }
