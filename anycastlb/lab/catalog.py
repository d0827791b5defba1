"""The parts of a catalog the lab is built from (nodes, peers, ``bgp``, ``vip_pools``,
the hosts whose software the catalog does not manage).

The lab reads a catalog exactly as Salt does: :func:`anycastlb.loader.load_catalog`
(a file, or a directory read recursively and merged) and
:func:`anycastlb.compiler.compile_catalog` (a refused catalog builds no lab, with the
compiler's errors: ``lab up`` compiles it for the stand-ins first). Nodes and services
come from the compiled models; the peers and the ``bgp``/``vip_pools`` sections from the
validated catalog.

A running lab keeps the topology it was built with, while its catalog may be refused for a
while (a test pushes a bad one on purpose): :func:`load` then reads the topology (nodes,
their addresses and roles, peers) from the loader's merged catalog alone, unless
``strict``.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def _compiled(path: Path) -> tuple[Any, Any]:
    """(the compiled fleet, the merged catalog) of ``path``, or LabCatalogError with every error."""
    from ..compiler import compile_catalog
    from ..errors import CatalogRefused
    from ..loader import load_catalog

    try:
        return compile_catalog(path), load_catalog(path)
    except CatalogRefused as exc:
        raise LabCatalogError(f"{path}: catalog refused: " + "; ".join(str(e) for e in exc.errors)) from None


def _host(section: str, name: str, address: Any, address6: Any, roles: Any, asn: Any, src: Path) -> Host:
    where = f"{src}: {section}.{name}"
    if not _NAME.match(str(name)):
        raise LabCatalogError(f"{where}: name not usable as a lab host name")
    try:
        addr = str(ipaddress.IPv4Address(str(address)))
    except ValueError:
        raise LabCatalogError(f"{where}: the lab needs an IPv4 address") from None
    addr6 = str(ipaddress.IPv6Address(str(address6))) if address6 else None
    return Host(str(name), addr, addr6, tuple(roles or ()), int(asn) if asn is not None else None)


def load(path: str | Path, strict: bool = False) -> LabCatalog:
    """The lab's view of the catalog at ``path``: compiled; for a refused catalog (and not
    ``strict``) the topology as the loader reads it (see the module docstring)."""
    p = Path(path).resolve()
    try:
        fleet, raw = _compiled(p)
    except LabCatalogError:
        if strict:
            raise
        from ..errors import CatalogRefused
        from ..loader import load_catalog
        try:
            fleet, raw = None, load_catalog(p)
        except CatalogRefused as exc:
            raise LabCatalogError(f"{p}: catalog refused: " + "; ".join(str(e) for e in exc.errors)) from None
    order = [str(n) for n in raw.get("nodes") or {}]  # catalog order, as the lab lays nodes out
    if fleet is not None:
        nodes = {n: _host("nodes", n, fleet.nodes[n]["address"], fleet.nodes[n].get("address6"),
                          fleet.nodes[n]["roles"], None, p)
                 for n in sorted(fleet.nodes, key=lambda n: order.index(n) if n in order else len(order))}
    else:
        nodes = {n: _host("nodes", n, spec.get("address"), spec.get("address6"), spec.get("roles"), None, p)
                 for n, spec in ((str(k), v or {}) for k, v in (raw.get("nodes") or {}).items())}
    peers = {str(n): _host("peers", n, s["address"], s.get("address6"), (), s.get("asn"), p)
             for n, s in (raw.get("peers") or {}).items()}
    if not nodes:
        raise LabCatalogError(f"{p}: no nodes")
    if not peers:
        raise LabCatalogError(f"{p}: the lab needs at least one entry in 'peers'")
    bgp = raw.get("bgp") or {}
    return LabCatalog(
        path=p,
        nodes=nodes,
        peers=peers,
        asn=bgp.get("asn"),
        bfd=dict(bgp.get("bfd") or {}),
        vip_pools=tuple(str(x) for x in raw.get("vip_pools") or ()),
    )


def stand_ins(path: str | Path) -> tuple[list[tuple[str, str]], dict[str, tuple[list[int], list[int]]]]:
    """Hosts whose software the catalog does not manage, and the ports a responder must answer on.

    Returns ``(external, ports)``: ``external`` lists ``(name, ipv4)`` of service backends
    that are not nodes (they live on the client net); ``ports`` maps every such host and
    every backend node of an ``anycast`` service to its ``(tcp ports, udp ports)``.
    """
    fleet, _ = _compiled(Path(path).resolve())
    external: dict[str, str] = {}
    ports: dict[str, tuple[list[int], list[int]]] = {}

    def add(host: str, tcp: list[int], udp: list[int]) -> None:
        t, u = ports.setdefault(host, ([], []))
        t.extend(x for x in tcp if x not in t)
        u.extend(x for x in udp if x not in u)

    for svc in fleet.services.values():
        tcp = [int(x.split("/")[0]) for x in svc["ports"] if x.endswith("/tcp")]
        udp = [int(x.split("/")[0]) for x in svc["ports"] if x.endswith("/udp")]
        bport = svc.get("backend_port")
        if isinstance(bport, dict):   # per frontend port; an unmapped port keeps its number
            tcp = [int(bport.get(x, x)) for x in tcp]
        elif bport is not None:
            tcp, udp = ([int(bport)] if tcp else []), ([int(bport)] if udp else [])
        for name, spec in (svc.get("backends") or {}).items():
            if name not in fleet.nodes and spec.get("address"):
                external[str(name)] = str(spec["address"])
                add(str(name), tcp, udp)
            elif svc["mode"] == "anycast" and name in fleet.nodes:
                add(str(name), tcp, udp)
    return sorted(external.items()), ports
