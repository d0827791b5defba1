"""Flow steering between the nodes that announce the same VIPs (pure; docs/steering.md).

The routers spread a VIP's flows over its announcers by a hash (ECMP). When the set of
announcers changes (a drain, an undrain, a node joining or leaving, a BGP session
restarting), some open flows reach a node that did not accept them, which would answer
with a reset. With steering, that node hands such packets to its peers instead: every
node of a cluster, and every backend of an anycast service, is a peer of the others.

A *group* is one cluster (its services' VIPs and tcp ports, its nodes) or one anycast
service (its VIPs and tcp ports, its backends that are catalog nodes). It is on when its
``steering`` key says so, by default when it has more than one member. The node model's
``steering`` lists the groups the node is in, each with the node's peers.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Mapping

from .model import SteeringGroup, SteeringModel, SteeringPeer


@dataclass(frozen=True)
class Group:
    """Nodes that announce the same VIPs and may hold each other's flows."""

    name: str
    members: tuple[str, ...]
    vips: tuple[str, ...]
    ports: tuple[int, ...]


def group(name: str, members: Iterable[str], switch: bool | None, vips: Iterable[str],
          ports: Iterable[int]) -> Group | None:
    """The group, or None when steering is off for it (``switch`` False, or None with one
    member) or it has nothing to steer (one member, no tcp port, no VIP)."""
    nodes = tuple(sorted(set(members)))
    on = switch if switch is not None else len(nodes) > 1
    addresses = tuple(sorted(set(vips), key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a))))
    tcp = tuple(sorted(set(ports)))
    if not on or len(nodes) < 2 or not tcp or not addresses:
        return None
    return Group(name, nodes, addresses, tcp)


def node_steering(node: str, groups: Iterable[Group],
                  addresses: Mapping[str, tuple[str, str | None]]) -> SteeringModel | None:
    """The ``steering`` section of ``node``'s model: the groups it is in, with its peers
    (``addresses``: node id -> (IPv4, IPv6 or None)); None when it is in none."""
    out: list[SteeringGroup] = []
    for g in groups:
        if node not in g.members:
            continue
        peers: list[SteeringPeer] = [{"node": p, "address": addresses[p][0], "address6": addresses[p][1]}
                                     for p in g.members if p != node]
        out.append({"name": g.name, "ports": list(g.ports), "peers": peers,
                    "vips4": [v for v in g.vips if ipaddress.ip_address(v).version == 4],
                    "vips6": [v for v in g.vips if ipaddress.ip_address(v).version == 6]})
    return {"groups": out} if out else None
