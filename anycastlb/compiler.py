"""Catalog → fleet model: resolution, validation, refusals and the per-node slices.

Pure Python: no Salt, no I/O beyond reading the catalog. ``compile_catalog``
returns a :class:`Fleet` whose ``nodes`` map each node id to a plain,
JSON-serialisable dict (the *node model*, see ``docs/model.md``) that holds all
that node's daemons need. Every refusal is collected before raising, so a user
sees every error at once.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, cast

from pydantic import BaseModel, ValidationError

from . import schema as S
from .errors import CatalogError, CatalogRefused
from .loader import Marked, MarkedList, file_of, line_of, load_catalog
from .model import (ApacheModel, Bfd, BgpModel, FirewallModel, FirewallRule, HaproxyModel, HealthModel,
                    Announcement, MonitoringModel, Neighbor, NodeModel, PeerExport, SecretNames, AcmeChallenge, AcmeCertificate, AcmeModel)

MODEL_VERSION = 1
#: Longest ``extends`` chain (templates on templates).
MAX_EXTENDS = 16
HAPROXY_STATS_PORT = 8404
SSH_PORT = 22
SALT_PORTS = (4505, 4506)
#: Where the ACME issuer serves HTTP-01 tokens; every LB node routes /.well-known/acme-challenge/ there.
ACME_CHALLENGE_PORT = 8402
ACME_CHALLENGE_PATH = "/.well-known/acme-challenge/"
BGP_PORT = 179
BFD_PORTS = (3784, 3785)
BFD_MULTIHOP_PORT = 4784
SECTION_KIND = {"nodes": "node", "peers": "peer", "clusters": "cluster", "templates": "template",
                "services": "service", "contacts": "contact", "tenants": "tenant"}
IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def ident(name: str) -> str:
    """A name made safe for daemon identifiers (BIRD protocols, HAProxy sections, Icinga objects)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def family(addr: IP | Net) -> str:
    return "ipv4" if addr.version == 4 else "ipv6"


def deep_merge(base: Any, over: Any) -> Any:
    """Mappings merge deeply (``over`` wins), everything else (lists too) is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = Marked(file=getattr(over, "file", "") or getattr(base, "file", ""),
                     line=getattr(over, "line", None) or getattr(base, "line", None))
        for k, v in base.items():
            out[k] = v
            if isinstance(base, Marked) and k in base.marks:
                out.marks[k] = base.marks[k]
        out.key_files = dict(getattr(base, "key_files", {}))
        for k in base:
            out.key_files.setdefault(k, getattr(base, "file", ""))
        for k, v in over.items():
            out[k] = deep_merge(base[k], v) if k in base else v
            if isinstance(over, Marked) and k in over.marks:
                out.marks[k] = over.marks[k]
            out.key_files[k] = getattr(over, "file", "")
        return out
    return over


def _where(obj: Any, path: Iterable[Any]) -> tuple[str | None, int | None]:
    """File and line of ``path`` inside a (possibly merged) marked object."""
    path = list(path)
    file, line = line_of(obj, path)
    # In a merged mapping, a top key remembers the file of the layer that supplied it.
    if path and isinstance(obj, Marked):
        key_files = getattr(obj, "key_files", {})
        if path[0] in key_files and key_files[path[0]]:
            sub = obj.get(path[0])
            file = getattr(sub, "file", None) or key_files[path[0]] or file
    return file, line


class NodeModels(Mapping[str, NodeModel]):
    """Node id → model, each computed on first access (a minion's slice costs one node's work)."""

    def __init__(self, ids: list[str], build: Any):
        self._ids = ids
        self._build = build
        self._cache: dict[str, NodeModel] = {}

    def __getitem__(self, node_id: str) -> NodeModel:
        m = self._cache.get(node_id)
        if m is None:
            if node_id not in self._ids_set:
                raise KeyError(node_id)
            m = self._cache[node_id] = self._build(node_id)
        return m

    @functools.cached_property
    def _ids_set(self) -> frozenset[str]:
        return frozenset(self._ids)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._ids_set


@dataclass
class Fleet:
    """A compiled catalog: the per-node models plus what the CLI's lint and diff show."""

    catalog: str
    nodes: Mapping[str, NodeModel]
    services: dict[str, dict[str, Any]]
    summary: dict[str, Any]
    #: What lint reports without refusing (a cluster with no active node ...).
    warnings: list[CatalogError] = field(default_factory=list)
    #: Who owns what (``anycastlb owners``): root and each tenant's files, services, VIPs, names.
    owners: dict[str, Any] = field(default_factory=dict)

    def slice(self, node_id: str) -> NodeModel | None:
        """One node's model, or None for a node the catalog does not name."""
        return self.nodes[node_id] if node_id in self.nodes else None

    def to_json(self, node_id: str | None = None) -> str:
        """Deterministic JSON of one node's model, or of the whole fleet."""
        data: Any = self.nodes[node_id] if node_id else {"nodes": dict(self.nodes), "services": self.services}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


@dataclass
class _Ctx:
    """Compilation state: the raw catalog, validated objects, and collected errors."""

    raw: Marked
    name: str
    errors: list[CatalogError] = field(default_factory=list)

    def err(self, section: str, name: str, key: str, message: str, obj: Any = None,
            path: Iterable[Any] = ()) -> None:
        """Record an error on ``section[name]`` at ``key`` (``path`` locates the line)."""
        sec = self.raw.get(section) if section in self.raw else None
        file, line = None, None
        if obj is not None:
            file, line = _where(obj, list(path) or key.split(".") if key else [])
        if file is None or line is None:
            if isinstance(sec, Marked) and name in sec:
                f2, l2 = line_of(sec, [name] + (list(path) if path else (key.split(".") if key else [])))
                file = file or file_of(sec, name) or f2
                line = line or l2
            elif isinstance(sec, Marked):
                file = file or sec.file
                line = line or (self.raw.marks.get(section) if not key else line_of(sec, key.split("."))[1])
        kind = SECTION_KIND.get(section, section)
        self.errors.append(CatalogError(file or self.name, line, kind, name, key, message))


#: pydantic's error types in our words: what was expected.
_EXPECTED = {
    "dict_type": "a mapping of keys", "model_type": "a mapping of keys", "model_attributes_type": "a mapping of keys",
    "list_type": "a list", "string_type": "a string", "int_type": "an integer", "int_parsing": "an integer",
    "int_from_float": "a whole number", "bool_type": "true or false", "bool_parsing": "true or false",
    "float_type": "a number", "float_parsing": "a number", "none_required": "null",
    "string_too_long": "a shorter string", "too_long": "a shorter list",
}


def _shown(value: Any) -> str:
    """A value as an error message shows it (short, one line)."""
    text = repr(value) if not isinstance(value, (dict, list)) else ("a mapping" if isinstance(value, dict)
                                                                   else "a list")
    return text if len(text) <= 60 else text[:57] + "..."


def _message(e: Any, loc: tuple[Any, ...]) -> str:
    """One pydantic error in our own words, showing the expected form."""
    kind, msg, value = e["type"], e["msg"], e.get("input")
    if kind == "extra_forbidden":
        return f"unknown key {str(loc[-1])!r}"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        return f"{_shown(value)} is not allowed: {msg.replace('Input should be ', 'expected ')}"
    if msg.startswith("Value error, "):
        return msg[len("Value error, "):]
    if kind in ("less_than_equal", "greater_than_equal", "less_than", "greater_than"):
        return f"{_shown(value)} is out of range: {msg[0].lower()}{msg[1:]}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        cls = getattr(S, str((e.get("ctx") or {}).get("class_name", "")), None)
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            keys = ", ".join(cls.model_fields)
            return f"{_shown(value)} is not a mapping: expected a mapping with the keys {keys}"
        return f"{_shown(value)} is not a mapping: expected a mapping of keys"
    if kind in _EXPECTED:
        return f"{_shown(value)} is not {_EXPECTED[kind]}" if kind not in ("missing",) else _EXPECTED[kind]
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{_shown(value)} is not of the expected type ({kind.split('_')[0]})"
    return msg[0].lower() + msg[1:] if msg else kind


def _pydantic(ctx: _Ctx, model: type[BaseModel], data: Any, section: str, name: str,
              obj: Any = None, prefix: tuple[Any, ...] = ()) -> Any:
    """Validate ``data`` with ``model``; turn pydantic errors into catalog errors (in our words)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        seen: set[tuple[Any, ...]] = set()
        for e in exc.errors(include_url=False):
            raw_loc = tuple(e["loc"])
            bad_key = "[key]" in raw_loc
            loc = tuple(x for x in raw_loc if not (isinstance(x, str) and ("[" in x or x.startswith("function-"))))
            # Union branches repeat one location; keep the first message per location.
            loc = tuple(x for x in loc if x not in ("int", "str", "list[str]", "is-instance[Port]"))
            where = list(prefix + loc)
            if bad_key and loc:
                loc = loc[:-1]     # a bad name: the key is the mapping that holds it
            if loc in seen:
                continue
            seen.add(loc)
            key = ".".join(str(x) for x in prefix + loc)
            ctx.err(section, name, key, _message(e, loc), obj if obj is not None else data, where)
        return None


def _parse_net(text: Any) -> Net | None:
    try:
        return S.parse_net(text)
    except ValueError:
        return None


def _parse_ip(text: Any) -> IP | None:
    try:
        return S.parse_ip(text)
    except ValueError:
        return None


#: Name prefixes the renderers use for objects of their own (apache's catch-all sites
#: ``anycastlb-000-default-<port>``, Icinga's VIP hosts ``vip-<service>``).
RESERVED_PREFIXES = {"services": ("000-default",), "nodes": ("vip-",), "peers": ("vip-",),
                     "backends": ("vip-",)}


def _section(ctx: _Ctx, key: str) -> Marked:
    value = ctx.raw.get(key)
    if value is None:
        return Marked(file=ctx.name)
    if not isinstance(value, dict):
        ctx.err("catalog", "", key, f"section {key!r} must be a mapping")
        return Marked(file=ctx.name)
    return cast(Marked, value)  # the loader builds every mapping as a Marked


def _check_name(ctx: _Ctx, section: str, name: Any) -> bool:
    if not isinstance(name, str) or not re.fullmatch(S.NAME_RE, name):
        ctx.err(section, str(name)[:80], "", f"{str(name)[:80]!r} is not a valid name: a letter or digit, then "
                f"up to 62 letters, digits, '.', '_' or '-' (e.g. web-1)")
        return False
    for prefix in RESERVED_PREFIXES.get(section, ()):
        if name.lower().startswith(prefix):
            ctx.err(section, name, "", f"names starting with {prefix!r} are reserved for objects the renderers "
                    f"generate themselves (rename it)")
            return False
    return True


def _check_distinct(ctx: _Ctx, groups: list[tuple[str, Iterable[str]]]) -> None:
    """Names must stay distinct after ``ident()`` and case folding (BIRD, Icinga, file names)."""
    seen: dict[str, tuple[str, str]] = {}
    for section, names in groups:
        for name in names:
            key = ident(name).lower()
            first = seen.get(key)
            if first is None:
                seen[key] = (section, name)
            elif first != (section, name):
                ctx.err(section, name, "", f"{name!r} and {SECTION_KIND.get(first[0], first[0])} {first[1]!r} "
                        f"become the same identifier {ident(name)!r} in the daemons' configs: rename one")


def _prefixes(ctx: _Ctx, key: str) -> list[Net]:
    raw = ctx.raw.get(key) or []
    if not isinstance(raw, list):
        raw = MarkedList([raw], file=ctx.name)
    out: list[Net] = []
    for i, text in enumerate(raw):
        net = _parse_net(text)
        if net is None:
            file, line = line_of(raw, [i])
            ctx.errors.append(CatalogError(file or ctx.name, line, key, "", f"{key}[{i}]",
                                           f"{text!r} is not a network prefix (host bits must be zero)"))
        else:
            out.append(net)
    return out


def _resolve(ctx: _Ctx, name: str, templates: Marked, defaults: Any, section: str,
             body: Any) -> Marked | None:
    """defaults < template chain < the object itself; refuses missing templates and cycles."""
    chain: list[Any] = [body]
    seen = [name] if section == "templates" else []
    cur = body
    while isinstance(cur, dict) and cur.get("extends") is not None:
        parent = cur["extends"]
        if not isinstance(parent, str) or parent not in templates:
            where = "template" if isinstance(parent, str) and parent in _section(ctx, "services") else ""
            hint = f" ({parent!r} is a service, not a template)" if where else ""
            ctx.err(section, name, "extends", f"template {parent!r} does not exist{hint}", cur, ["extends"])
            return None
        if parent in seen:
            cycle = " -> ".join(seen + [parent])
            ctx.err(section, name, "extends", f"extends cycle: {cycle}", cur, ["extends"])
            return None
        if len(chain) > MAX_EXTENDS:
            ctx.err(section, name, "extends", f"the extends chain is deeper than {MAX_EXTENDS} templates "
                    f"({' -> '.join(seen[:3] + ['...'] + seen[-2:])})", body, ["extends"])
            return None
        seen.append(parent)
        cur = templates[parent]
        chain.append(cur)
    merged: Any = defaults if isinstance(defaults, dict) else Marked()
    for layer in reversed(chain):
        if not isinstance(layer, dict):
            ctx.err(section, name, "", "must be a mapping of keys")
            return None
        merged = deep_merge(merged, layer)
    merged.pop("extends", None)
    return merged


@dataclass
class _Svc:
    """A resolved, validated service plus its normalised addresses."""

    name: str
    model: S.Service
    raw: Marked
    vips: list[IP]
    ports: list[S.Port]


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
    contacts: dict[str, S.Contact] = {}
    for cname, body in _section(ctx, "contacts").items():
        if _check_name(ctx, "contacts", cname):
            c = _pydantic(ctx, S.Contact, body if body is not None else {}, "contacts", cname, body)
            if c is not None:
                contacts[cname] = c

    nodes: dict[str, S.Node] = {}
    for nid, body in _section(ctx, "nodes").items():
        if _check_name(ctx, "nodes", nid):
            n = _pydantic(ctx, S.Node, body if body is not None else {}, "nodes", nid, body)
            if n is not None:
                nodes[nid] = n
    peers: dict[str, S.Peer] = {}
    for pid, body in _section(ctx, "peers").items():
        if _check_name(ctx, "peers", pid):
            p = _pydantic(ctx, S.Peer, body if body is not None else {}, "peers", pid, body)
            if p is not None:
                peers[pid] = p
                if p.local_pref is not None and bgp is not None and p.asn != bgp.asn:
                    ctx.err("peers", pid, "local_pref", f"LOCAL_PREF is not sent over eBGP (asn {p.asn} is not "
                            f"bgp.asn {bgp.asn}): use med or prepend", body, ["local_pref"])
    _check_addresses(ctx, nodes, peers)
    _check_distinct(ctx, [("nodes", nodes), ("peers", peers)])

    clusters: dict[str, S.Cluster] = {}
    for cid, body in _section(ctx, "clusters").items():
        if not _check_name(ctx, "clusters", cid):
            continue
        c = _pydantic(ctx, S.Cluster, body if body is not None else {}, "clusters", cid, body)
        if c is None:
            continue
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
                   acme=(acme, issuer) if acme is not None and issuer is not None else None)
    fleet.warnings = _dedupe(warnings)
    fleet.owners = owners
    return fleet


# --------------------------------------------------------------------------- checks


def _host_names(m: S.Service, sname: str) -> list[tuple[str, str]]:
    """(key, host name) a service claims: its vhost's name and aliases, its check's Host."""
    out: list[tuple[str, str]] = []
    if m.apache is not None:
        out.append(("apache.server_name", m.apache.server_name or sname))
        out += [(f"apache.aliases[{i}]", a) for i, a in enumerate(m.apache.aliases)]
    if m.check.http is not None and m.check.http.host:
        out.append(("check.http.host", m.check.http.host))
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


#: Ports a node serves itself, by what it runs (see docs/firewall.md).
NODE_PORTS: dict[str, tuple[tuple[int, str, str], ...]] = {
    "any": ((SSH_PORT, "tcp", "ssh"),),
    "bird": ((BGP_PORT, "tcp", "BGP"), (3784, "udp", "BFD"), (3785, "udp", "BFD echo"),
             (4784, "udp", "multihop BFD")),
    "salt-master": ((4505, "tcp", "Salt publish"), (4506, "tcp", "Salt return")),
    "monitoring": ((5665, "tcp", "Icinga 2 API"),),
    "haproxy": ((HAPROXY_STATS_PORT, "tcp", "the HAProxy stats"),),
}
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



def _dedupe(errors: list[CatalogError]) -> list[CatalogError]:
    """One error per place: a bad value in defaults or a template is reported once, where it is
    written, not again for every service that inherits it (the first reporter, in the order
    defaults, templates, services, is the owner)."""
    seen: set[tuple[str, int | None, str, str]] = set()
    out = []
    for e in errors:
        k = (e.file, e.line, e.key, e.message)
        if k not in seen:
            seen.add(k)
            out.append(e)
    return out


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
    if m.mode == "anycast":
        for key in ("tls", "apache"):
            if getattr(m, key) is not None:
                err(key, f"{key} needs mode http")
                ok = False
        if all(getattr(m.check, k) is None for k in ("http", "tcp", "dns", "kerberos")) and not any(
                p.protocol == "tcp" for p in m.ports):
            err("check", "a udp-only anycast service needs check.dns, check.kerberos, check.tcp (with a port) "
                "or check.http")
            ok = False
    if m.check.unit is not None and m.mode != "anycast":
        err("check.unit", "only an anycast service is watched by its unit (HAProxy watches the others)")
        ok = False
    if m.check.http is not None and m.check.tcp is not None:
        err("check", "check has both http and tcp: set the one you do not want to null")
        ok = False
    if m.mode == "tcp":
        for key in ("tls", "apache"):
            if getattr(m, key) is not None:
                err(key, f"{key} needs mode http")
                ok = False
        if m.redirect_http:
            err("redirect_http", "redirect_http needs mode http")
    if m.mode == "http" and m.tls is not None and S.Port(port=443) not in m.ports:
        err("tls", "tls terminates on port 443, which is not in ports")
        ok = False
    if m.redirect_http and m.mode == "http":
        if m.tls is None:
            err("redirect_http", "redirect_http sends clients to https, which needs tls")
            ok = False
        if S.Port(port=80) not in m.ports:
            err("redirect_http", "redirect_http answers on port 80, which is not in ports")
            ok = False
    if m.apache is not None and not any(b in nodes for b in m.backends):
        err("apache", "apache vhosts go on managed backends, and this service has none")
    return _Svc(name, m, raw, vips, list(m.ports)) if ok else None


#: Check kinds HAProxy runs against the servers of an http/tcp service, and those healthd runs
#: against an anycast backend before it announces the VIP.
HAPROXY_CHECKS = ("ldap", "smtp", "mysql", "pgsql", "ssl_hello")
HEALTHD_CHECKS = ("dns", "kerberos")
CHECK_KINDS = ("http", "tcp") + HAPROXY_CHECKS + HEALTHD_CHECKS


def check_kind(c: S.Check) -> str | None:
    """The kind of a check (``http``, ``tcp``, ``ldap`` ...), or None when no kind is set."""
    return next((k for k in CHECK_KINDS if getattr(c, k) is not None), None)


def _tenant_of(ctx: _Ctx, file: str | None) -> str | None:
    """The tenant whose files include ``file``, or None for a root (fleet-wide) file."""
    return getattr(ctx.raw, "file_tenants", {}).get(file) if file else None


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


def server_port(m: S.Service, port: S.Port) -> int:
    """The port on the backends for frontend ``port`` (``backend_port``: one number or a mapping)."""
    if isinstance(m.backend_port, dict):
        return m.backend_port.get(port.port, port.port)
    return m.backend_port or port.port


def _check_references(ctx: _Ctx, name: str, raw: Any, pools: list[Net], nodes: dict[str, S.Node],
                      clusters: dict[str, S.Cluster]) -> None:
    """What a service that cannot be validated whole still shows (a broken template chain, a bad value
    elsewhere): its cluster, VIPs and backends, read from the raw mapping, so errors come in one round."""
    if not isinstance(raw, dict):
        return
    err = lambda key, msg, path: ctx.err("services", name, key, msg, raw, path)  # noqa: E731
    cluster = raw.get("cluster")
    if isinstance(cluster, str) and cluster not in clusters:
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
    used: dict[tuple[IP, S.Port], str] = {}
    for sname in sorted(services):
        svc = services[sname]
        for ip in svc.vips:
            for p in svc.ports:
                other = used.get((ip, p))
                if other is not None:
                    ctx.err("services", sname, "ports",
                            f"VIP {ip} port {p} is already used by service {other!r}", svc.raw, ["ports"])
                else:
                    used[(ip, p)] = sname
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


def acme_names(m: S.Service) -> list[str]:
    """The names an ACME certificate of service ``m`` covers: apache.server_name, then its aliases."""
    if m.apache is None or m.apache.server_name is None:
        return []
    return [m.apache.server_name] + [a for a in m.apache.aliases if a != m.apache.server_name]


def acme_certificate(sname: str) -> str:
    """The certificate name of an ACME service (in the issuer's store and the nodes' secrets slice)."""
    return f"acme-{sname}"


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


# --------------------------------------------------------------------------- the model


def _build(name: str, bgp: S.Bgp, pools: list[Net], management: list[Net], nodes: dict[str, S.Node],
           peers: dict[str, S.Peer], clusters: dict[str, S.Cluster], services: dict[str, _Svc],
           firewall: S.Firewall | None = None, icinga: dict[str, Any] | None = None,
           acme: tuple[S.Acme, str] | None = None) -> Fleet:
    """Compute every node's model from validated objects (``acme``: the section and the issuer node)."""
    b = _Builder(bgp, pools, management, nodes, peers, clusters, services, firewall or S.Firewall())
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


class _Builder:
    """Derives per-node models; indexes the fleet once so each node's slice is cheap."""

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

    # -- helpers
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

    # -- sections
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
            "health": None, "firewall": None, "secrets": {"certificates": [], "bgp_passwords": []},
        }
        model["health"] = self.health_model(nid, model)
        model["firewall"] = self.firewall_model(nid, model)
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
        vips = self.node_vips(nid)
        announce = [] if n.state != "active" else [
            f"{ip}/{ip.max_prefixlen}" for ip, _ in vips]
        return {
            "asn": self.bgp.asn, "router_id": n.address, "role": role, "bfd": bfd,
            "hold_ms": self.bgp.hold,
            "vip_pools": {"ipv4": [str(p) for p in self.pools if p.version == 4],
                          "ipv6": [str(p) for p in self.pools if p.version == 6]},
            "neighbors": sorted(neighbors, key=lambda x: (x["kind"], x["name"], x["family"])),
            "vips": [{"address": str(ip), "prefix": f"{ip}/{ip.max_prefixlen}", "family": family(ip),
                      "services": svcs} for ip, svcs in vips],
            "announce": announce,
        }

    def haproxy_model(self, nid: str) -> HaproxyModel:
        n = self.nodes[nid]
        frontends: list[dict[str, Any]] = []
        backends: dict[str, dict[str, Any]] = {}
        certs: set[str] = set()
        for cid in self.node_clusters[nid]:
            for sname in self.cluster_services[cid]:
                svc = self.services[sname]
                m = svc.model
                for port in svc.ports:
                    bname = self.backend_name(svc, port)
                    tls = m.tls is not None and port.port == 443 and m.mode == "http"
                    redirect = bool(m.redirect_http and m.mode == "http" and port.port == 80)
                    cert = self.certificate(sname)
                    if tls:
                        certs.add(cert)  # type: ignore[arg-type]
                    challenge = bool(m.mode == "http" and port.port == 80 and m.tls is not None and m.tls.acme)
                    frontends.append({
                        "name": f"{sname}-{port.port}", "service": sname, "mode": m.mode, "port": port.port,
                        "binds": [str(ip) for ip in svc.vips],
                        "tls": {"certificate": cert} if tls else None,
                        "acme_challenge": challenge,
                        "redirect_https": redirect,
                        "allow": [] if "any" in m.allow else list(m.allow),
                        "backend": bname,
                        **frontend_settings(m, tls, redirect),
                    })
                    if bname in backends:
                        continue
                    sport = self.server_port(svc, port)
                    servers = []
                    for bid in sorted(m.backends):
                        be = m.backends[bid]
                        addr = be.address or self.nodes[bid].address
                        servers.append({"name": bid, "address": addr, "port": sport, "weight": be.weight,
                                        "backup": be.backup, "state": be.state, "managed": bid in self.nodes})
                    backends[bname] = {"name": bname, "service": sname, "mode": m.mode, "balance": m.balance,
                                       "port": sport, "check": self.check_model(svc, None),
                                       "servers": servers, **backend_settings(sname, m)}
        return {"clusters": self.node_clusters[nid],
                "stats": {"address": n.address, "port": HAPROXY_STATS_PORT},
                "frontends": sorted(frontends, key=lambda f: f["name"]),
                "backends": [backends[k] for k in sorted(backends)],
                "certificates": sorted(certs),
                "acme": self.challenge_model() if any(f["acme_challenge"] for f in frontends) else None}

    def certificate(self, sname: str) -> str | None:
        """The certificate name a service terminates TLS with (its own, or its ACME certificate)."""
        tls = self.services[sname].model.tls
        if tls is None:
            return None
        return acme_certificate(sname) if tls.acme else tls.certificate

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

    def health_model(self, nid: str, model: NodeModel) -> HealthModel:
        """What the node's health agent watches before it announces each VIP."""
        anns: list[Announcement] = []
        bgp = model["bgp"]
        if bgp is None or bgp["role"] != "speaker":
            return {"announcements": []}
        frontends = (model["haproxy"] or {"frontends": []})["frontends"]
        for v in bgp["vips"]:
            if v["prefix"] not in bgp["announce"]:
                continue
            lb_svcs = [s for s in v["services"] if self.services[s].model.mode != "anycast"]
            if lb_svcs:
                fes = [f for f in frontends if f["service"] in lb_svcs and v["address"] in f["binds"]]
                anns.append({"prefix": v["prefix"], "services": lb_svcs,
                             "watch": {"type": "haproxy", "frontends": sorted(f["name"] for f in fes),
                                       "backends": sorted({f["backend"] for f in fes})}})
            for sname in v["services"]:
                svc = self.services[sname]
                if svc.model.mode != "anycast":
                    continue
                tcp_ports = [p.port for p in svc.ports if p.protocol == "tcp"]
                check = self.check_model(svc, tcp_ports[0] if tcp_ports else None)
                check["address"] = v["address"]
                if svc.model.check.unit:
                    check["unit"] = svc.model.check.unit
                anns.append({"prefix": v["prefix"], "services": [sname], "watch": check})
        return {"announcements": anns}

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
        for sname, addresses in sorted(vips_of.items()):
            svc = self.services[sname]
            for proto in ("tcp", "udp"):
                ports = [p.port for p in svc.ports if p.protocol == proto]
                if ports:
                    rule(f"service {sname} on its VIPs", proto, ports, svc.model.allow + monitors, addresses)
        acme = model["acme"]
        if acme:
            lbs = sorted({a for c in acme["certificates"] for x in c["nodes"] for a in self.addrs(x)},
                         key=_addr_key)
            rule("acme challenges from the LB nodes", "tcp", [ACME_CHALLENGE_PORT], lbs, [model["address"]])
        if model["haproxy"] is not None and monitors:
            rule("haproxy stats for monitoring", "tcp", [HAPROXY_STATS_PORT], monitors + mgmt, [model["address"]])
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
            for ip in svc.vips:
                prefix = f"{ip}/{ip.max_prefixlen}"
                checks.append({"name": f"announcers {sname} {ip}", "host": None, "type": "announcers",
                               "service": sname, "prefix": prefix, "expected": active, "notify": notify})
                for port in svc.ports:
                    c = self._service_check(svc, port, str(ip))
                    checks.append({"name": f"vip {sname} {ip} {port}", "host": None, "service": sname,
                                   "notify": notify, **c})
                if m.tls is not None and m.tls.acme and self.acme is not None:
                    # every ACME name on every VIP: the certificate actually served, WARNING once less than
                    # renew_before (less one day for the renewal's schedule) is left: a renewal failed
                    warn = max(1, -(-self.acme.renew_before // 86_400_000) - 1)
                    for host in acme_names(m):
                        checks.append({"name": f"acme {sname} {host} {ip}", "host": None,
                                       "service": sname, "notify": notify, "type": "https", "address": str(ip),
                                       "port": 443, "http_host": host, "path": "/", "expect": None, "tls": True,
                                       "certificate_only": True, "cert_days": [warn, max(1, warn // 3)]})
            if m.mode in ("http", "tcp"):
                for node in announcers:
                    for port in svc.ports:
                        checks.append({"name": f"frontend {sname}-{port.port} on {node}", "host": node,
                                       "type": "haproxy-frontend", "service": sname,
                                       "frontend": f"{sname}-{port.port}", "backend": self.backend_name(svc, port),
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
        if port.protocol == "udp":
            return {"type": "udp", "address": address, "port": port.port}
        if m.mode == "http":
            host = m.apache.server_name if m.apache and m.apache.server_name else None
            tls = m.tls is not None and port.port == 443
            redirect = bool(m.redirect_http and port.port == 80)
            path = m.check.http.path if m.check.http else "/"
            return {"type": "https" if tls else "http", "address": address, "port": port.port, "http_host": host,
                    "path": path, "expect": "301" if redirect else None, "tls": tls}
        return {"type": "tcp", "address": address, "port": port.port}

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
            "mode": m.mode, "cluster": m.cluster, "vips": [str(ip) for ip in svc.vips],
            "ports": [str(p) for p in svc.ports], "backend_port": m.backend_port, "balance": m.balance,
            "allow": list(m.allow), "tls": ("acme" if m.tls.acme else m.tls.certificate) if m.tls else None, "redirect_http": m.redirect_http,
            "backends": {b: {"address": be.address or self.nodes[b].address, "weight": be.weight,
                             "backup": be.backup, "state": be.state} for b, be in sorted(m.backends.items())},
            "check": self.check_model(svc, None), "announcers": self.announcers(sname),
            "apache": m.apache.model_dump() if m.apache else None, "notify": list(m.monitor.notify),
            "haproxy": m.haproxy.model_dump(exclude_defaults=True) if m.haproxy else None,
        }


def frontend_settings(m: S.Service, tls: bool, redirect: bool) -> dict[str, Any]:
    """A frontend's per-service settings (``haproxy:`` in the catalog); None/empty keep the defaults."""
    h = m.haproxy or S.HaproxySettings()
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
    h = m.haproxy or S.HaproxySettings()
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


@functools.lru_cache(maxsize=65536)
def _addr_key(text: str) -> tuple[int, str]:
    try:
        net = ipaddress.ip_network(text, strict=False)
        return (net.version, f"{int(net.network_address):040d}/{net.prefixlen:03d}")
    except ValueError:
        return (0, text)


def copy_model(model: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a node model (for callers that add secrets to it)."""
    return copy.deepcopy(model)
