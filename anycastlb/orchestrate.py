"""Rolling deploys without Salt: lint, the ordered plan, and reading BIRD and HAProxy answers.

``_runners/anycastlb_mod.py`` (the master side) and :mod:`anycastlb.minion` (the node
side) are thin adapters over these functions; ``salt/orch/deploy.sls`` only lays the
plan out as states.

The plan (:func:`plan`) is ordered so that no service loses its last announcer:

1. route reflectors, one at a time (apply, verify: every BGP session Established);
2. the HAProxy nodes of each cluster, one at a time: drain (withdraw, wait until the
   route reflectors carry none of the node's paths), apply, verify, undrain (wait until
   they carry its paths again) — so at most one node of a cluster is ever out;
3. the anycast backends, the same way;
4. the web (and other managed) backends, one at a time (apply, verify);
5. monitoring; 6. every other node (the salt-master last).

Drain only where the change can move traffic: with the catalog last deployed at hand
(``deployed``, see :func:`routing_change`), a node whose BGP sessions and addresses the
change leaves alone and that loses no announcement is applied in place: HAProxy reloads
seamlessly, BIRD reconfigures its filters softly, healthd and nftables swap atomically, so
nothing reaches the routers. Draining such a node would be the only thing that moves
flows: the routers' ECMP rehashes when a next hop goes and comes back, and the open
connections that land on the other node are reset. ``drain="always"`` drains every node
with another announcer, as without a deployed catalog.

A node whose catalog ``state`` is ``drain``/``maintenance`` is drained and applied but
never undrained: the catalog wins. A node drained at runtime by an operator (its drain
file exists and was not written by an orchestration) stays drained too. The runtime
drain file (``anycastlb.drain``, for now) and the catalog's ``state: drain`` (durable:
the node's health agent gets no announcements at all) are two different things.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from .answers.bird import (announcers, bgp_sessions, carried_via, node_addresses, parse_protocols,  # noqa: F401
                           parse_routes, sessions_with)
from .answers.haproxy import verify_haproxy  # noqa: F401
from .compiler import Fleet, compile_catalog
from .errors import CatalogRefused

#: The drain reason an orchestration writes into the drain file (see :func:`anycastlb.minion.set_drain`).
ORCHESTRATE = "orchestrate"

PHASES = ("route-reflectors", "clusters", "anycast", "backends", "monitoring", "other")


# ----------------------------------------------------------------- lint


@dataclass
class Lint:
    """The verdict on a catalog: a fleet, or every error."""

    ok: bool
    catalog: str
    summary: str
    errors: list[str] = field(default_factory=list)
    fleet: Fleet | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"result": self.ok, "catalog": self.catalog, "comment": self.summary, "errors": self.errors}


def lint(catalog: str, secrets: str | None = None) -> Lint:
    """Compile ``catalog`` (with the secrets store when given); never raises on a bad catalog."""
    if not catalog:
        return Lint(False, "", "no catalog configured (ext_pillar anycastlb: catalog: ...)",
                    ["the master's ext_pillar has no anycastlb entry with a catalog"])
    try:
        store = None
        if secrets:
            from .secrets import load_secrets
            store = load_secrets(secrets)
        fleet = compile_catalog(catalog, secrets=store)
    except CatalogRefused as exc:
        errors = [str(e) for e in exc.errors]
        return Lint(False, catalog, f"catalog refused: {len(errors)} error(s): nothing is applied", errors)
    s = fleet.summary
    return Lint(True, catalog, f"catalog ok: {s['services']} services, {s['vips']} VIPs, {s['nodes']} nodes, "
                               f"{s['clusters']} clusters", [], fleet)


# ----------------------------------------------------------------- the plan


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
        for c in (nodes[n].get("haproxy") or {}).get("clusters", []):
            clusters.setdefault(c, []).append(n)
    managed_later = {n for n in order if {"backend", "apache"} & set(nodes[n]["roles"])}
    for cname, members in clusters.items():
        active = [m for m in members if _active(nodes[m]) and m not in rd]
        for n in members:
            if n in placed:
                continue
            pending = tuple(sorted(
                b["name"] for b in nodes[n]["haproxy"]["backends"]
                if b["servers"] and all(s["managed"] and s["name"] in managed_later for s in b["servers"])))
            add(_rolling(n, nodes[n], "clusters", f"cluster {cname}", active, rd, pending, before.get(n), drain))
    # 3. anycast backends: the other announcers are the nodes sharing one of its VIPs
    for n in order:
        if n in placed or "anycast" not in nodes[n]["roles"]:
            continue
        mine = set(nodes[n]["bgp"]["announce"]) if _speaker(nodes[n]) else set()
        svc = sorted(s for s in nodes[n]["services"] if fleet.services.get(s, {}).get("mode") == "anycast")
        sharing = [m for m in order if _active(nodes[m]) and m not in rd and "anycast" in nodes[m]["roles"]
                   and (set(nodes[m]["bgp"]["announce"]) & mine or m == n)]
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
        for c in (fleet.nodes[s.node].get("haproxy") or {}).get("clusters", []):
            out[c] = max(out.get(c, 0), 1 if "drain" in s.actions and "undrain" in s.actions else 0)
    return out


# ----------------------------------------------------------------- the catalog's git checkout


def snapshot(catalog: str, dest: str) -> str:
    """Copy the catalog (a file or a directory) to ``dest``, replacing what was there; return the copy's path."""
    import os
    import shutil

    tmp = f"{dest}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    copy = os.path.join(tmp, os.path.basename(os.path.normpath(catalog)))
    if os.path.isdir(catalog):
        shutil.copytree(catalog, copy)
    else:
        shutil.copy2(catalog, copy)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return os.path.join(dest, os.path.basename(copy))


def snapshot_path(dest: str) -> str | None:
    """The catalog copy :func:`snapshot` left in ``dest``, if any."""
    import os

    try:
        (name,) = os.listdir(dest)
    except (OSError, ValueError):
        return None
    return os.path.join(dest, name)


class GitError(RuntimeError):
    """The catalog checkout could not be brought to the wanted revision."""


def _git(cwd: str, *args: str, timeout: float = 60) -> str:
    import subprocess

    r = subprocess.run(["git", "-C", cwd, *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise GitError(f"git {' '.join(args)} in {cwd}: {(r.stderr or r.stdout).strip()[-500:]}")
    return r.stdout.strip()


def git_checkout(catalog: str, rev: str = "", remote: str = "origin") -> tuple[str, bool]:
    """Move the git work tree holding ``catalog`` to ``rev`` (else fast-forward); → (HEAD, changed).

    ``("", False)`` when the catalog is not in a git work tree. ``rev`` must be a commit
    id (hex): it comes from an event.
    """
    import os
    import re

    if rev and not re.fullmatch(r"[0-9a-f]{7,64}", rev):
        raise GitError(f"rev {rev!r} is not a commit id")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", remote):
        raise GitError(f"remote {remote!r} is not a remote name")
    d = catalog if os.path.isdir(catalog) else os.path.dirname(os.path.abspath(catalog))
    try:
        top = _git(d, "rev-parse", "--show-toplevel")
    except (GitError, OSError):
        return "", False
    head = _git(top, "rev-parse", "HEAD")
    if rev and head.startswith(rev):
        return head, False
    has_remote = remote in _git(top, "remote").split()
    if has_remote:
        _git(top, "fetch", "--quiet", remote)
    if rev:
        _git(top, "checkout", "--quiet", "--detach", rev)
    elif has_remote:
        try:
            _git(top, "symbolic-ref", "-q", "HEAD")
        except GitError:  # detached (an earlier rev=): follow the remote's default branch
            _git(top, "checkout", "--quiet", "--detach", f"refs/remotes/{remote}/HEAD")
        else:
            _git(top, "merge", "--quiet", "--ff-only", "@{upstream}")
    new = _git(top, "rev-parse", "HEAD")
    return new, new != head
