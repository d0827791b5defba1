"""Read the parts of a catalog the lab needs (``nodes``, ``peers``, ``bgp``, ``vip_pools``).

The lab deliberately does not use the catalog compiler: it reads YAML with PyYAML and
merges the top-level sections of every file when given a directory.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$", re.IGNORECASE)


class LabCatalogError(ValueError):
    """The catalog lacks something the lab needs."""


@dataclass(frozen=True)
class Host:
    """One node or peer of the catalog as the lab sees it."""

    name: str
    address: str
    address6: str | None = None
    roles: tuple[str, ...] = ()
    asn: int | None = None


@dataclass(frozen=True)
class LabCatalog:
    """The catalog sections the lab is built from."""

    path: Path
    nodes: dict[str, Host]
    peers: dict[str, Host]
    asn: int | None = None
    bfd: dict[str, Any] = field(default_factory=dict)
    vip_pools: tuple[str, ...] = ()

    def with_role(self, role: str) -> list[Host]:
        """Nodes having ``role``, in catalog order."""
        return [h for h in self.nodes.values() if role in h.roles]


def read_raw(path: str | Path) -> dict[str, Any]:
    """Load a catalog file, or every ``*.yaml``/``*.yml`` of a directory with top-level sections merged."""
    p = Path(path)
    files = sorted([*p.glob("*.yaml"), *p.glob("*.yml")]) if p.is_dir() else [p]
    if not files:
        raise LabCatalogError(f"{p}: no YAML files")
    merged: dict[str, Any] = {}
    for f in files:
        data = yaml.safe_load(f.read_text()) or {}
        if not isinstance(data, dict):
            raise LabCatalogError(f"{f}: top level must be a mapping")
        for key, value in data.items():
            old = merged.get(key)
            if isinstance(old, dict) and isinstance(value, dict):
                dup = old.keys() & value.keys()
                if dup:
                    raise LabCatalogError(f"{f}: {key}: {sorted(dup)} defined twice")
                merged[key] = {**old, **value}
            elif isinstance(old, list) and isinstance(value, list):
                merged[key] = old + value
            elif old is not None:
                raise LabCatalogError(f"{f}: section {key!r} defined twice")
            else:
                merged[key] = value
    return merged


def _host(section: str, name: str, spec: Any, src: Path) -> Host:
    where = f"{src}: {section}.{name}"
    if not isinstance(spec, dict) or "address" not in spec:
        raise LabCatalogError(f"{where}: needs an 'address'")
    if not _NAME.match(str(name)):
        raise LabCatalogError(f"{where}: name not usable as a lab host name")
    addr = str(ipaddress.IPv4Address(str(spec["address"])))
    addr6 = spec.get("address6")
    if addr6 is not None:
        addr6 = str(ipaddress.IPv6Address(str(addr6)))
    asn = spec.get("asn")
    return Host(str(name), addr, addr6, tuple(spec.get("roles") or ()), int(asn) if asn is not None else None)


def load(path: str | Path) -> LabCatalog:
    """Parse the lab-relevant sections of the catalog at ``path``."""
    p = Path(path).resolve()
    raw = read_raw(p)
    nodes = {str(n): _host("nodes", n, s, p) for n, s in (raw.get("nodes") or {}).items()}
    peers = {str(n): _host("peers", n, s, p) for n, s in (raw.get("peers") or {}).items()}
    if not nodes:
        raise LabCatalogError(f"{p}: no nodes")
    if not peers:
        raise LabCatalogError(f"{p}: the lab needs at least one entry in 'peers'")
    clash = nodes.keys() & peers.keys()
    if clash:
        raise LabCatalogError(f"{p}: {sorted(clash)} both node and peer")
    bgp = raw.get("bgp") or {}
    return LabCatalog(
        path=p,
        nodes=nodes,
        peers=peers,
        asn=bgp.get("asn"),
        bfd=dict(bgp.get("bfd") or {}),
        vip_pools=tuple(str(x) for x in raw.get("vip_pools") or ()),
    )


def _resolved(raw: dict[str, Any], svc: dict[str, Any], key: str) -> Any:
    """``key`` of a service after its ``extends`` chain and ``defaults`` (shallow: enough for the lab)."""
    seen = set()
    cur: dict[str, Any] | None = svc
    while cur is not None:
        if key in cur:
            return cur[key]
        parent = cur.get("extends")
        if parent is None or parent in seen:
            break
        seen.add(parent)
        cur = (raw.get("templates") or {}).get(parent)
    return (raw.get("defaults") or {}).get(key)


def _ports(value: Any) -> tuple[list[int], list[int]]:
    tcp: list[int] = []
    udp: list[int] = []
    for p in value if isinstance(value, list) else [value] if value is not None else []:
        num, _, proto = str(p).partition("/")
        (udp if proto == "udp" else tcp).append(int(num))
    return tcp, udp


def stand_ins(path: str | Path) -> tuple[list[tuple[str, str]], dict[str, tuple[list[int], list[int]]]]:
    """Hosts whose software the catalog does not manage, and the ports a responder must answer on.

    Returns ``(external, ports)``: ``external`` lists ``(name, ipv4)`` of service backends
    that are not nodes (they live on the client net); ``ports`` maps every such host and
    every backend node of an ``anycast`` service to its ``(tcp ports, udp ports)``.
    """
    raw = read_raw(path)
    nodes = raw.get("nodes") or {}
    external: dict[str, str] = {}
    ports: dict[str, tuple[list[int], list[int]]] = {}

    def add(host: str, tcp: list[int], udp: list[int]) -> None:
        t, u = ports.setdefault(host, ([], []))
        t.extend(p for p in tcp if p not in t)
        u.extend(p for p in udp if p not in u)

    for svc in (raw.get("services") or {}).values():
        tcp, udp = _ports(_resolved(raw, svc, "ports"))
        bport = _resolved(raw, svc, "backend_port")
        if bport is not None:
            tcp, udp = ([int(bport)] if tcp else []), ([int(bport)] if udp else [])
        backends = svc.get("backends") or []
        items = backends.items() if isinstance(backends, dict) else ((b, {}) for b in backends)
        anycast = _resolved(raw, svc, "mode") == "anycast"
        for name, spec in items:
            spec = spec or {}
            if name not in nodes and spec.get("address"):
                external[str(name)] = str(spec["address"])
                add(str(name), tcp, udp)
            elif anycast and name in nodes:
                add(str(name), tcp, udp)
    return sorted(external.items()), ports
