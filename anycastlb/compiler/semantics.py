"""Fleet-wide rules: pools, address ownership, node roles and ports, one VIP one announcing set;
and the tenants' lanes."""

from __future__ import annotations

import ipaddress
from typing import Any

from .. import schema as S
from ..errors import CatalogError
from ..loader import MarkedList, file_of, line_of
from .base import BGP_PORT, HAPROXY_STATS_PORT, IP, SECTION_KIND, SSH_PORT, Net, _addr_key, server_port
from .checks import SPECIAL_NETS, _host_names, _special
from .context import _check_name, _Ctx, _pydantic, _section, _Svc, _where


#: Ports a node serves itself, by what it runs (see docs/firewall.md).
NODE_PORTS: dict[str, tuple[tuple[int, str, str], ...]] = {
    "any": ((SSH_PORT, "tcp", "ssh"),),
    "bird": ((BGP_PORT, "tcp", "BGP"), (3784, "udp", "BFD"), (3785, "udp", "BFD echo"),
             (4784, "udp", "multihop BFD")),
    "salt-master": ((4505, "tcp", "Salt publish"), (4506, "tcp", "Salt return")),
    "monitoring": ((5665, "tcp", "Icinga 2 API"),),
    "haproxy": ((HAPROXY_STATS_PORT, "tcp", "the HAProxy stats"),),
}


def _limits(ctx: _Ctx) -> S.Limits:
    raw = ctx.raw.get("limits")
    if raw is None:
        return S.Limits()
    return _pydantic(ctx, S.Limits, raw, "limits", "", raw) or S.Limits()


def _check_semantics(ctx: _Ctx, services: dict[str, _Svc], clusters: dict[str, S.Cluster],
                     nodes: dict[str, S.Node], peers: dict[str, S.Peer], pools: list[Net],
                     management: list[Net], limits: S.Limits) -> list[CatalogError]:
    """Address, port and role rules (issue 11 item 4, issue 19 item 5); returns the warnings."""
    warnings: list[CatalogError] = []
    # -- pools and management
    for key, nets in (("vip_pools", pools), ("management", management)):
        raw = ctx.raw.get(key) or []
        for i, net in enumerate(nets):
            file, line = line_of(raw, [i]) if isinstance(raw, MarkedList) else (None, None)
            def bad(msg: str, key: str = key, i: int = i, file: Any = file, line: Any = line) -> None:
                ctx.errors.append(CatalogError(file or ctx.name, line, key, "", f"{key}[{i}]", msg))
            if net.prefixlen == 0:
                bad(f"{net} is everything: name the prefixes you mean")
                continue
            if key == "vip_pools":
                widest = limits.max_pool_v4 if net.version == 4 else limits.max_pool_v6
                if net.prefixlen < widest:
                    bad(f"pool {net} is wider than /{widest} (limits.max_pool_v{net.version})")
                special = [x for x in SPECIAL_NETS if x.version == net.version and net.overlaps(x)]
                if special:
                    bad(f"pool {net} overlaps {special[0]} (unspecified, loopback, link-local, multicast or "
                        f"reserved addresses)")
                for mg in management:
                    if mg.version == net.version and net.overlaps(mg):
                        bad(f"pool {net} overlaps the management prefix {mg}")
    # node and peer addresses are not VIP space (the VIP plan owns the pools' addresses on lo)
    for section, objs in (("nodes", nodes), ("peers", peers)):
        for oid, obj in objs.items():
            for key in ("address", "address6"):
                text = getattr(obj, key)
                pool = next((p for p in pools if text and ipaddress.ip_address(text) in p), None)
                if pool is not None:
                    ctx.err(section, oid, key, f"address {text} is inside the VIP pool {pool}: node and peer "
                            "addresses may not be VIP space")
    if not management and not ctx.raw.get("management"):
        ctx.errors.append(CatalogError(
            ctx.raw.file or ctx.name, ctx.raw.marks.get("management"), "catalog", "", "management",
            "required section 'management' is missing or empty: the prefixes that may reach SSH and Salt "
            "(e.g. [198.51.100.0/24])"))
    # -- who owns an address
    owners: dict[IP, str] = {}
    for section, objs in (("nodes", nodes), ("peers", peers)):
        for oid, obj in objs.items():
            for text in (obj.address, obj.address6):
                if text:
                    owners.setdefault(ipaddress.ip_address(text), f"{SECTION_KIND[section]} {oid!r}")
    vip_owner: dict[IP, tuple[str, str]] = {}
    for sname in sorted(services):
        svc = services[sname]
        m = svc.model
        raw_vip = svc.raw.get("vip")
        for i, ip in enumerate(svc.vips):
            path = ["vip", i] if isinstance(raw_vip, list) else ["vip"]
            if ip in owners:
                ctx.err("services", sname, f"vip[{i}]", f"VIP {ip} is the address of {owners[ip]}", svc.raw, path)
            for net in management:
                if ip in net:
                    ctx.err("services", sname, f"vip[{i}]", f"VIP {ip} is inside the management prefix {net}",
                            svc.raw, path)
            # one VIP, one announcing set
            who = (f"cluster {m.cluster!r}" if m.mode != "anycast"
                   else f"the anycast backends {', '.join(sorted(m.backends))}")
            first = vip_owner.setdefault(ip, (sname, who))
            if first[1] != who:
                ctx.err("services", sname, f"vip[{i}]", f"VIP {ip} is announced by {who} here and by {first[1]} "
                        f"in service {first[0]!r} ({file_of(ctx.raw['services'], first[0])}): one VIP, one "
                        "announcing set", svc.raw, path)
    all_vips = {ip: s for s in sorted(services) for ip in services[s].vips}
    node_at = {ipaddress.ip_address(t): nid for nid, n in nodes.items() for t in (n.address, n.address6) if t}
    # -- node roles and what each node serves itself
    in_cluster = {x for c in clusters.values() for x in c.nodes}
    anycast_of: dict[str, list[str]] = {}
    for sname, svc in services.items():
        if svc.model.mode == "anycast":
            for b in svc.model.backends:
                anycast_of.setdefault(b, []).append(sname)
    served: dict[str, list[tuple[int, str, str]]] = {}
    for nid, n in nodes.items():
        ports: list[tuple[int, str, str]] = list(NODE_PORTS["any"])
        if nid in in_cluster or nid in anycast_of or "route-reflector" in n.roles or "monitoring" in n.roles:
            ports += NODE_PORTS["bird"]
        for role in ("salt-master", "monitoring"):
            if role in n.roles:
                ports += NODE_PORTS[role]
        if nid in in_cluster:
            ports += NODE_PORTS["haproxy"]
        served[nid] = ports
    for cid, c in clusters.items():
        for i, member in enumerate(c.nodes):
            member_node = nodes.get(member)
            for role in ("route-reflector", "monitoring", "salt-master"):
                if member_node is not None and role in member_node.roles:
                    ctx.err("clusters", cid, f"nodes[{i}]", f"node {member!r} has the role {role} and may not "
                            f"balance VIPs (a {role} in a cluster would peer with itself or expose its own "
                            f"ports on VIPs)", ctx.raw.get("clusters", {}).get(cid), ["nodes", i])
    # apache Listen ports per backend node
    apache_ports: dict[str, dict[int, str]] = {}
    for sname, svc in services.items():
        if svc.model.apache is not None and svc.model.mode == "http":
            for b in svc.model.backends:
                if b in nodes:
                    for p in svc.ports:
                        apache_ports.setdefault(b, {})[server_port(svc.model, p)] = sname
    for sname in sorted(services):
        svc = services[sname]
        m = svc.model
        allowed = set(m.allow_node_ports)
        announcers = (clusters[m.cluster].nodes if m.mode != "anycast" and m.cluster in clusters
                      else [b for b in m.backends if b in nodes])
        announcers = [x for x in announcers if x in nodes]
        err = lambda key, msg, path: ctx.err("services", sname, key, msg, svc.raw, path)  # noqa: E731
        if m.mode != "anycast" and m.cluster in clusters and not clusters[m.cluster].nodes:
            err("cluster", f"cluster {m.cluster!r} has no nodes: nothing would serve this service", ["cluster"])
        elif announcers and not any(nodes[x].state == "active" for x in announcers):
            f, ln = _where(svc.raw, ["cluster" if m.mode != "anycast" else "backends"])
            warnings.append(CatalogError(f or ctx.name, ln, "service", sname,
                                         "cluster" if m.mode != "anycast" else "backends",
                                         "no announcer is active (all drained or in maintenance): the service's "
                                         "VIPs are announced by no node"))
        if m.mode == "anycast":
            for b in m.backends:
                backend_node = nodes.get(b)
                for role in ("route-reflector", "monitoring", "salt-master"):
                    if backend_node is not None and role in backend_node.roles:
                        err(f"backends.{b}", f"node {b!r} has the role {role} and may not be an anycast backend",
                            ["backends"])
        if any(ip.version == 6 for ip in svc.vips):
            for x in announcers:
                if not nodes[x].address6:
                    err("vip", f"IPv6 VIPs need an IPv6 BGP session on every announcer, and node {x!r} has no "
                        "address6", ["vip"])
            for rr, n in nodes.items():
                if "route-reflector" in n.roles and not n.address6:
                    err("vip", f"IPv6 VIPs need IPv6 sessions to the route reflectors, and {rr!r} has no address6",
                        ["vip"])
        # VIP ports against what the announcing nodes serve themselves
        for i, p in enumerate(svc.ports):
            if p.port in allowed:
                continue
            for x in announcers:
                clash = [what for port, proto, what in served.get(x, []) if port == p.port and proto == p.protocol]
                clash += [f"apache's Listen for service {apache_ports[x][p.port]!r}"
                          for _ in [0] if p.protocol == "tcp" and p.port in apache_ports.get(x, {})]
                if clash:
                    err(f"ports[{i}]", f"port {p} is {clash[0]} on node {x!r}: pick another port, or list it in "
                        "allow_node_ports if this is meant", ["ports", i])
                    break
        # backends: no loopback / special addresses, no VIP of the fleet, no node's own ports
        for b, be in m.backends.items():
            bpath = ["backends", b] if isinstance(svc.raw.get("backends"), dict) else ["backends"]
            if be.address is not None:
                ip = ipaddress.ip_address(be.address)
                why = _special(ip)
                if why:
                    err(f"backends.{b}.address", f"backend address {ip} is a {why} address", bpath + ["address"])
                if ip in all_vips:
                    err(f"backends.{b}.address", f"backend address {ip} is a VIP of service {all_vips[ip]!r}: "
                        "traffic would loop", bpath + ["address"])
                elif any(ip in pool for pool in pools):
                    err(f"backends.{b}.address", f"backend address {ip} is inside vip_pools: the pools are VIP "
                        "space, announced by the fleet", bpath + ["address"])
            # a backend at a node's address is that node, whatever it is called
            target = b if b in nodes else node_at.get(ipaddress.ip_address(be.address)) if be.address else None
            if target is not None and m.mode != "anycast":
                for sport in sorted({server_port(m, p) for p in svc.ports}):
                    if sport in allowed:
                        continue
                    clash = [what for port, proto, what in served.get(target, []) if port == sport and proto == "tcp"]
                    if clash:
                        err(f"backends.{b}", f"backend port {sport} is {clash[0]} on node {target!r}: pick another "
                            "port, or list it in allow_node_ports if this is meant", bpath)
    # apache Listen against HAProxy's binds on one node
    for nid, listens in sorted(apache_ports.items()):
        for port, sname in sorted(listens.items()):
            for cid in sorted(clusters):
                if nid not in clusters[cid].nodes:
                    continue
                for other, svc in sorted(services.items()):
                    if svc.model.cluster == cid and svc.model.mode != "anycast" and any(
                            p.port == port and p.protocol == "tcp" for p in svc.ports) and \
                            port not in services[sname].model.allow_node_ports:
                        ctx.err("services", sname, "apache", f"apache on node {nid!r} would Listen on port {port}, "
                                f"which HAProxy binds there for service {other!r}", services[sname].raw, ["apache"])
    return warnings


def _in_suffixes(host: str, suffixes: list[str]) -> bool:
    base = host[2:] if host.startswith("*.") else host
    return any(base.lower() == s.lower() or base.lower().endswith("." + s.lower()) for s in suffixes)


def _check_tenants(ctx: _Ctx, services: dict[str, _Svc], nodes: dict[str, S.Node]) -> dict[str, Any]:
    """Tenants stay in their lanes (issue 11 item 6); returns who owns what."""
    raw_tenants = _section(ctx, "tenants")
    file_tenants: dict[str, str] = getattr(ctx.raw, "file_tenants", {})
    tenants: dict[str, S.Tenant] = {}
    for tname, body in raw_tenants.items():
        if not _check_name(ctx, "tenants", tname):
            continue
        declared = file_of(raw_tenants, tname)
        if declared in file_tenants:
            ctx.err("tenants", tname, "", "tenants are declared in root files only")
            continue
        t = _pydantic(ctx, S.Tenant, body if body is not None else {}, "tenants", tname, body)
        if t is not None:
            tenants[tname] = t
    # lanes of two tenants may not overlap
    names = sorted(tenants)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for pa in tenants[a].vip_prefixes:
                for pb in tenants[b].vip_prefixes:
                    if ipaddress.ip_network(pa).overlaps(ipaddress.ip_network(pb)):
                        ctx.err("tenants", b, "vip_prefixes", f"{pb} overlaps {pa} of tenant {a!r}")
            for ha in tenants[a].hostnames:
                for hb in tenants[b].hostnames:
                    if _in_suffixes(ha, [hb]) or _in_suffixes(hb, [ha]):
                        ctx.err("tenants", b, "hostnames", f"{hb!r} overlaps {ha!r} of tenant {a!r}")

    def where(tname: str) -> str:
        f, ln = line_of(raw_tenants, [tname])
        return f"{file_of(raw_tenants, tname)}:{ln}"

    def owner(section: str, name: str) -> str | None:
        sec = _section(ctx, section)
        return file_tenants.get(file_of(sec, name)) if name in sec else None

    # templates: a service extends only root templates and its own tenant's
    for section in ("templates", "services"):
        sec = _section(ctx, section)
        for oname, body in sec.items():
            mine = owner(section, oname)
            parent = body.get("extends") if isinstance(body, dict) else None
            if not isinstance(parent, str) or parent not in _section(ctx, "templates"):
                continue
            theirs = owner("templates", parent)
            if theirs is not None and theirs != mine:
                lane = f"tenant {mine!r}" if mine else "a root file"
                ctx.err(section, oname, "extends", f"template {parent!r} belongs to tenant {theirs!r} "
                        f"({file_of(_section(ctx, 'templates'), parent)}); {lane} may extend only root templates"
                        + (" and its own" if mine else ""), body, ["extends"])
    for sname in sorted(services):
        tname = owner("services", sname)
        if tname is None or tname not in tenants:
            continue
        t, svc, m = tenants[tname], services[sname], services[sname].model
        lane = f"tenant {tname!r} (declared in {where(tname)})"
        err = lambda key, msg, path: ctx.err("services", sname, key, msg, svc.raw, path)  # noqa: E731
        nets = [ipaddress.ip_network(p) for p in t.vip_prefixes]
        for i, ip in enumerate(svc.vips):
            if not any(ip in n for n in nets):
                err(f"vip[{i}]", f"VIP {ip} is outside the VIP prefixes of {lane}: "
                    f"{', '.join(t.vip_prefixes) or 'none'}", ["vip"])
        if m.mode != "anycast" and m.cluster and m.cluster not in t.clusters:
            err("cluster", f"cluster {m.cluster!r} is not one {lane} may use ({', '.join(t.clusters) or 'none'})",
                ["cluster"])
        node_at = {ipaddress.ip_address(x): nid for nid, n in nodes.items() for x in (n.address, n.address6) if x}
        for b, be in m.backends.items():
            # a backend at a node's address is that node, whatever the tenant calls it
            target = b if b in nodes else node_at.get(ipaddress.ip_address(be.address)) if be.address else None
            if target is not None and target not in t.nodes:
                err(f"backends.{b}", f"node {target!r} is not one {lane} may use ({', '.join(t.nodes) or 'none'})",
                    ["backends"])
            if be.address is not None and t.backend_prefixes is not None:
                ip = ipaddress.ip_address(be.address)
                if not any(ip in ipaddress.ip_network(p) for p in t.backend_prefixes):
                    err(f"backends.{b}.address", f"backend address {ip} is outside the backend prefixes of {lane}",
                        ["backends"])
        for key, host in _host_names(m, sname):
            if not _in_suffixes(host, t.hostnames):
                err(key, f"host name {host!r} is outside the host names of {lane}: "
                    f"{', '.join(t.hostnames) or 'none'}", key.replace("[", ".").replace("]", "").split("."))
        if m.tls is not None and m.tls.certificate not in t.certificates:
            err("tls.certificate", f"certificate {m.tls.certificate!r} is not one {lane} may use "
                f"({', '.join(t.certificates) or 'none'})", ["tls", "certificate"])
        if m.allow_node_ports:
            err("allow_node_ports", f"only root files may allow a node's own ports ({lane})", ["allow_node_ports"])
    # who owns what
    files: list[str] = list(getattr(ctx.raw, "files", [ctx.raw.file or ctx.name]))
    out: dict[str, Any] = {}
    for tname in [None] + sorted(tenants):
        key = tname or "(root)"
        svcs = sorted(s for s in _section(ctx, "services") if owner("services", s) == tname)
        out[key] = {
            "declared_in": where(tname) if tname else None,
            "files": [f for f in files if file_tenants.get(f) == tname],
            "services": svcs,
            "templates": sorted(x for x in _section(ctx, "templates") if owner("templates", x) == tname),
            "vips": sorted({str(ip) for s in svcs if s in services for ip in services[s].vips}, key=_addr_key),
            "host_names": sorted({h for s in svcs if s in services for _, h in _host_names(services[s].model, s)}),
            "lanes": tenants[tname].model_dump(exclude_none=True) if tname else None,
        }
    return out
