"""The compiled node model: the contract between compiler, renderers, minion and runner.

:func:`anycastlb.compiler.compile_catalog` builds one :class:`NodeModel` per node
(``anycastlb show NODE --json`` prints it; docs/model.md explains every key). It is a
plain JSON-able mapping, because it travels as Salt pillar; these TypedDicts give it
types, so mypy checks the builders against its consumers. Sections a node does not
run are ``None``. Deep parts that are lists of HAProxy, apache2 and Icinga2 objects are
typed one level down (their keys are documented in docs/model.md).
"""

from __future__ import annotations

from typing import Any, TypedDict


class Bfd(TypedDict):
    """BFD timers of a BGP session."""

    interval_ms: int
    multiplier: int


class PeerExport(TypedDict):
    """What the route reflectors attach to the paths they send one external peer."""

    communities: list[list[int]]
    large_communities: list[list[int]]
    med: int | None
    prepend: int
    local_pref: int | None


class Neighbor(TypedDict):
    """One BGP session of the node (one per address family)."""

    name: str
    ident: str
    kind: str                 # client, listener, peer, route-reflector
    address: str
    family: str               # ipv4 / ipv6
    local_address: str
    asn: int
    password: str | None
    add_paths: str | None     # tx, rx or None
    bfd: bool
    bfd_timers: Bfd | None
    multihop: bool
    export: PeerExport | None
    ebgp: bool


class Vip(TypedDict):
    """A VIP the node may announce and the services on it."""

    address: str
    prefix: str
    family: str
    services: list[str]


class VipPools(TypedDict):
    ipv4: list[str]
    ipv6: list[str]


class BgpModel(TypedDict):
    """What BIRD runs on the node."""

    asn: int
    router_id: str
    role: str                 # speaker, route-reflector, listener
    bfd: Bfd
    hold_ms: int
    vip_pools: VipPools
    neighbors: list[Neighbor]
    vips: list[Vip]
    announce: list[str]


class HaproxyModel(TypedDict):
    """HAProxy on an LB node (frontends, backends and their servers: docs/model.md)."""

    clusters: list[str]
    drain_deadline_ms: int    # how long a drain waits for the frontends' sessions to end (the longest of its clusters)
    stats: dict[str, Any]
    frontends: list[dict[str, Any]]
    backends: list[dict[str, Any]]
    checks: list[dict[str, Any]]   # health checks several backends' servers share (they ``track`` them)
    certificates: list[str]
    acme: "AcmeChallenge | None"   # where /.well-known/acme-challenge/ goes (ACME services only)
    acme_probe: "AcmeProbe | None"   # the node's ACME certificates on its own address, for monitoring


class AcmeProbe(TypedDict):
    """Where an LB node serves its ACME certificates to the monitoring's serial check."""

    address: str
    port: int
    certificates: list[str]


class AcmeChallenge(TypedDict):
    """The issuer's HTTP-01 token server, as an LB node routes to it."""

    backend: str
    path: str
    address: str
    port: int


class AcmeCertificate(TypedDict):
    """One ACME certificate: its names and the LB nodes that receive it."""

    name: str
    service: str
    domains: list[str]
    cluster: str
    nodes: list[str]


class AcmeModel(TypedDict):
    """What the ACME issuer runs (anycastlb.acme_issuer)."""

    directory: str
    contact: str
    renew_before_ms: int
    eab: dict[str, str] | None
    challenge: dict[str, Any]
    certificates: list[AcmeCertificate]


class ApacheModel(TypedDict):
    """apache2 on a backend node (vhosts: docs/model.md)."""

    listen: list[Any]
    vhosts: list[dict[str, Any]]
    proxy_protocol_ports: list[int]
    proxy_protocol_exceptions: list[str]


class MonitoringModel(TypedDict):
    """Icinga2 on a monitoring node (hosts, checks, users: docs/model.md)."""

    hosts: list[dict[str, Any]]
    vip_hosts: list[str]
    checks: list[dict[str, Any]]
    users: list[str]
    icinga: str
    contacts: dict[str, Any]


class SaltMasterModel(TypedDict):
    interface: str


class Announcement(TypedDict):
    """One prefix anycastlb-healthd announces while its watch is healthy."""

    prefix: str
    services: list[str]
    watch: dict[str, Any]


class HealthModel(TypedDict):
    announcements: list[Announcement]


class FirewallRule(TypedDict):
    comment: str
    protocol: str
    ports: list[int]
    sources: list[str]
    destinations: list[str]


class FirewallModel(TypedDict):
    """nftables on the node (``managed`` false: the site's own firewall)."""

    policy: str
    managed: bool
    rules: list[FirewallRule]


class SteeringPeer(TypedDict):
    """A peer that gets copies of the packets of flows this node does not own."""

    node: str
    address: str
    address6: str | None


class SteeringGroup(TypedDict):
    """One cluster (or anycast service): its VIPs, tcp ports and the node's peers in it."""

    name: str                 # "cluster edge", "anycast kdc"
    vips4: list[str]
    vips6: list[str]
    ports: list[int]
    peers: list[SteeringPeer]


class SteeringModel(TypedDict):
    """Flow steering between the nodes announcing the same VIPs (docs/steering.md)."""

    groups: list[SteeringGroup]


class SecretNames(TypedDict):
    """The names of the secrets the node needs (their values travel apart: anycastlb.pillar)."""

    certificates: list[str]
    bgp_passwords: list[str]


class NodeModel(TypedDict):
    """One node's compiled model."""

    version: int
    node: str
    address: str
    address6: str | None
    state: str                # active, drain, maintenance
    roles: list[str]
    management: list[str]
    services: list[str]
    bgp: BgpModel | None
    haproxy: HaproxyModel | None
    apache: ApacheModel | None
    monitoring: MonitoringModel | None
    salt_master: SaltMasterModel | None
    acme: AcmeModel | None
    health: HealthModel | None
    firewall: FirewallModel | None
    steering: SteeringModel | None
    secrets: SecretNames


def model_hash(model: Any) -> str:
    """A short digest of one node's compiled model (only :class:`NodeModel`'s keys, so a pillar that
    carries more, such as ``service_mode``, hashes the same): the plan names it per node, the
    node's verify checks it is verifying that model, the master records it as applied."""
    import hashlib
    import json

    doc = {k: model.get(k) for k in NodeModel.__annotations__}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
