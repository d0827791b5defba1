"""The rolling deploy's order (see :mod:`anycastlb.orchestrate`): every node once, with its actions."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

from ..compiler import Fleet

#: The drain reason an orchestration writes into the drain file (see :func:`anycastlb.minion.set_drain`).
ORCHESTRATE = "orchestrate"

PHASES = ("leaving", "route-reflectors", "clusters", "anycast", "backends", "monitoring", "other")


@dataclass(frozen=True)
class Step:
    """One node's turn: ``actions`` among drain/remember, apply, verify, undrain/announced, in that order
    (phase ``leaving``: ``drain`` alone, or ``decommission`` for a node the catalog no longer names)."""

    node: str
    phase: str
    group: str
    actions: tuple[str, ...]
    pending: tuple[str, ...] = ()  # HAProxy backends that may still be down at verify (their servers come later)
    note: str = ""
    hash: str = ""  # the node's model (anycastlb.model.model_hash): what verify checks and the master records

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["actions"], d["pending"] = list(self.actions), list(self.pending)
        return d


def _active(model: Mapping[str, Any]) -> bool:
    return model.get("state", "active") == "active"


def _speaker(model: Mapping[str, Any] | None) -> bool:
    return bool(model and model.get("bgp")) and model["bgp"].get("role") == "speaker"  # type: ignore[index]


def _announce(model: Mapping[str, Any] | None) -> set[str]:
    return set(((model or {}).get("bgp") or {}).get("announce") or []) if _speaker(model) else set()


def routing_change(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> str:
    """Why applying ``after`` over ``before`` (one node's models) may reach the routers; "" if it cannot.

    It can when the node is new, changes address, roles or state, when anything of its
    BGP model but the announcements changes (neighbours, timers, BFD: BIRD restarts the
    sessions), or when it stops announcing a prefix. New announcements, HAProxy, healthd,
    nftables and backend changes are applied without a flap.
    """
    if before is None:
        return "not in the deployed catalog"
    for key in ("address", "address6", "roles", "state"):
        if before.get(key) != after.get(key):
            return f"its {key} changes"
    old, new = before.get("bgp") or {}, after.get("bgp") or {}
    for key in sorted((set(old) | set(new)) - {"announce", "vips"}):
        if old.get(key) != new.get(key):
            return f"its BGP {key} changes"
    gone = sorted(set(old.get("announce") or []) - set(new.get("announce") or []))
    if gone:
        return f"it stops announcing {', '.join(gone)}"
    return ""


def _rolling(node: str, model: Mapping[str, Any], phase: str, group: str, peers: Sequence[str],
             runtime_drained: Mapping[str, str], pending: tuple[str, ...] = (),
             before: Mapping[str, Any] | None = None, drain: str = "always") -> Step:
    """The step of a node that announces VIPs: drain around the apply when someone else carries
    them and the change may reach the routers (``drain="auto"``) or always (``"always"``)."""
    if not _active(model):
        if drain == "auto" and before is not None and not _active(before):
            return Step(node, phase, group, ("apply", "verify"), pending,
                        f"catalog state {model['state']} since it last applied: it announces nothing already; "
                        "applied and left drained (the catalog wins)")
        return Step(node, phase, group, ("drain", "apply", "verify"), pending,
                    f"catalog state {model['state']}: applied drained and left drained (the catalog wins)")
    if node in runtime_drained:
        return Step(node, phase, group, ("drain", "apply", "verify"), pending,
                    f"drained at runtime ({runtime_drained[node] or 'drain file'}): left drained; "
                    f"`salt-run anycastlb.undrain node={node}` when done")
    others = [p for p in peers if p != node]
    if not others:
        return Step(node, phase, group, ("apply", "verify"), pending,
                    "the only active announcer of its VIPs: applied in place, not drained")
    if drain == "auto":
        why = routing_change(before, model)
        if not why:
            return Step(node, phase, group, ("remember", "apply", "verify", "announced"), pending,
                        "its sessions and announcements stay: applied in place, not drained")
        return Step(node, phase, group, ("drain", "apply", "verify", "undrain"), pending, f"drained: {why}")
    return Step(node, phase, group, ("drain", "apply", "verify", "undrain"), pending)


DRAIN_MODES = ("auto", "always")


def _joining(node: str, group: str, deployed: Mapping[str, Any] | None) -> bool:
    """Whether ``node`` is new to ``group`` (a cluster name, or "anycast") since the deployed catalog:
    its peers must know it (flow steering, docs/steering.md) before it announces, so it goes last."""
    if deployed is None:
        return False
    before = deployed.get(node)
    if before is None:
        return True
    if group == "anycast":
        return "anycast" not in before["roles"]
    return group not in ((before.get("haproxy") or {}).get("clusters") or [])


def _cluster_order(clusters: dict[str, list[str]], nodes: Mapping[str, Any],
                   before: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The clusters in the order they first appear, except that a cluster that takes over a prefix
    another one gives up (a service moved) comes first: the VIP is announced before it is withdrawn."""
    def prefixes(c: str, models: Mapping[str, Any]) -> set[str]:
        return {p for n, m in models.items() if m and c in ((m.get("haproxy") or {}).get("clusters") or [])
                for p in _announce(m)}
    gains = {c: prefixes(c, nodes) - prefixes(c, before) for c in clusters}
    losses = {c: prefixes(c, before) - prefixes(c, nodes) for c in clusters}
    order: list[str] = []
    pending = list(clusters)
    while pending:  # a cluster may go once no other pending cluster still has to gain what it loses
        ready = [c for c in pending if not any(losses[c] & gains[o] for o in pending if o != c)] or pending[:1]
        order.append(ready[0])
        pending.remove(ready[0])
    return order


def plan(fleet: Fleet, runtime_drained: Mapping[str, str] | Iterable[str] = (), deployed: Fleet | None = None,
         drain: str = "auto", applied: Mapping[str, Mapping[str, Any]] | None = None,
         changed_only: bool = False) -> list[Step]:
    """Every node of the fleet once, in deploy order (see the module docstring).

    ``runtime_drained``: nodes whose drain file an operator wrote (node → reason); they
    are applied drained and left drained. ``applied``: per node, the model it last applied
    successfully (what it runs); for a node without one, ``deployed`` (the fleet of the
    catalog last deployed as a whole) stands in. With ``drain="auto"`` they decide which
    nodes need a drain (a node with neither is drained).

    A node that ran before and is no longer a BGP speaker (it left its cluster, lost its
    anycast service) is drained first, before the route reflectors drop its sessions
    (phase ``leaving``); a node the catalog no longer names is decommissioned there
    (``salt-run anycastlb.decommission``).

    ``changed_only``: leave out the nodes whose model is the one they run (``applied``, else
    ``deployed``), so a catalog push touches only the nodes it changes. Not after an
    upgrade of anycastlb or a change of the secrets alone: the models stay, the files do not.
    """
    if drain not in DRAIN_MODES:
        raise ValueError(f"drain must be one of {', '.join(DRAIN_MODES)}, not {drain!r}")
    applied = applied or {}
    # a node's model in the deployed fleet is built only when it has no applied record
    before: dict[str, Mapping[str, Any]] = ({n: deployed.nodes[n] for n in deployed.nodes if n not in applied}
                                            if deployed is not None else {})
    before.update(applied)
    if not before:
        drain = "always"
    rd = dict(runtime_drained) if isinstance(runtime_drained, Mapping) else {n: "" for n in runtime_drained}
    nodes = fleet.nodes
    order = list(nodes)
    placed: set[str] = set()
    steps: list[Step] = []

    def add(step: Step) -> None:
        placed.add(step.node)
        steps.append(step)

    # 0. leaving: nodes that stop speaking BGP are drained while their sessions are up; removed nodes go
    leaving: set[str] = set()
    for n in before:
        if n not in nodes:
            steps.append(Step(n, "leaving", "removed from the catalog", ("decommission",),
                              note="not in the catalog any more: drained, then its daemons stopped and disabled, "
                                   "its configs and VIPs removed (salt-run anycastlb.decommission)"))
    for n, old in before.items():
        if n in nodes and _announce(old) and not _speaker(nodes[n]) and n not in rd:
            leaving.add(n)
            steps.append(Step(n, "leaving", "stops announcing", ("drain",),
                              note="no longer a BGP speaker: drained before the route reflectors drop it"))
    # 1. route reflectors
    for n in order:
        if "route-reflector" in nodes[n]["roles"]:
            add(Step(n, "route-reflectors", "route reflectors", ("apply", "verify")))
    def clusters_phase() -> None:
        # 2. HAProxy clusters, in the order they first appear (a cluster taking over a VIP first)
        found: dict[str, list[str]] = {}
        for n in order:
            hap = nodes[n]["haproxy"]
            for c in hap["clusters"] if hap else []:
                found.setdefault(c, []).append(n)
        clusters = {c: found[c] for c in _cluster_order(found, nodes, before)}
        managed_later = {n for n in order if {"backend", "apache"} & set(nodes[n]["roles"])}
        for cname, members in clusters.items():
            active = [m for m in members if _active(nodes[m]) and m not in rd]
            for n in sorted(members, key=lambda m: _joining(m, cname, before or None)):
                if n in placed:
                    continue
                hap = nodes[n]["haproxy"]
                assert hap is not None  # a cluster member runs HAProxy
                pending = tuple(sorted(
                    b["name"] for b in hap["backends"]
                    if b["servers"] and all(s["managed"] and s["name"] in managed_later for s in b["servers"])))
                add(_rolling(n, nodes[n], "clusters", f"cluster {cname}", active, rd, pending, before.get(n), drain))

    def anycast_phase() -> None:
        # 3. anycast backends: the other announcers are the nodes sharing one of its VIPs (new ones last)
        for n in sorted(order, key=lambda m: _joining(m, "anycast", before or None)):
            if n in placed or "anycast" not in nodes[n]["roles"]:
                continue
            bgp = nodes[n]["bgp"]
            mine = set(bgp["announce"]) if bgp and _speaker(nodes[n]) else set()
            svc = sorted(s for s in nodes[n]["services"] if fleet.services.get(s, {}).get("mode") == "anycast")
            sharing = [m for m in order if _active(nodes[m]) and m not in rd and "anycast" in nodes[m]["roles"]
                       and (set((nodes[m]["bgp"] or {"announce": []})["announce"]) & mine or m == n)]
            add(_rolling(n, nodes[n], "anycast", "anycast " + ",".join(svc), sharing, rd, (), before.get(n), drain))

    # 2 and 3, the other way round when anycast backends take over what a cluster gives up (a service
    # that became anycast): its VIP is announced by them before the cluster withdraws it
    anycast_gain = {p for n, m in nodes.items() if "anycast" in m["roles"]
                    for p in _announce(m) - _announce(before.get(n))}
    cluster_loss = {p for n, m in before.items() if m and m.get("haproxy")
                    for p in _announce(m) - _announce(nodes.get(n))}
    for phase in (anycast_phase, clusters_phase) if anycast_gain & cluster_loss else (clusters_phase, anycast_phase):
        phase()
    # 4. backends (apache vhosts, HAProxy servers)
    for n in order:
        if n not in placed and {"backend", "apache"} & set(nodes[n]["roles"]):
            add(Step(n, "backends", "backends", ("apply", "verify")))
    # 5. monitoring
    for n in order:
        if n not in placed and "monitoring" in nodes[n]["roles"]:
            add(Step(n, "monitoring", "monitoring", ("apply", "verify")))
    # 6. everything else, the salt-master last
    rest = [n for n in order if n not in placed]
    rest.sort(key=lambda n: "salt-master" in nodes[n]["roles"])
    for n in rest:
        add(Step(n, "other", "salt-master" if "salt-master" in nodes[n]["roles"] else "other", ("apply", "verify")))
    from ..model import model_hash

    for i, s in enumerate(steps):
        if s.node not in nodes:
            continue
        note = s.note
        if s.node in leaving and s.phase != "leaving":
            note = (note + "; " if note else "") + "drained before (phase leaving): what it no longer runs is retired"
        steps[i] = Step(**{**s.__dict__, "note": note, "hash": model_hash(nodes[s.node])})
    if changed_only:
        steps = [s for s in steps if s.node not in nodes or s.node in leaving or before.get(s.node) != nodes[s.node]]
    return steps


def out_at_once(steps: Sequence[Step], fleet: Fleet) -> dict[str, int]:
    """Cluster → the most active nodes the plan has out (drained) at the same time (1 or 0)."""
    out: dict[str, int] = {}
    for s in steps:
        if s.node not in fleet.nodes:
            continue
        hap = fleet.nodes[s.node]["haproxy"]
        for c in hap["clusters"] if hap else []:
            out[c] = max(out.get(c, 0), 1 if "drain" in s.actions and "undrain" in s.actions else 0)
    return out
