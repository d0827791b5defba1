"""The HAProxy, apache and ACME parts of a node model."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .. import schema as S
from ..model import AcmeCertificate, AcmeChallenge, AcmeModel, AcmeProbe, ApacheModel, HaproxyModel
from .base import (ACME_CHALLENGE_PATH, ACME_CHALLENGE_PORT, ACME_PROBE_PORT, ANCHOR_PORTS, HAPROXY_STATS_PORT,
                   acme_certificate, acme_names, ident)
from .context import _Svc
from .index import Index
from .sharing import certificate_of, frontend_routes, tls_ports


#: A service without ``haproxy:`` settings (built once: only read).
NO_SETTINGS = S.HaproxySettings()
#: What is a pooled frontend member's own (the rest must be alike for services to share a pool).
POOL_OWN = frozenset({"name", "service", "services", "binds", "backend", "backends", "routes", "pool", "anchor"})


def anchor_pools(frontends: list[dict[str, Any]]) -> None:
    """Give each pooled frontend its ``anchor``: the loopback port it listens on instead of a socket per
    VIP, nftables handing it its VIPs' connections (TPROXY). The port comes from the pool's name, so a pool
    keeps it while other pools come and go; a clash on the node takes the next free port, in name order."""
    span, taken = len(ANCHOR_PORTS), set()
    for fe in sorted((f for f in frontends if f["pool"]), key=lambda f: f["name"]):
        i = int(hashlib.sha256(fe["name"].encode()).hexdigest()[:8], 16) % span
        while ANCHOR_PORTS[i] in taken:
            i = (i + 1) % span
        taken.add(ANCHOR_PORTS[i])
        fe["anchor"] = ANCHOR_PORTS[i]


class HaproxyBuilder(Index):
    """HAProxy frontends and backends, apache vhosts, the ACME issuer's job."""

    def haproxy_model(self, nid: str) -> HaproxyModel:
        n = self.nodes[nid]
        frontends: dict[str, dict[str, Any]] = {}
        backends: dict[str, dict[str, Any]] = {}
        certs: set[str] = set()
        for cid in self.node_clusters[nid]:
            for sname in self.cluster_services[cid]:
                svc = self.services[sname]
                m = svc.model
                for port in svc.ports:
                    bname = self.backend_name(svc, port)
                    fe = self.frontend_model(svc, port)
                    pooled = frontends.get(fe["name"]) if fe["pool"] else None
                    if pooled is not None:   # another service of the pool: its VIPs and backend join
                        pooled["services"].append(sname)
                        pooled["binds"].extend(fe["binds"])
                        pooled["backends"].append(bname)   # sorted once the node's frontends are complete
                        pooled["pool"].extend(fe["pool"])
                    elif fe["name"] not in frontends:
                        frontends[fe["name"]] = fe
                        certs.update(fe["tls"]["certificates"] if fe["tls"] else [])
                    if bname in backends:
                        continue
                    sport = self.server_port(svc, port)
                    servers = []
                    for bid in sorted(m.backends):
                        be = m.backends[bid]
                        addr = be.address or self.nodes[bid].address
                        servers.append({"name": bid, "address": addr, "port": sport, "weight": be.weight,
                                        "backup": be.backup, "state": be.state, "managed": bid in self.nodes,
                                        "track": None})
                    backends[bname] = {"name": bname, "service": sname, "mode": m.mode, "balance": m.balance,
                                       "port": sport, "check": self.check_model(svc, None),
                                       "servers": servers, **backend_settings(sname, m)}
        for fe in frontends.values():
            if fe["pool"]:
                fe["backends"] = sorted(set(fe["backends"]))
        ordered = [backends[k] for k in sorted(backends)]
        return {"clusters": self.node_clusters[nid],
                "drain_deadline_ms": max(self.clusters[c].drain_deadline for c in self.node_clusters[nid]),
                "stats": {"address": n.address, "port": HAPROXY_STATS_PORT},
                "frontends": [frontends[k] for k in sorted(frontends)],
                "backends": ordered,
                "checks": share_checks(ordered),
                "certificates": sorted(certs),
                "acme": self.challenge_model() if any(f["acme_challenge"] for f in frontends.values()) else None,
                "acme_probe": self.probe_model(nid, list(frontends.values()))}

    def probe_model(self, nid: str, frontends: list[dict[str, Any]]) -> AcmeProbe | None:
        """The node's ACME certificates on its own address, for the monitoring's serial check (a VIP
        reaches one node only); none without ACME services or monitoring nodes."""
        acme = sorted({acme_certificate(s) for f in frontends if f["tls"] for s in f["services"]
                       if (tls := self.services[s].model.tls) is not None and tls.acme})
        if not acme or not self.monitors:
            return None
        return {"address": self.nodes[nid].address, "port": ACME_PROBE_PORT, "certificates": acme}

    def frontend_name(self, svc: _Svc, port: S.Port) -> str:
        """The pooled frontend's name when the service's port joins one, else :meth:`Index.frontend_name`."""
        return self.pool_name(svc, port) or super().frontend_name(svc, port)

    def pool_name(self, svc: _Svc, port: S.Port) -> str | None:
        """``pool-<port>-<digest>``: the frontend a service's port shares with the other services of its
        tenant whose frontends would be alike, on a cluster with ``frontends: pooled``; None when it has
        its own (or shares a VIP:port, routed by host). A frontend ``maxconn`` or raw directives are the
        service's own: such a frontend is never pooled. The digest is of what the pool's members have in
        common, so adding or removing a service leaves the name (and the other services) alone."""
        k = (svc.name, port.port)
        if k not in self.pool_names:
            self.pool_names[k] = None
            m = svc.model
            if (m.cluster is not None and self.clusters[m.cluster].frontends == "pooled"
                    and k not in self.shared):
                fe = self._frontend(svc, port, "")
                if not fe["maxconn"] and not fe["raw"]:
                    alike = {x: v for x, v in fe.items() if x not in POOL_OWN}
                    text = json.dumps([self.tenant_of.get(svc.name, "(root)"), alike], sort_keys=True)
                    self.pool_names[k] = f"pool-{port.port}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
        return self.pool_names[k]

    def frontend_model(self, svc: _Svc, port: S.Port) -> dict[str, Any]:
        """The frontend of a service's port: its own, the one it shares (routes to every service's backend
        by host and path), or its pool's (``pool``: each VIP's backend, chosen by destination address)."""
        pool = self.pool_name(svc, port)
        fe = self._frontend(svc, port, pool or super().frontend_name(svc, port))
        if pool:
            fe["backend"] = None
            fe["pool"] = [{"address": a, "backend": fe["backends"][0]} for a in fe["binds"]]
        return fe

    def _frontend(self, svc: _Svc, port: S.Port, name: str) -> dict[str, Any]:
        shared = self.shared.get((svc.name, port.port))
        names = shared.services if shared is not None else [svc.name]
        models = [self.services[s].model for s in names]
        m = models[0]   # lint made the services of a shared port agree on what the frontend holds
        tls = port.port in tls_ports(m)
        redirect = bool(m.redirect_http and m.mode == "http" and port.port == 80)
        certificates = list(dict.fromkeys(c for s, mm in zip(names, models) if (c := certificate_of(s, mm))))
        fe: dict[str, Any] = {
            "name": name, "service": names[0], "services": names, "mode": m.mode,
            "port": port.port, "binds": list(self.services[names[0]].vip_texts),
            "tls": {"certificate": certificates[0], "certificates": certificates} if tls else None,
            "acme_challenge": any(mm.mode == "http" and port.port == 80 and mm.tls is not None and mm.tls.acme
                                  for mm in models),
            "redirect_https": redirect,
            "allow": [] if "any" in m.allow else list(m.allow),
            "backend": self.backend_name(svc, port),
            "backends": sorted({self.backend_name(self.services[s], port) for s in names}),
            "routes": None,
            "pool": None,
            "anchor": None,
            **frontend_settings(m, tls, redirect),
        }
        if shared is not None:
            routes = frontend_routes(shared, self.services, lambda s: self.backend_name(self.services[s], port))
            fe["backend"] = routes.pop("default")
            fe["routes"] = routes
            fe["raw"] = [d for mm in models for d in (mm.haproxy.raw.frontend if mm.haproxy and mm.haproxy.raw
                                                       else [])]
        return fe

    def certificate(self, sname: str) -> str | None:
        """The certificate name a service terminates TLS with (its own, or its ACME certificate)."""
        return certificate_of(sname, self.services[sname].model)

    def challenge_model(self) -> AcmeChallenge:
        """Where an LB node sends HTTP-01 challenges: the issuer's token server."""
        assert self.issuer is not None
        return {"backend": "acme-challenge", "path": ACME_CHALLENGE_PATH,
                "address": self.nodes[self.issuer].address, "port": ACME_CHALLENGE_PORT}

    def acme_model(self) -> AcmeModel:
        """What the issuer needs: the account, and every ACME certificate with its names and receivers."""
        assert self.acme is not None and self.issuer is not None
        certs: list[AcmeCertificate] = []
        for sname in sorted(self.services):
            m = self.services[sname].model
            if m.tls is None or not m.tls.acme:
                continue
            certs.append({"name": acme_certificate(sname), "service": sname, "domains": acme_names(m),
                          "cluster": m.cluster or "", "nodes": self.announcers(sname)})
        a = self.acme
        return {"directory": a.directory, "contact": a.contact, "renew_before_ms": a.renew_before,
                "eab": a.eab.model_dump() if a.eab else None,
                "challenge": {"address": self.nodes[self.issuer].address, "port": ACME_CHALLENGE_PORT,
                              "path": ACME_CHALLENGE_PATH},
                "certificates": certs}

    def apache_model(self, nid: str) -> ApacheModel:
        vhosts: list[dict[str, Any]] = []
        for sname in self.backend_of.get(nid, []):
            svc = self.services[sname]
            m = svc.model
            if m.apache is None:
                continue
            ports = sorted({self.server_port(svc, p) for p in svc.ports if not (
                m.redirect_http and p.port == 80 and self.server_port(svc, p) == 80)})
            for port in ports:
                vhosts.append({"service": sname, "server_name": m.apache.server_name or sname,
                               "backend_state": m.backends[nid].state,
                               "aliases": list(m.apache.aliases), "port": port,
                               "health_path": m.check.http.path if m.check.http else None,
                               "document_root": f"/var/www/anycastlb/{sname}",
                               "proxy_protocol": bool(m.haproxy and m.haproxy.send_proxy)})
        # apache reads the PROXY protocol per port (lint makes the services of a port agree);
        # monitoring checks the backends directly, without it.
        proxy_ports = sorted({v["port"] for v in vhosts if v["proxy_protocol"]})
        return {"listen": sorted({v["port"] for v in vhosts}), "vhosts": vhosts,
                "proxy_protocol_ports": proxy_ports,
                "proxy_protocol_exceptions": [a for x in self.monitors for a in self.addrs(x)] if proxy_ports
                else []}


def frontend_settings(m: S.Service, tls: bool, redirect: bool) -> dict[str, Any]:
    """A frontend's per-service settings (``haproxy:`` in the catalog); None/empty keep the defaults."""
    h = m.haproxy or NO_SETTINGS
    hsts = None
    if h.hsts is not None and tls:
        hsts = {"max_age_s": h.hsts.max_age // 1000, "include_subdomains": h.hsts.include_subdomains,
                "preload": h.hsts.preload}
    redirects = [] if redirect else [
        {"path": r.path, "kind": "location" if r.location else "prefix", "to": r.location or r.prefix,
         "code": r.code} for r in h.redirects]
    return {"timeout_client_ms": h.timeouts.client, "maxconn": h.maxconn, "hsts": hsts, "redirects": redirects,
            "raw": list(h.raw.frontend) if h.raw else []}


def backend_settings(sname: str, m: S.Service) -> dict[str, Any]:
    """A backend's per-service settings (``haproxy:`` in the catalog); None/empty keep the defaults."""
    h = m.haproxy or NO_SETTINGS
    stick: dict[str, Any] | None = None
    if h.stick is not None:
        stick = {"by": h.stick.by}
        if h.stick.by == "cookie":
            stick["cookie"] = h.stick.cookie or f"SRV_{ident(sname)}"
        else:
            stick["expire_ms"] = h.stick.expire or 30 * 60_000
    t = h.timeouts
    return {"timeouts_ms": {"server": t.server, "connect": t.connect, "tunnel": t.tunnel},
            "server_maxconn": h.server_maxconn, "send_proxy": h.send_proxy, "stick": stick,
            "raw": list(h.raw.backend) if h.raw else []}


def check_spec(be: dict[str, Any]) -> dict[str, Any]:
    """What makes a backend's health check what it is: its kind and settings, the connect timeout
    (HAProxy's check connect timeout), the PROXY protocol the check speaks, and the mode."""
    return {"mode": be["mode"], "check": be["check"], "timeouts_ms": {"connect": be["timeouts_ms"]["connect"]},
            "send_proxy": be["send_proxy"]}


def share_checks(backends: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One health check per node for the servers that backends would check alike.

    Servers of different backends (other services, other ports, other tenants) with the same
    address, port and :func:`check_spec` would each run the very same probe: at 1,000 services,
    300 services in front of the same two mail hosts are 1,200 identical checks every interval.
    Such a server is checked once, in a check backend ``chk-<digest of the spec>`` that takes no
    traffic and holds one server per ``address:port``, which every such backend server tracks
    (``track`` set here). A server checked by one backend only keeps its own check, and a backend
    with raw directives keeps its own checks (they may change how it checks). Weight, ``backup``,
    drain and maintenance stay each backend's own: a tracking server in maintenance leaves the
    others alone. Returns the check backends (``backends`` lists who tracks them), sorted.
    """
    specs: dict[str, dict[str, Any]] = {}
    users: dict[tuple[str, str, int], list[tuple[str, dict[str, Any]]]] = {}
    for be in backends:
        if be["raw"]:
            continue
        spec = check_spec(be)
        name = "chk-" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
        specs[name] = spec
        for s in be["servers"]:
            users.setdefault((name, s["address"], s["port"]), []).append((be["name"], s))
    checks: dict[str, dict[str, Any]] = {}
    for (name, addr, port), used in sorted(users.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        if len(used) < 2:
            continue
        chk = checks.setdefault(name, {"name": name, **specs[name], "servers": [], "backends": set()})
        server = f"{addr}:{port}"
        chk["servers"].append({"name": server, "address": addr, "port": port})
        for bname, s in used:
            s["track"] = {"backend": name, "server": server}
            chk["backends"].add(bname)
    return [{**checks[k], "backends": sorted(checks[k]["backends"])} for k in sorted(checks)]
