"""Per-object checks: addresses, each service and its settings, references, conflicts,
routing, ACME and secrets."""

from __future__ import annotations

import ipaddress
from typing import Any, Mapping

from .. import schema as S
from ..loader import Marked, file_of
from .base import CHECK_KINDS, HAPROXY_CHECKS, HEALTHD_CHECKS, IP, SECTION_KIND, Net, acme_names, server_port
from .context import _Ctx, _parse_ip, _section, _Svc, _tenant_of, _where
from .sharing import check_sharing


#: Addresses no VIP, pool or backend may be (nor overlap, for pools).
SPECIAL_NETS = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "fe80::/10", "ff00::/8", "::ffff:0:0/96")]


def _special(ip: IP) -> str | None:
    """Why an address cannot be a VIP or a backend (None if it can)."""
    for what, flag in (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback),
                       ("link-local", ip.is_link_local), ("multicast", ip.is_multicast)):
        if flag:
            return what
    if ip.version == 4 and (ip in ipaddress.ip_network("240.0.0.0/4") or ip in ipaddress.ip_network("0.0.0.0/8")):
        return "broadcast" if str(ip) == "255.255.255.255" else "reserved"
    return None


def _host_names(m: S.Service, sname: str) -> list[tuple[str, str]]:
    """(key, host name) a service claims: its vhost's name and aliases, its check's Host, its route's hosts."""
    out: list[tuple[str, str]] = []
    if m.apache is not None:
        out.append(("apache.server_name", m.apache.server_name or sname))
        out += [(f"apache.aliases[{i}]", a) for i, a in enumerate(m.apache.aliases)]
    if m.check.http is not None and m.check.http.host:
        out.append(("check.http.host", m.check.http.host))
    if m.route is not None and m.route.hosts:
        out += [(f"route.hosts[{i}]", h) for i, h in enumerate(m.route.hosts)]
    return out


def _check_server_names(ctx: _Ctx, services: dict[str, _Svc], nodes: dict[str, S.Node]) -> None:
    """Two services may not claim one host name on one backend port of one node (apache would pick one)."""
    claims: dict[tuple[str, int, str], str] = {}
    for sname in sorted(services):
        svc = services[sname]
        m = svc.model
        if m.apache is None or m.mode != "http":
            continue
        names = [(k, n) for k, n in _host_names(m, sname) if k.startswith("apache")]
        for b in sorted(m.backends):
            if b not in nodes:
                continue
            for port in sorted({server_port(m, p) for p in svc.ports}):
                for key, host in names:
                    first = claims.setdefault((b, port, host.lower()), sname)
                    if first != sname:
                        ctx.err("services", sname, key, f"host name {host!r} on node {b!r} port {port} is already "
                                f"claimed by service {first!r} ({file_of(ctx.raw['services'], first)})",
                                svc.raw, key.replace("[", ".").replace("]", "").split("."))


def _check_addresses(ctx: _Ctx, nodes: dict[str, S.Node], peers: dict[str, S.Peer]) -> None:
    owners: dict[IP, str] = {}
    for section, objs in (("nodes", nodes), ("peers", peers)):
        for oid, obj in objs.items():
            body = _section(ctx, section).get(oid)
            for key, want in (("address", 4), ("address6", 6)):
                text = getattr(obj, key)
                if text is None:
                    continue
                ip = _parse_ip(text)
                if ip is None or ip.version != want:
                    ctx.err(section, oid, key, f"{text!r} is not an IPv{want} address", body, [key])
                    continue
                if ip in owners:
                    ctx.err(section, oid, key, f"address {ip} is also the address of {owners[ip]}", body, [key])
                else:
                    owners[ip] = f"{SECTION_KIND[section]} {oid!r}"


def _check_service(ctx: _Ctx, name: str, m: S.Service, raw: Marked, pools: list[Net],
                   nodes: dict[str, S.Node], clusters: dict[str, S.Cluster]) -> _Svc | None:
    err = lambda key, msg, path=None: ctx.err("services", name, key, msg, raw, path or key.split("."))  # noqa: E731
    ok = True
    if m.mode is None:
        err("mode", "required key is missing (http, tcp or anycast)")
        return None
    if not m.vip:
        err("vip", "required key is missing: at least one VIP")
        ok = False
    if not m.ports:
        err("ports", "required key is missing: at least one port")
        ok = False
    vips: list[IP] = []
    for i, text in enumerate(m.vip):
        path = ["vip", i] if isinstance(raw.get("vip"), list) else ["vip"]
        try:
            ip = S.parse_ip(text)
        except ValueError as exc:
            err(f"vip[{i}]", str(exc), path)
            ok = False
            continue
        why = _special(ip)
        if why:
            err(f"vip[{i}]", f"VIP {ip} is a {why} address", path)
            ok = False
            continue
        fam_pools = [p for p in pools if p.version == ip.version]
        if not fam_pools:
            err(f"vip[{i}]", f"VIP {ip} is IPv{ip.version} but vip_pools has no IPv{ip.version} prefix", path)
            ok = False
        elif not any(ip in p for p in fam_pools):
            err(f"vip[{i}]", f"VIP {ip} is outside vip_pools ({', '.join(map(str, fam_pools))})", path)
            ok = False
        if ip in vips:
            err(f"vip[{i}]", f"VIP {ip} is listed twice", path)
        else:
            vips.append(ip)
    seen_ports: set[S.Port] = set()
    for i, p in enumerate(m.ports):
        if p in seen_ports:
            err(f"ports[{i}]", f"port {p} is listed twice", ["ports", i])
        seen_ports.add(p)
        if p.protocol == "udp" and m.mode != "anycast":
            err(f"ports[{i}]", f"udp port {p} needs mode anycast: HAProxy balances tcp only", ["ports", i])
            ok = False
    if m.mode in ("http", "tcp"):
        if m.cluster is None:
            err("cluster", f"required for mode {m.mode}: the HAProxy cluster that serves it")
            ok = False
        elif m.cluster not in clusters:
            if m.cluster not in _section(ctx, "clusters"):   # one refused is reported where it is written
                err("cluster", f"cluster {m.cluster!r} does not exist")
            ok = False
    elif m.cluster is not None:
        err("cluster", "mode anycast has no cluster: its backends announce the VIP themselves")
        ok = False
    if not m.backends:
        err("backends", "required key is missing: at least one backend")
        ok = False
    for bname, b in m.backends.items():
        bpath = ["backends", bname] if isinstance(raw.get("backends"), dict) else ["backends"]
        if bname not in nodes and str(bname).lower().startswith("vip-"):
            err(f"backends.{bname}", f"backend names starting with 'vip-' are reserved for the monitoring's "
                "VIP hosts (rename it)", bpath)
            ok = False
        if bname not in nodes and b.address is None:
            err(f"backends.{bname}", f"backend {bname!r} is not a node and has no address", bpath)
            ok = False
        if b.address is not None:
            if _parse_ip(b.address) is None:
                err(f"backends.{bname}.address", f"{b.address!r} is not an IP address", bpath + ["address"])
                ok = False
            elif m.mode == "anycast":
                err(f"backends.{bname}.address", "an anycast backend must be a managed node (it announces the VIP)",
                    bpath + ["address"])
                ok = False
    if m.mode in ("anycast", "tcp"):
        for key in ("tls", "apache"):
            if getattr(m, key) is not None:
                err(key, f"{key} needs mode http")
                ok = False
    if m.mode == "anycast":
        if all(getattr(m.check, k) is None for k in ("http", "tcp", "dns", "kerberos")) and not any(
                p.protocol == "tcp" for p in m.ports):
            err("check", "a udp-only anycast service needs check.dns, check.kerberos, check.tcp (with a port) "
                "or check.http")
            ok = False
    if m.check.unit is not None and m.mode != "anycast":
        err("check.unit", "only an anycast service is watched by its unit (HAProxy watches the others)")
        ok = False
    if m.steering is not None and m.mode != "anycast":
        err("steering", f"a {m.mode} service is steered with its cluster: set steering on the cluster "
                        f"{m.cluster!r} (docs/steering.md)")
        ok = False
    if m.check.http is not None and m.check.tcp is not None:
        err("check", "check has both http and tcp: set the one you do not want to null")
        ok = False
    if m.mode == "tcp" and m.redirect_http:
        err("redirect_http", "redirect_http needs mode http")
    if m.mode == "http" and m.tls is not None:
        tls_raw = raw.get("tls")
        explicit = isinstance(tls_raw, dict) and "ports" in tls_raw
        for i, number in enumerate(m.tls.ports):
            if S.Port(port=number) in m.ports:
                continue
            if explicit:
                err(f"tls.ports[{i}]", f"tls terminates on port {number}, which is not a tcp port in ports",
                    ["tls", "ports", i])
            else:
                err("tls", f"tls terminates on port {number}, which is not in ports (set tls.ports for others)")
            ok = False
    if m.route is not None and m.mode != "http":
        err("route", "route needs mode http: HAProxy routes by host and path only in mode http")
        ok = False
    if m.redirect_http and m.mode == "http":
        if m.tls is None:
            err("redirect_http", "redirect_http sends clients to https, which needs tls")
            ok = False
        elif 443 not in m.tls.ports or 80 in m.tls.ports:
            err("redirect_http", "redirect_http sends port 80 to https on port 443: tls.ports must hold 443 "
                "and not 80")
            ok = False
        if S.Port(port=80) not in m.ports:
            err("redirect_http", "redirect_http answers on port 80, which is not in ports")
            ok = False
    if m.apache is not None and not any(b in nodes for b in m.backends):
        err("apache", "apache vhosts go on managed backends, and this service has none")
    return _Svc(name, m, raw, vips, list(m.ports)) if ok else None


def _check_settings(ctx: _Ctx, name: str, m: S.Service, raw: Marked) -> bool:
    """Protocol checks, per-service HAProxy settings and per-port backend ports; False if refused."""
    def err(key: str, msg: str) -> None:
        ctx.err("services", name, key, msg, raw, key.split("."))

    ok = True
    kinds = [k for k in CHECK_KINDS if getattr(m.check, k) is not None]
    if len(kinds) > 1 and set(kinds) - {"http", "tcp"}:
        err("check", f"check has several kinds ({', '.join(kinds)}): set the ones you do not want to null")
        ok = False
    for k in kinds:
        if k in HAPROXY_CHECKS and m.mode != "tcp":
            err(f"check.{k}", f"a {k} check is run by HAProxy on a service of mode tcp, not {m.mode}")
            ok = False
        if k in HEALTHD_CHECKS and m.mode != "anycast":
            err(f"check.{k}", f"a {k} check is run by healthd on an anycast service, not mode {m.mode}")
            ok = False
    if m.check.http is not None and m.check.http.body is not None and m.mode == "anycast":
        err("check.http.body", "the body of an answer is checked by HAProxy: mode http or tcp")
        ok = False
    if isinstance(m.backend_port, dict):
        tcp_ports = {p.port for p in m.ports if p.protocol == "tcp"}
        for port in m.backend_port:
            if port not in tcp_ports:
                err("backend_port", f"port {port} is mapped but is not a tcp port of the service")
                ok = False
    h = m.haproxy
    if h is None:
        return ok
    if m.mode == "anycast":
        err("haproxy", "haproxy settings need mode http or tcp (an anycast service has no HAProxy)")
        return False
    if h.stick is not None:
        if h.stick.by == "cookie" and m.mode != "http":
            err("haproxy.stick", "stickiness by cookie needs mode http: use 'source' for tcp")
            ok = False
        if h.stick.by == "cookie" and h.stick.expire is not None:
            err("haproxy.stick.expire", "expire is for stickiness by source: a cookie lasts the browser session")
            ok = False
        if h.stick.by == "source" and h.stick.cookie is not None:
            err("haproxy.stick.cookie", "cookie names the cookie of stickiness by cookie, not by source")
            ok = False
    if h.hsts is not None and (m.mode != "http" or m.tls is None):
        err("haproxy.hsts", "hsts is sent on TLS answers: it needs mode http and tls")
        ok = False
    if h.redirects and m.mode != "http":
        err("haproxy.redirects", "redirects need mode http")
        ok = False
    for i, r in enumerate(h.redirects):
        if (r.location is None) == (r.prefix is None):
            err(f"haproxy.redirects.{i}", "a redirect has either location (one URL) or prefix (the path is kept)")
            ok = False
    if h.raw is not None and (h.raw.frontend or h.raw.backend):
        file, _line = _where(raw, ["haproxy", "raw"])
        tenant = _tenant_of(ctx, file)
        if tenant is not None:
            err("haproxy.raw", f"raw HAProxy directives are allowed only in root files, not in {file} "
                               f"(tenant {tenant!r})")
            ok = False
    return ok


def _check_proxy_protocol(ctx: _Ctx, services: dict[str, _Svc], nodes: dict[str, S.Node]) -> None:
    """apache reads the PROXY protocol per port: the services on one backend port must agree."""
    seen: dict[tuple[str, int], tuple[str, str | None]] = {}
    for sname in sorted(services):
        svc = services[sname]
        m = svc.model
        if m.apache is None or m.mode != "http":
            continue
        send = m.haproxy.send_proxy if m.haproxy else None
        for bid in m.backends:
            if bid not in nodes:
                continue
            for p in svc.ports:
                port = server_port(m, p)
                other = seen.setdefault((bid, port), (sname, send))
                if other[1] != send:
                    ctx.err("services", sname, "haproxy.send_proxy",
                            f"apache on {bid} port {port} serves service {other[0]!r} with send_proxy "
                            f"{other[1] or 'unset'}: services that share a backend port must agree", svc.raw,
                            ["haproxy", "send_proxy"] if m.haproxy else ["apache"])


def _check_references(ctx: _Ctx, name: str, raw: Any, pools: list[Net], nodes: dict[str, S.Node],
                      clusters: dict[str, S.Cluster]) -> None:
    """What a service that cannot be validated whole still shows (a broken template chain, a bad value
    elsewhere): its cluster, VIPs and backends, read from the raw mapping, so errors come in one round."""
    if not isinstance(raw, dict):
        return
    err = lambda key, msg, path: ctx.err("services", name, key, msg, raw, path)  # noqa: E731
    cluster = raw.get("cluster")
    if isinstance(cluster, str) and cluster not in clusters and cluster not in _section(ctx, "clusters"):
        err("cluster", f"cluster {cluster!r} does not exist", ["cluster"])
    vips = raw.get("vip")
    for i, text in enumerate(vips if isinstance(vips, list) else [vips] if vips is not None else []):
        path = ["vip", i] if isinstance(vips, list) else ["vip"]
        try:
            ip = S.parse_ip(text)
        except ValueError as exc:
            err(f"vip[{i}]", str(exc), path)
            continue
        fam = [p for p in pools if p.version == ip.version]
        if fam and not any(ip in p for p in fam):
            err(f"vip[{i}]", f"VIP {ip} is outside vip_pools ({', '.join(map(str, fam))})", path)
    try:
        backends = S._backends(raw.get("backends"))
    except ValueError:
        return
    for bname, b in (backends.items() if isinstance(backends, dict) else []):
        if isinstance(bname, str) and bname not in nodes and not (isinstance(b, dict) and b.get("address")):
            err(f"backends.{bname}", f"backend {bname!r} is not a node and has no address", ["backends"])


def _check_conflicts(ctx: _Ctx, services: dict[str, _Svc], clusters: dict[str, S.Cluster],
                     nodes: dict[str, S.Node]) -> None:
    check_sharing(ctx, services)   # one VIP:port, one service, unless http services share it by route
    # A node must not both balance a VIP (as a cluster member) and announce it as an anycast backend.
    lb_vips: dict[IP, dict[str, str]] = {}
    for sname, svc in services.items():
        if svc.model.mode in ("http", "tcp") and svc.model.cluster in clusters:
            for ip in svc.vips:
                for member in clusters[svc.model.cluster].nodes:
                    lb_vips.setdefault(ip, {})[member] = sname
    for sname, svc in services.items():
        if svc.model.mode != "anycast":
            continue
        for bname in svc.model.backends:
            for ip in svc.vips:
                if bname in lb_vips.get(ip, {}):
                    ctx.err("services", sname, f"backends.{bname}",
                            f"node {bname!r} balances VIP {ip} in service {lb_vips[ip][bname]!r} "
                            f"and cannot also announce it as an anycast backend", svc.raw, ["backends"])


def _check_routing(ctx: _Ctx, nodes: dict[str, S.Node], services: dict[str, _Svc],
                   clusters: dict[str, S.Cluster]) -> None:
    speakers = any(s.model.mode == "anycast" for s in services.values()) or any(
        c.nodes for c in clusters.values())
    if speakers and not any("route-reflector" in n.roles for n in nodes.values()):
        ctx.err("nodes", "", "roles", "the fleet announces VIPs but no node has the role route-reflector")


def _check_acme(ctx: _Ctx, services: dict[str, _Svc], nodes: dict[str, S.Node], acme: S.Acme | None,
                has_section: bool) -> str | None:
    """Services with ``tls: {acme: true}`` have names to certify over HTTP-01; return the issuer node."""
    users = {sname: svc for sname, svc in services.items() if svc.model.tls is not None and svc.model.tls.acme}
    for sname, svc in users.items():
        m = svc.model
        if not has_section:
            ctx.err("services", sname, "tls.acme", "tls.acme needs the catalog's acme section (directory, contact)",
                    svc.raw, ["tls", "acme"])
        if not acme_names(m):
            ctx.err("services", sname, "tls.acme", "tls.acme certifies apache.server_name and apache.aliases, and "
                    "this service names none: set apache.server_name", svc.raw, ["tls", "acme"])
        for i, alias in enumerate(m.apache.aliases if m.apache else []):
            if str(alias).startswith("*."):
                ctx.err("services", sname, f"apache.aliases[{i}]", f"{alias!r}: an HTTP-01 challenge cannot "
                        "certify a wildcard name (use tls.certificate for it)", svc.raw, ["apache", "aliases", i])
        if S.Port(port=80) not in m.ports:
            ctx.err("services", sname, "tls.acme", "tls.acme is validated over HTTP-01 on port 80, which is not in "
                    "ports", svc.raw, ["tls", "acme"])
    if not users:
        return None
    issuers = sorted(n for n, x in nodes.items() if "acme" in x.roles)
    if len(issuers) > 1:
        ctx.err("nodes", issuers[1], "roles", f"only one node may have the role acme ({', '.join(issuers)} do)")
    if not issuers:
        issuers = sorted(n for n, x in nodes.items() if "salt-master" in x.roles)
    if not issuers:
        first = sorted(users)[0]
        ctx.err("services", first, "tls.acme", "tls.acme needs an issuer: a node with the role acme or salt-master",
                users[first].raw, ["tls", "acme"])
        return None
    return issuers[0]


def _check_secrets(ctx: _Ctx, services: dict[str, _Svc], bgp: S.Bgp | None, peers: dict[str, S.Peer],
                   secrets: Mapping[str, Any], acme: S.Acme | None = None) -> None:
    certs = secrets.get("certificates") or {}
    if acme is not None and acme.eab is not None and acme.eab.secret not in (secrets.get("acme_eab") or {}):
        ctx.err("acme", "", "eab.secret", f"EAB key {acme.eab.secret!r} is not under acme_eab in the secrets store",
                ctx.raw.get("acme"), ["eab", "secret"])
    for sname, svc in services.items():
        if svc.model.tls is not None and svc.model.tls.certificate is not None and \
                svc.model.tls.certificate not in certs:
            ctx.err("services", sname, "tls.certificate",
                    f"certificate {svc.model.tls.certificate!r} is not in the secrets pillar", svc.raw,
                    ["tls", "certificate"])
    passwords = secrets.get("bgp_passwords") or {}
    if bgp is not None and bgp.password and bgp.password not in passwords:
        ctx.err("bgp", "", "password", f"BGP password {bgp.password!r} is not in the secrets pillar",
                ctx.raw.get("bgp"), ["password"])
    for pid, p in peers.items():
        if p.password and p.password not in passwords:
            ctx.err("peers", pid, "password", f"BGP password {p.password!r} is not in the secrets pillar")
