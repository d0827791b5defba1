"""The fleet indexed once for the model builders: who is in which cluster, who serves what."""

from __future__ import annotations

from typing import Any

from .. import schema as S
from .base import HAPROXY_CHECKS, IP, Net, check_kind, server_port
from .context import _Svc
from .sharing import shared_ports


class Index:
    """Indexes the fleet once so each node's slice is cheap; the per-daemon builders extend it."""

    def __init__(self, bgp: S.Bgp, pools: list[Net], management: list[Net], nodes: dict[str, S.Node],
                 peers: dict[str, S.Peer], clusters: dict[str, S.Cluster], services: dict[str, _Svc],
                 firewall: S.Firewall | None = None):
        self.bgp, self.pools, self.management = bgp, pools, management
        self.firewall = firewall or S.Firewall()
        self.icinga: dict[str, Any] = {"mode": "standalone", "contacts": {}}
        self.acme: S.Acme | None = None
        self.issuer: str | None = None
        self.nodes, self.peers, self.clusters, self.services = nodes, peers, clusters, services
        self.rrs = sorted(n for n, x in nodes.items() if "route-reflector" in x.roles)
        self.monitors = sorted(n for n, x in nodes.items() if "monitoring" in x.roles)
        self.masters = sorted(n for n, x in nodes.items() if "salt-master" in x.roles)
        self.node_clusters: dict[str, list[str]] = {}
        for cid in sorted(clusters):
            for member in clusters[cid].nodes:
                self.node_clusters.setdefault(member, []).append(cid)
        self.cluster_services: dict[str, list[str]] = {c: [] for c in clusters}
        self.anycast_of: dict[str, list[str]] = {}
        self.backend_of: dict[str, list[str]] = {}
        for sname in sorted(services):
            m = services[sname].model
            if m.mode == "anycast":
                for bname in m.backends:
                    self.anycast_of.setdefault(bname, []).append(sname)
            else:
                self.cluster_services[m.cluster].append(sname)  # type: ignore[index]
                for bname in m.backends:
                    if bname in nodes:
                        self.backend_of.setdefault(bname, []).append(sname)
        self.speakers = sorted(n for n in nodes if n in self.node_clusters or n in self.anycast_of)
        #: (service, port) → the frontend it shares with other services on its VIPs (lint allowed it)
        self.shared = shared_ports(services)
        #: service → its tenant ("(root)" for the root files), for pooled frontends
        self.tenant_of: dict[str, str] = {}
        #: (service, port) → the pooled frontend it joins, or None (computed once each)
        self.pool_names: dict[tuple[str, int], str | None] = {}

    def addrs(self, nid: str) -> list[str]:
        n = self.nodes[nid]
        return [n.address] + ([n.address6] if n.address6 else [])

    def announcers(self, sname: str) -> list[str]:
        """Nodes that announce a service's VIPs when healthy and active."""
        m = self.services[sname].model
        members = self.clusters[m.cluster].nodes if m.mode != "anycast" else list(m.backends)  # type: ignore[index]
        return sorted(x for x in members if x in self.nodes)

    def server_port(self, svc: _Svc, port: S.Port) -> int:
        return server_port(svc.model, port)

    def backend_name(self, svc: _Svc, port: S.Port) -> str:
        return f"{svc.name}-{self.server_port(svc, port)}"

    def frontend_name(self, svc: _Svc, port: S.Port) -> str:
        """``<service>-<port>``, or ``shared-<port>-<first VIP>`` for a VIP:port shared with other services."""
        shared = self.shared.get((svc.name, port.port))
        return shared.name if shared is not None else f"{svc.name}-{port.port}"

    def roles(self, nid: str) -> list[str]:
        r: set[str] = set(self.nodes[nid].roles)
        if nid in self.node_clusters:
            r.add("haproxy")
        if nid in self.anycast_of:
            r.add("anycast")
        if nid in self.backend_of:
            r.add("backend")
            if any(self.services[s].model.apache is not None for s in self.backend_of[nid]):
                r.add("apache")
        if nid == self.issuer:
            r.add("acme")
        if nid in self.node_clusters or nid in self.anycast_of or "route-reflector" in r or (
                "monitoring" in r and self.rrs):
            r.add("bird")
        return sorted(r)

    def check_model(self, svc: _Svc, default_port: int | None) -> dict[str, Any]:
        c = svc.model.check
        out: dict[str, Any] = {"interval_ms": c.interval, "rise": c.rise, "fall": c.fall,
                               "timeout_ms": c.timeout or min(c.interval, 1000)}
        if c.http is not None:
            host = c.http.host or (svc.model.apache.server_name if svc.model.apache else None)
            out.update(type="http", path=c.http.path, expect=str(c.http.expect), host=host,
                       port=c.http.port or default_port)
            if c.http.body is not None:
                out["body"] = c.http.body
        elif c.dns is not None:
            out.update(type="dns", name=c.dns.name, qtype=c.dns.type, port=c.dns.port)
        elif c.kerberos is not None:
            out.update(type="kerberos", realm=c.kerberos.realm, port=c.kerberos.port,
                       protocol=c.kerberos.protocol)
        elif (kind := check_kind(c)) in HAPROXY_CHECKS:
            out.update(type=kind, port=getattr(c, kind).port or default_port)
            if c.smtp is not None:
                out["domain"] = c.smtp.domain
            if c.mysql is not None or c.pgsql is not None:
                out["user"] = (c.mysql or c.pgsql).user  # type: ignore[union-attr]
        else:
            port = (c.tcp.port if c.tcp else None) or default_port
            out.update(type="tcp", port=port)
        return out

    def node_vips(self, nid: str) -> list[tuple[IP, list[str]]]:
        """(VIP, services) configured on this node's lo."""
        vips: dict[IP, set[str]] = {}
        for cid in self.node_clusters.get(nid, []):
            for sname in self.cluster_services[cid]:
                for ip in self.services[sname].vips:
                    vips.setdefault(ip, set()).add(sname)
        for sname in self.anycast_of.get(nid, []):
            for ip in self.services[sname].vips:
                vips.setdefault(ip, set()).add(sname)
        return sorted(((ip, sorted(s)) for ip, s in vips.items()), key=lambda t: (t[0].version, t[0]))
