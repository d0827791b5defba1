"""The rolling deploy's order (see :mod:`anycastlb.orchestrate`): every node once, with its actions."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

from ..compiler import Fleet

#: The drain reason an orchestration writes into the drain file (see :func:`anycastlb.minion.set_drain`).
ORCHESTRATE = "orchestrate"

PHASES = ("route-reflectors", "clusters", "anycast", "backends", "monitoring", "other")


@dataclass(frozen=True)
class Step:
    """One node's turn: ``actions`` among drain/remember, apply, verify, undrain/announced, in that order."""

    node: str
    phase: str
    group: str
    actions: tuple[str, ...]
    pending: tuple[str, ...] = ()  # HAProxy backends that may still be down at verify (their servers come later)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["actions"], d["pending"] = list(self.actions), list(self.pending)
        return d


def _active(model: Mapping[str, Any]) -> bool:
    return model.get("state", "active") == "active"


def _speaker(model: Mapping[str, Any]) -> bool:
    return bool(model.get("bgp")) and model["bgp"].get("role") == "speaker"


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


def plan(fleet: Fleet, runtime_drained: Mapping[str, str] | Iterable[str] = (), deployed: Fleet | None = None,
         drain: str = "auto") -> list[Step]:
    """Every node of the fleet once, in deploy order (see the module docstring).

    ``runtime_drained``: nodes whose drain file an operator wrote (node → reason); they
    are applied drained and left drained. ``deployed``: the fleet of the catalog last
    deployed; with ``drain="auto"`` it decides which nodes need a drain (without it,
    every node with another announcer is drained).
    """
    if drain not in DRAIN_MODES:
        raise ValueError(f"drain must be one of {', '.join(DRAIN_MODES)}, not {drain!r}")
    if deployed is None:
        drain = "always"
    before = deployed.nodes if deployed is not None else {}
    rd = dict(runtime_drained) if isinstance(runtime_drained, Mapping) else {n: "" for n in runtime_drained}
    nodes = fleet.nodes
    order = list(nodes)
    placed: set[str] = set()
    steps: list[Step] = []

    def add(step: Step) -> None:
        placed.add(step.node)
        steps.append(step)

    # 1. route reflectors
    for n in order:
        if "route-reflector" in nodes[n]["roles"]:
            add(Step(n, "route-reflectors", "route reflectors", ("apply", "verify")))
    # 2. HAProxy clusters, in the order they first appear
    clusters: dict[str, list[str]] = {}
    for n in order:
        hap = nodes[n]["haproxy"]
        for c in hap["clusters"] if hap else []:
            clusters.setdefault(c, []).append(n)
    managed_later = {n for n in order if {"backend", "apache"} & set(nodes[n]["roles"])}
    for cname, members in clusters.items():
        active = [m for m in members if _active(nodes[m]) and m not in rd]
        for n in sorted(members, key=lambda m: _joining(m, cname, before if deployed else None)):
            if n in placed:
                continue
            hap = nodes[n]["haproxy"]
            assert hap is not None  # a cluster member runs HAProxy
            pending = tuple(sorted(
                b["name"] for b in hap["backends"]
                if b["servers"] and all(s["managed"] and s["name"] in managed_later for s in b["servers"])))
            add(_rolling(n, nodes[n], "clusters", f"cluster {cname}", active, rd, pending, before.get(n), drain))
    # 3. anycast backends: the other announcers are the nodes sharing one of its VIPs (new ones last)
    for n in sorted(order, key=lambda m: _joining(m, "anycast", before if deployed else None)):
        if n in placed or "anycast" not in nodes[n]["roles"]:
            continue
        bgp = nodes[n]["bgp"]
        mine = set(bgp["announce"]) if bgp and _speaker(nodes[n]) else set()
        svc = sorted(s for s in nodes[n]["services"] if fleet.services.get(s, {}).get("mode") == "anycast")
        sharing = [m for m in order if _active(nodes[m]) and m not in rd and "anycast" in nodes[m]["roles"]
                   and (set((nodes[m]["bgp"] or {"announce": []})["announce"]) & mine or m == n)]
        add(_rolling(n, nodes[n], "anycast", "anycast " + ",".join(svc), sharing, rd, (), before.get(n), drain))
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
    return steps


def out_at_once(steps: Sequence[Step], fleet: Fleet) -> dict[str, int]:
    """Cluster → the most active nodes the plan has out (drained) at the same time (1 or 0)."""
    out: dict[str, int] = {}
    for s in steps:
        hap = fleet.nodes[s.node]["haproxy"]
        for c in hap["clusters"] if hap else []:
            out[c] = max(out.get(c, 0), 1 if "drain" in s.actions and "undrain" in s.actions else 0)
    return out
