"""The Icinga 2 part of a monitoring node's model: hosts and checks."""

from __future__ import annotations

from typing import Any

from .. import schema as S
from ..model import MonitoringModel
from .base import ACME_PROBE_PORT, HAPROXY_STATS_PORT, acme_certificate, acme_names
from .context import _Svc
from .index import Index
from .sharing import tls_ports, vip_request


class MonitoringBuilder(Index):
    """Hosts and checks for the monitoring nodes."""

    def monitoring_model(self) -> MonitoringModel:
        """Hosts and checks for a monitoring node (identical on every monitoring node)."""
        hosts: list[dict[str, Any]] = []
        checks: list[dict[str, Any]] = []
        for nid in sorted(self.nodes):
            n = self.nodes[nid]
            hosts.append({"name": nid, "address": n.address, "address6": n.address6, "managed": True,
                          "roles": self.roles(nid), "state": n.state})
        external: dict[str, str] = {}
        for sname in sorted(self.services):
            for bid, be in self.services[sname].model.backends.items():
                if bid not in self.nodes and be.address:
                    external.setdefault(bid, be.address)
        for bid in sorted(external):
            hosts.append({"name": bid, "address": external[bid], "address6": None, "managed": False,
                          "roles": [], "state": "active"})
        for sname in sorted(self.services):
            svc = self.services[sname]
            m = svc.model
            notify = list(m.monitor.notify)
            if not m.monitor.enabled:
                continue
            announcers = self.announcers(sname)
            active = [x for x in announcers if self.nodes[x].state == "active"]
            for vip, ip in zip(svc.vips, svc.vip_texts):   # ip: the address, printed once
                prefix = f"{ip}/{vip.max_prefixlen}"
                checks.append({"name": f"announcers {sname} {ip}", "host": None, "type": "announcers",
                               "service": sname, "prefix": prefix, "expected": active, "notify": notify})
                for port in svc.ports:
                    c = self._service_check(svc, port, ip)
                    checks.append({"name": f"vip {sname} {ip} {port}", "host": None, "service": sname,
                                   "notify": notify, **c})
                if m.tls is not None and m.tls.acme and self.acme is not None and tls_ports(m):
                    # every ACME name on every VIP: the certificate actually served, WARNING once less than
                    # renew_before (less one day for the renewal's schedule) is left: a renewal failed
                    warn = max(1, -(-self.acme.renew_before // 86_400_000) - 1)
                    for host in acme_names(m):
                        checks.append({"name": f"acme {sname} {host} {ip}", "host": None,
                                       "service": sname, "notify": notify, "type": "https", "address": ip,
                                       "port": 443 if 443 in tls_ports(m) else min(tls_ports(m)),
                                       "http_host": host, "path": "/", "expect": None, "tls": True,
                                       "certificate_only": True, "cert_days": [warn, max(1, warn // 3)]})
            if m.tls is not None and m.tls.acme and self.acme is not None:
                # every LB node serves the same certificate (read on each node's own address), and the
                # issuer's last renewal of it did not fail
                nodes = [x for x in announcers if self.nodes[x].state != "maintenance"]
                checks.append({"name": f"acme {sname} serial", "host": None, "service": sname, "notify": notify,
                               "type": "acme-serial", "sni": acme_names(m)[0], "port": ACME_PROBE_PORT,
                               "nodes": [f"{x}={self.nodes[x].address}" for x in nodes]})
                checks.append({"name": f"acme {sname} renewal", "host": None, "service": sname, "notify": notify,
                               "type": "acme-renewal", "certificate": acme_certificate(sname)})
            if m.mode in ("http", "tcp"):
                for node in announcers:
                    for port in svc.ports:
                        checks.append({"name": f"frontend {sname}-{port.port} on {node}", "host": node,
                                       "type": "haproxy-frontend", "service": sname,
                                       "frontend": self.frontend_name(svc, port),
                                       "backend": self.backend_name(svc, port),
                                       "address": self.nodes[node].address, "port": HAPROXY_STATS_PORT,
                                       "notify": notify})
                for bid in sorted(m.backends):
                    be = m.backends[bid]
                    addr = be.address or self.nodes[bid].address
                    for sport in sorted({self.server_port(svc, p) for p in svc.ports}):
                        c = self.check_model(svc, sport)
                        c.pop("interval_ms", None)
                        if c["type"] not in ("http", "tcp"):
                            c["type"] = "tcp"  # a protocol check (ldap, smtp ...) is HAProxy's; Icinga connects
                        checks.append({"name": f"backend {sname} {bid}:{sport}", "host": bid, "service": sname,
                                       "address": addr, "notify": notify, "backend_state": be.state,
                                       **{k: v for k, v in c.items() if k in ("type", "path", "expect", "port")},
                                       "http_host": c.get("host")})
            else:
                for node in announcers:
                    for port in svc.ports:
                        c = self._service_check(svc, port, self.nodes[node].address)
                        checks.append({"name": f"anycast {sname} {port} on {node}", "host": node, "service": sname,
                                       "notify": notify, **c})
        for rr in self.rrs:
            checks.append({"name": f"bgp sessions of {rr}", "host": rr, "type": "rr-sessions",
                           "expected": [x for x in self.speakers if self.nodes[x].state == "active"],
                           "notify": sorted({u for s in self.services.values() for u in s.model.monitor.notify})})
        for c in checks:
            if c.get("host") is None:
                c["host"] = c["service"] and f"vip-{c['service']}"
        users = sorted({u for s in self.services.values() for u in s.model.monitor.notify})
        vip_hosts = sorted({f"vip-{s}" for s in self.services if self.services[s].model.monitor.enabled})
        icinga = self.icinga
        return {"hosts": hosts, "vip_hosts": vip_hosts, "checks": sorted(checks, key=lambda c: c["name"]),
                "users": users, "icinga": icinga["mode"],
                "contacts": {u: icinga["contacts"][u] for u in users if u in icinga["contacts"]}}

    def _service_check(self, svc: _Svc, port: S.Port, address: str) -> dict[str, Any]:
        m = svc.model
        if port.protocol == "udp" and m.check.dns is not None and port.port == m.check.dns.port:
            return {"type": "udp", "address": address, "port": port.port, "dns": m.check.dns.name,
                    "dns_type": m.check.dns.type}
        if port.protocol == "udp" and m.check.kerberos is not None and port.port == m.check.kerberos.port:
            return {"type": "udp", "address": address, "port": port.port, "krb": m.check.kerberos.realm}
        if port.protocol == "udp":
            return {"type": "udp", "address": address, "port": port.port}
        if m.mode == "http":   # the request that reaches this service, also on a VIP:port it shares
            r = vip_request(m, port.port)
            return {"type": "https" if r["tls"] else "http", "address": address, "port": port.port,
                    "http_host": r["host"], "path": r["path"], "expect": r["expect"], "tls": r["tls"]}
        return {"type": "tcp", "address": address, "port": port.port}
