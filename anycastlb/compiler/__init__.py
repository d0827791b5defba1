"""Catalog → fleet model: resolution, validation, refusals and the per-node slices.

Pure Python: no Salt, no I/O beyond reading the catalog. ``compile_catalog``
returns a :class:`Fleet` whose ``nodes`` map each node id to a plain,
JSON-serialisable dict (the *node model*, see ``docs/model.md``) that holds all
that node's daemons need. Every refusal is collected before raising, so a user
sees every error at once.

The package by job: ``context`` (error context, pydantic messages, names, templates), ``checks``
(per-object rules), ``semantics`` (fleet-wide rules, tenants), ``index`` and ``build*`` (the node
model, one builder per daemon), ``fleet`` (what is returned). This module is the public API.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from .. import schema as S
from ..errors import CatalogRefused
from ..loader import Marked, load_catalog
from .base import (ACME_CHALLENGE_PATH, ACME_CHALLENGE_PORT, BFD_MULTIHOP_PORT, BFD_PORTS, BGP_PORT, CHECK_KINDS,
                   HAPROXY_CHECKS, HAPROXY_STATS_PORT, HEALTHD_CHECKS, IP, MAX_EXTENDS, MODEL_VERSION, SALT_PORTS,
                   SECTION_KIND, SSH_PORT, Net, acme_certificate, acme_names, check_kind, copy_model, deep_merge,
                   family, ident, server_port)
from .build import _build
from .build_haproxy import backend_settings, frontend_settings
from .checks import (SPECIAL_NETS, _check_acme, _check_addresses, _check_conflicts, _check_proxy_protocol,
                     _check_references, _check_routing, _check_secrets, _check_server_names, _check_service,
                     _check_settings)
from .context import (RESERVED_PREFIXES, _check_distinct, _check_name, _Ctx, _dedupe, _objects, _prefixes, _pydantic,
                      _resolve, _section, _Svc)
from .fleet import Fleet, NodeModels
from .semantics import NODE_PORTS, _check_semantics, _check_tenants, _limits

__all__ = [
    "ACME_CHALLENGE_PATH", "ACME_CHALLENGE_PORT", "BFD_MULTIHOP_PORT", "BFD_PORTS", "BGP_PORT", "CHECK_KINDS",
    "HAPROXY_CHECKS", "HAPROXY_STATS_PORT", "HEALTHD_CHECKS", "IP", "MAX_EXTENDS", "MODEL_VERSION", "NODE_PORTS",
    "RESERVED_PREFIXES", "SALT_PORTS", "SECTION_KIND", "SPECIAL_NETS", "SSH_PORT", "Fleet", "Net", "NodeModels",
    "acme_certificate", "acme_names", "backend_settings", "check_kind", "compile_catalog", "compile_raw",
    "copy_model", "deep_merge", "family", "frontend_settings", "ident", "server_port",
]


def compile_catalog(path: str | os.PathLike[str], secrets: Mapping[str, Any] | None = None) -> Fleet:
    """Load, validate and compile a catalog file or directory into a :class:`Fleet`.

    ``secrets``, when given (deploy time), is the secrets store
    (``{"certificates": {name: ...}, "bgp_passwords": {name: ...}}``): names the
    catalog uses must exist there. Raises :class:`CatalogRefused` with every error.
    """
    raw = load_catalog(path)
    return compile_raw(raw, str(path), secrets)


def compile_raw(raw: Marked, name: str = "<catalog>", secrets: Mapping[str, Any] | None = None) -> Fleet:
    """Compile an already loaded (marked) catalog mapping."""
    ctx = _Ctx(raw=raw if isinstance(raw, Marked) else Marked(raw, file=name), name=name)
    ctx.errors.extend(getattr(raw, "load_errors", []))   # merge and tenant-file errors, in the same round
    if "bgp" not in ctx.raw:
        ctx.err("catalog", "", "bgp", "required section 'bgp' (with 'asn') is missing")
        bgp = None
    else:
        bgp = _pydantic(ctx, S.Bgp, ctx.raw["bgp"], "bgp", "", ctx.raw["bgp"])
    pools = _prefixes(ctx, "vip_pools")
    management = _prefixes(ctx, "management")
    firewall = S.Firewall()
    if ctx.raw.get("firewall") is not None:
        firewall = _pydantic(ctx, S.Firewall, ctx.raw["firewall"], "firewall", "", ctx.raw["firewall"]) or firewall
    monitoring = S.Monitoring()
    if ctx.raw.get("monitoring") is not None:
        monitoring = _pydantic(ctx, S.Monitoring, ctx.raw["monitoring"], "monitoring", "",
                               ctx.raw["monitoring"]) or monitoring
    acme: S.Acme | None = None
    if ctx.raw.get("acme") is not None:
        acme = _pydantic(ctx, S.Acme, ctx.raw["acme"], "acme", "", ctx.raw["acme"])
    contacts: dict[str, S.Contact] = {cname: c for cname, _, c in _objects(ctx, "contacts", S.Contact)}
    nodes: dict[str, S.Node] = {nid: n for nid, _, n in _objects(ctx, "nodes", S.Node)}
    peers: dict[str, S.Peer] = {}
    for pid, body, p in _objects(ctx, "peers", S.Peer):
        peers[pid] = p
        if p.local_pref is not None and bgp is not None and p.asn != bgp.asn:
            ctx.err("peers", pid, "local_pref", f"LOCAL_PREF is not sent over eBGP (asn {p.asn} is not "
                    f"bgp.asn {bgp.asn}): use med or prepend", body, ["local_pref"])
    _check_addresses(ctx, nodes, peers)
    _check_distinct(ctx, [("nodes", nodes), ("peers", peers)])

    clusters: dict[str, S.Cluster] = {}
    for cid, body, c in _objects(ctx, "clusters", S.Cluster):
        for i, member in enumerate(c.nodes):
            if member not in nodes and member not in _section(ctx, "nodes"):
                ctx.err("clusters", cid, f"nodes[{i}]", f"node {member!r} does not exist", body, ["nodes", i])
        clusters[cid] = c

    templates = _section(ctx, "templates")
    defaults = ctx.raw.get("defaults") or Marked(file=name)
    if not isinstance(defaults, dict):
        ctx.err("defaults", "", "", "section 'defaults' must be a mapping")
        defaults = Marked(file=name)
    elif "extends" in defaults:
        ctx.err("defaults", "", "extends", "defaults may not extend a template", defaults, ["extends"])
    else:
        _pydantic(ctx, S.Service, defaults, "defaults", "", defaults)
    for tname, body in templates.items():
        if not _check_name(ctx, "templates", tname):
            continue
        resolved = _resolve(ctx, tname, templates, Marked(), "templates", body)
        if resolved is not None:
            _pydantic(ctx, S.Service, resolved, "templates", tname, resolved)

    services: dict[str, _Svc] = {}
    for sname, body in _section(ctx, "services").items():
        if not _check_name(ctx, "services", sname):
            continue
        resolved = _resolve(ctx, sname, templates, defaults, "services", body if body is not None else Marked())
        if resolved is None:
            # The chain is broken; still report the service's own unknown keys and bad values.
            if isinstance(body, dict):
                _pydantic(ctx, S.Service, {k: v for k, v in body.items() if k != "extends"}, "services",
                          sname, body)
                _check_references(ctx, sname, body, pools, nodes, clusters)
            continue
        m = _pydantic(ctx, S.Service, resolved, "services", sname, resolved)
        if m is None:
            _check_references(ctx, sname, resolved, pools, nodes, clusters)
            continue
        svc = _check_service(ctx, sname, m, resolved, pools, nodes, clusters)
        if not _check_settings(ctx, sname, m, resolved):
            svc = None
        if svc is not None:
            services[sname] = svc
    _check_distinct(ctx, [("services", [s for s in _section(ctx, "services") if isinstance(s, str)])])
    _check_distinct(ctx, [("clusters", [c for c in _section(ctx, "clusters") if isinstance(c, str)])])

    _check_conflicts(ctx, services, clusters, nodes)
    limits = _limits(ctx)
    warnings = _check_semantics(ctx, services, clusters, nodes, peers, pools, management, limits)
    if contacts:   # once contacts are listed, every notify name must be one of them
        for sname, svc in services.items():
            for i, user in enumerate(svc.model.monitor.notify):
                if user not in contacts:
                    ctx.err("services", sname, f"monitor.notify[{i}]", f"{user!r} is not in contacts "
                            f"({', '.join(sorted(contacts))})", svc.raw, ["monitor", "notify", i])
    _check_proxy_protocol(ctx, services, nodes)
    _check_server_names(ctx, services, nodes)
    owners = _check_tenants(ctx, services, nodes)
    issuer = _check_acme(ctx, services, nodes, acme, "acme" in ctx.raw)
    if bgp is not None:
        _check_routing(ctx, nodes, services, clusters)
    if secrets is not None:
        _check_secrets(ctx, services, bgp, peers, secrets, acme)
    if ctx.errors:
        raise CatalogRefused(_dedupe(ctx.errors))
    assert bgp is not None
    fleet = _build(name, bgp, pools, management, nodes, peers, clusters, services, firewall,
                   icinga={"mode": monitoring.icinga,
                           "contacts": {k: v.model_dump() for k, v in sorted(contacts.items())}},
                   acme=(acme, issuer) if acme is not None and issuer is not None else None,
                   tenant_of={s: t for t, o in owners.items() for s in o["services"]})
    fleet.warnings = _dedupe(warnings)
    fleet.owners = owners
    return fleet
