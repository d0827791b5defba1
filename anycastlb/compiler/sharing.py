"""Shared VIPs: several http services on one VIP:port, routed by host and path prefix.

Two services may use one VIP and port only when both are of mode http and both have a
``route``; they then get one HAProxy frontend (``shared-<port>-<first VIP>``) that sends each
request to the service whose host matches best (an exact name, then a ``*.`` name, longest
first, then any host), then whose path prefix is longest. With TLS every service's
certificate is on the bind and HAProxy picks it by SNI. What the services of one frontend
cannot each have their own of (who may connect, maxconn, client timeout, redirects, HSTS,
TLS on the port, the VIP list) must agree; lint refuses what does not, naming both places.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import schema as S
from .base import IP, acme_certificate
from ..loader import file_of, line_of
from .context import _Ctx, _section, _Svc


def tls_ports(m: S.Service) -> set[int]:
    """The ports the service terminates TLS on (none unless mode http with tls)."""
    return set(m.tls.ports) if m.tls is not None and m.mode == "http" else set()


def route_hosts(m: S.Service) -> list[str]:
    """The host names the service answers on a shared VIP:port (lower case); [] = any host."""
    if m.route is not None and m.route.hosts is not None:
        return [str(h).lower() for h in m.route.hosts]
    if m.apache is not None and m.apache.server_name:
        return [str(h).lower() for h in [m.apache.server_name, *m.apache.aliases]]
    return []


def norm_path(path: str) -> str:
    """A path prefix without its trailing slash (``/api/`` is ``/api``; ``/`` stays)."""
    return path.rstrip("/") or "/"


def route_paths(m: S.Service) -> list[str]:
    return [norm_path(p) for p in (m.route.paths if m.route is not None else ["/"])]


def claims(m: S.Service) -> list[tuple[str | None, str]]:
    """(host or None for any host, path prefix) pairs the service answers."""
    hosts: list[str | None] = [*route_hosts(m)] or [None]
    return [(h, p) for h in hosts for p in route_paths(m)]


def under(path: str, prefix: str) -> bool:
    """Whether ``path`` lies under the prefix (whole segments)."""
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def host_rank(host: str | None) -> tuple[int, int]:
    """Sort key: exact names first, then ``*.`` names (the longest suffix first), then any host."""
    if host is None:
        return (2, 0)
    return (1, -len(host)) if host.startswith("*.") else (0, 0)


def vip_request(m: S.Service, port: int) -> dict[str, Any]:
    """What a client sends to reach this service on ``port`` through its VIP: Host (and SNI), path,
    TLS, and the status it expects (Icinga's VIP checks and the lab's probes ask the same)."""
    exact = [h for h in route_hosts(m) if not h.startswith("*.")]
    host = exact[0] if exact else (m.apache.server_name if m.apache and m.apache.server_name else None)
    path = m.check.http.path if m.check.http else "/"
    if not any(under(norm_path(path), p) for p in route_paths(m)):
        path = route_paths(m)[0]
    redirect = bool(m.redirect_http and port == 80)
    return {"host": host, "path": path, "tls": port in tls_ports(m), "expect": "301" if redirect else None}


def certificate_of(sname: str, m: S.Service) -> str | None:
    """The certificate name a service terminates TLS with (its own, or its ACME certificate)."""
    if m.tls is None:
        return None
    return acme_certificate(sname) if m.tls.acme else m.tls.certificate


@dataclass
class SharedPort:
    """One VIP:port several services share: its frontend's name and the services, sorted."""

    name: str
    port: int
    vips: list[IP]
    services: list[str]


def shared_ports(services: dict[str, _Svc]) -> dict[tuple[str, int], SharedPort]:
    """(service, port) → the shared frontend it is part of, for every VIP:port of two or more services."""
    users: dict[tuple[IP, int], list[str]] = {}
    for sname in sorted(services):
        svc = services[sname]
        if svc.model.mode != "http":
            continue
        for ip in svc.vips:
            for p in svc.ports:
                if p.protocol == "tcp":
                    users.setdefault((ip, p.port), []).append(sname)
    out: dict[tuple[str, int], SharedPort] = {}
    for (ip, port), names in users.items():
        if len(names) < 2 or (names[0], port) in out:
            continue
        vips = services[names[0]].vips
        shared = SharedPort(f"shared-{port}-{vips[0]}", port, vips, names)
        for sname in names:
            out[(sname, port)] = shared
    return out


# ------------------------------------------------------------------ lint

#: Frontend settings the services of one shared VIP:port must agree on: (key, getter).
AGREE: tuple[tuple[str, Any], ...] = (
    ("allow", lambda m: sorted(m.allow)),
    ("redirect_http", lambda m: m.redirect_http),
    ("haproxy.maxconn", lambda m: m.haproxy.maxconn if m.haproxy else None),
    ("haproxy.timeouts.client", lambda m: m.haproxy.timeouts.client if m.haproxy else None),
    ("haproxy.hsts", lambda m: m.haproxy.hsts if m.haproxy else None),
    ("haproxy.redirects", lambda m: m.haproxy.redirects if m.haproxy else []),
)


def _at(ctx: _Ctx, svc: _Svc, key: str) -> str:
    """``file:line`` of ``key`` in the service's own text, else of the service itself (a key it inherits
    or leaves unset)."""
    services = _section(ctx, "services")
    own = services.get(svc.name)
    file, line = line_of(own, key.split(".")) if isinstance(own, dict) else (None, None)
    if line is None:
        file, line = line_of(services, [svc.name])
    file = file_of(services, svc.name) or file or ctx.name
    return f"{file}:{line}" if line else file


def _route_key(m: S.Service) -> str:
    if m.route is not None and m.route.hosts is not None:
        return "route.hosts"
    return "apache.server_name" if m.apache is not None and m.apache.server_name else "route"


def check_sharing(ctx: _Ctx, services: dict[str, _Svc]) -> None:
    """Refuse VIP:ports used twice unless both services can share them (see the module docstring)."""
    used: dict[tuple[IP, S.Port], list[str]] = {}
    for sname in sorted(services):
        svc = services[sname]
        for ip in svc.vips:
            for p in svc.ports:
                used.setdefault((ip, p), []).append(sname)
    done: set[tuple[str, str, int]] = set()
    for (ip, p), names in used.items():
        for i, sname in enumerate(names[1:], 1):
            first = names[0]
            if (first, sname, p.port) not in done:   # a pair is judged once, at its first common VIP
                done.add((first, sname, p.port))
                _check_pair(ctx, services, ip, p, first, sname, names[:i])


def _check_pair(ctx: _Ctx, services: dict[str, _Svc], ip: IP, p: S.Port, first: str, sname: str,
                earlier: list[str]) -> None:
    """Service ``sname`` uses VIP ``ip`` port ``p`` after ``first`` (``earlier``: every one before it)."""
    svc, m = services[sname], services[sname].model
    fsvc, fm = services[first], services[first].model
    where = _at(ctx, fsvc, "ports")
    err = lambda key, msg: ctx.err("services", sname, key, msg, svc.raw, key.split("."))  # noqa: E731
    if m.mode != "http" or fm.mode != "http":
        if m.mode != fm.mode:
            err("mode", f"VIP {ip} port {p} is already used by service {first!r} ({where}) of mode {fm.mode}: "
                f"modes {m.mode} and {fm.mode} cannot share a VIP:port (only http services share one, routed "
                "by host and path)")
        else:
            err("ports", f"VIP {ip} port {p} is already used by service {first!r} ({where}): only services of "
                "mode http share a VIP:port, routed by host and path")
        return
    if m.route is None or fm.route is None:
        lacking = [x for x, mm in ((first, fm), (sname, m)) if mm.route is None]
        err("ports", f"VIP {ip} port {p} is already used by service {first!r} ({where}): to share it, give "
            f"{' and '.join(repr(x) for x in lacking)} a route (hosts and paths)")
        return
    if set(svc.vips) != set(fsvc.vips):
        err("vip", f"shares VIP {ip} port {p} with service {first!r} ({_at(ctx, fsvc, 'vip')}), whose VIPs are "
            f"{', '.join(map(str, fsvc.vips))}: services that share a VIP:port have the same VIPs")
    if (p.port in tls_ports(m)) != (p.port in tls_ports(fm)):
        tls, plain = (sname, first) if p.port in tls_ports(m) else (first, sname)
        err("tls", f"service {tls!r} terminates TLS on VIP {ip} port {p} and service {plain!r} "
            f"({where}) does not: one VIP:port is TLS for all its services or for none")
    for key, get in AGREE:
        if get(m) != get(fm):
            err(key, f"{key} differs from service {first!r} ({_at(ctx, fsvc, key)}), with which it shares VIP "
                f"{ip} port {p}: one frontend serves both, so they must agree")
    # one (host, path) per VIP:port, and one certificate per host name
    mine = claims(m)
    for other in earlier:
        om = services[other].model
        theirs = set(claims(om))
        for host, path in mine:
            if (host, path) in theirs:
                err(_route_key(m), f"host {host or 'any'} path {path} on VIP {ip} port {p} is already claimed by "
                    f"service {other!r} ({_at(ctx, services[other], _route_key(om))})")
        if p.port in tls_ports(m) and p.port in tls_ports(om):
            mine_cert, their_cert = certificate_of(sname, m), certificate_of(other, om)
            both = sorted({h for h, _ in mine if h} & {h for h, _ in theirs if h})
            if both and mine_cert != their_cert:
                err("tls", f"host {both[0]} on VIP {ip} port {p} is also routed to service {other!r} "
                    f"({_at(ctx, services[other], 'tls')}), which terminates it with certificate "
                    f"{their_cert!r}: HAProxy picks the certificate by SNI, before the path is known, so the "
                    "services of one host name share one certificate")


# ------------------------------------------------------------------ HAProxy


def frontend_routes(shared: SharedPort, services: dict[str, _Svc], backend_of: Any) -> dict[str, Any]:
    """The routing of a shared frontend: host and path ACLs (named h0.., p0..), one rule per claim in
    match order, the default backend (the service claiming any host and /), if any.

    ``backend_of(sname)`` names the service's backend on this port."""
    hosts: dict[str, dict[str, Any]] = {}
    paths: dict[str, dict[str, Any]] = {}
    rules: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    default = None
    for sname in shared.services:
        m = services[sname].model
        for host, path in claims(m):
            if host is None and path == "/":
                default = backend_of(sname)
                continue
            acls = []
            if host is not None:
                h = hosts.setdefault(host, {"name": f"h{len(hosts)}", "match": "end" if host.startswith("*.")
                                            else "str", "value": host[1:] if host.startswith("*.") else host})
                acls.append(h["name"])
            if path != "/":
                acls.append(paths.setdefault(path, {"name": f"p{len(paths)}", "value": path})["name"])
            rules.append(((host_rank(host), -len(path), host or "", path),
                          {"service": sname, "backend": backend_of(sname), "acls": acls}))
    return {"hosts": list(hosts.values()), "paths": list(paths.values()),
            "rules": [r for _key, r in sorted(rules, key=lambda t: t[0])], "default": default}
