"""The master's side of rolling deploys and drains, without Salt.

``_runners/anycastlb_mod.py`` is an adapter over :class:`Master`: it hands in the
master's ``ext_pillar`` entry, its cache directory and a function that runs an execution
function on minions (:data:`Cmd`, Salt's LocalClient there, a recorder in tests). Here
live the sequencing of drain and undrain with the route reflectors, the rule for which
prefixes must come back, the check of the BGP sessions, and the state files (what a
drained node announced; the planned and deployed catalogs).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Callable, Mapping, Sequence

from ..answers.bird import node_addresses, sessions_with
from .git import GitError, git_checkout, snapshot, snapshot_path
from .lint import Lint, lint
from .plan import DRAIN_MODES, ORCHESTRATE, out_at_once, plan

#: Runs execution function ``fun`` with ``kwarg`` on minions ``targets``, waiting up to
#: ``wait`` s → minion → (retcode, return); a minion that did not answer is missing.
Cmd = Callable[[Sequence[str], str, "dict[str, Any] | None", float], "dict[str, tuple[int, Any]]"]


def config_of(ext_pillar: Sequence[Any] | None) -> dict[str, Any]:
    """The ``anycastlb`` entry of the master's ``ext_pillar`` (catalog, secrets, ...), or ``{}``."""
    for entry in ext_pillar or []:
        if isinstance(entry, dict) and isinstance(entry.get("anycastlb"), dict):
            return entry["anycastlb"]
    return {}


def _silent(ret: tuple[int, Any] | None) -> str:
    if ret is None:
        return "did not answer"
    return str(ret[1].get("comment") if isinstance(ret[1], dict) else ret[1])[:2000]


def _waited(waits: Mapping[str, tuple[int, Any]], rr: str) -> Any:
    r = waits.get(rr, (1, None))[1]
    return r.get("waited_ms") if isinstance(r, dict) else None


def expected_back(model: Mapping[str, Any], before: set[str], now: set[str]) -> list[str]:
    """The prefixes the route reflectors must carry via a node after its undrain (or in-place
    apply): what it announced before that the catalog still gives it, and what it announces
    now. Nothing for a node the catalog keeps drained (``state`` not ``active``)."""
    if model.get("state", "active") != "active":
        return []
    catalog_announce = set((model.get("bgp") or {}).get("announce") or [])
    return sorted((before & catalog_announce) | now)


class Master:
    """Lint, plan, drain, undrain and the catalog checkout, for one master."""

    def __init__(self, config: Mapping[str, Any], cachedir: str, cmd: Cmd) -> None:
        self.config = dict(config)
        self.cachedir = cachedir
        self.cmd = cmd

    # ------------------------------------------------------------- state files

    def _dir(self, *parts: str) -> str:
        d = os.path.join(self.cachedir, "anycastlb", *parts)
        os.makedirs(d, exist_ok=True)
        return d

    def _memo(self, node: str) -> str:
        return os.path.join(self._dir("drained"), f"{node}.json")

    def _deploy_dir(self, name: str) -> str:
        return os.path.join(self._dir("deploy"), name)

    def _remember(self, node: str, announced: list[str], reason: str) -> None:
        with open(self._memo(node), "w", encoding="utf-8") as fh:
            json.dump({"announced": announced, "at": time.time(), "reason": reason}, fh)

    def _remembered(self, node: str) -> set[str]:
        try:
            with open(self._memo(node), encoding="utf-8") as fh:
                return set(json.load(fh).get("announced") or [])
        except (OSError, ValueError):
            return set()

    # ------------------------------------------------------------- lint and plan

    def lint(self) -> Lint:
        """The master's catalog, compiled with its secrets store, as the ext_pillar does."""
        return lint(str(self.config.get("catalog") or ""), self.config.get("secrets"))

    def _fleet(self, ret: dict[str, Any]) -> Any:
        res = self.lint()
        if not res.ok:
            ret.update(comment=f"{res.summary} (fix the catalog first: salt-run anycastlb.lint)", errors=res.errors)
            return None
        return res.fleet

    def _node_fleet(self, node: str, ret: dict[str, Any]) -> Any:
        fleet = self._fleet(ret)
        if fleet is not None and node not in fleet.nodes:
            ret["comment"] = f"{node} is not a node of the catalog"
            return None
        return fleet

    def deployed_fleet(self) -> tuple[Any, str]:
        """The fleet of the catalog last deployed (:meth:`mark_deployed`), or None and why not."""
        path = snapshot_path(self._deploy_dir("deployed"))
        if not path:
            return None, "no deployed catalog recorded (salt-run anycastlb.mark_deployed): every node is drained"
        res = lint(path)
        if not res.ok:
            return None, f"the deployed catalog {path} does not compile any more: every node is drained"
        return res.fleet, f"compared with the catalog deployed last ({path})"

    def plan(self, runtime: bool = True, drain: str = "auto") -> dict[str, Any]:
        """The rolling deploy's steps; keeps the planned catalog for :meth:`mark_deployed`."""
        if drain not in DRAIN_MODES:
            return {"result": False, "comment": f"drain must be one of {', '.join(DRAIN_MODES)}, not {drain!r}",
                    "steps": []}
        res = self.lint()
        if not res.ok:
            return {"result": False, "catalog": res.catalog, "comment": res.summary, "errors": res.errors, "steps": []}
        fleet = res.fleet
        assert fleet is not None  # res.ok
        drained: dict[str, str] = {}
        if runtime:
            speakers = [n for n, m in fleet.nodes.items() if (m["bgp"] or {"role": ""})["role"] == "speaker"]
            for minion, (_rc, st) in self.cmd(speakers, "anycastlb.status", None, 30).items():
                if isinstance(st, dict) and st.get("drain_file") and st.get("drain_reason") != ORCHESTRATE:
                    drained[minion] = f"drain file, reason: {st.get('drain_reason') or 'none given'}"
        deployed, basis = self.deployed_fleet() if drain == "auto" else (None, "drain=always: every node is drained")
        steps = plan(fleet, drained, deployed, drain)
        out = out_at_once(steps, fleet)
        ret = {"result": True, "catalog": res.catalog, "comment": f"{res.summary}; {basis}",
               "steps": [s.as_dict() for s in steps], "out_at_once": out}
        over = sorted(c for c, n in out.items() if n > 1)
        if over:  # the plan's promise; never kept a deploy that breaks it
            return {**ret, "result": False, "comment": f"the plan takes more than one node of {', '.join(over)} out"}
        snapshot(res.catalog, self._deploy_dir("planned"))
        return ret

    def mark_deployed(self, from_plan: bool = False) -> dict[str, Any]:
        """Record the current catalog (or, ``from_plan``, the last planned one) as deployed."""
        planned, dest = self._deploy_dir("planned"), self._deploy_dir("deployed")
        if from_plan:
            if not snapshot_path(planned):
                return {"result": False, "comment": "not recorded: no planned catalog (run anycastlb.plan first)"}
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(planned, dest)
            source = "the catalog of the last plan"
        else:
            shutil.rmtree(planned, ignore_errors=True)
            res = self.lint()
            if not res.ok:
                return {"result": False, "comment": f"not recorded: {res.summary}", "errors": res.errors}
            snapshot(res.catalog, dest)
            source = "the master's current catalog"
        return {"result": True, "deployed": snapshot_path(dest), "comment": f"recorded {source} as deployed"}

    # ------------------------------------------------------------- drain / undrain with the route reflectors

    @staticmethod
    def _rrs(fleet: Any) -> list[str]:
        return [n for n, m in fleet.nodes.items() if "route-reflector" in m["roles"]]

    def announced_now(self, node: str) -> list[str]:
        """The prefixes the node's anycastlb-healthd announces now."""
        got = self.cmd([node], "anycastlb.status", None, 30).get(node)
        st = (got or (1, {}))[1]
        prefixes = (st.get("healthd") or {}).get("prefixes") if isinstance(st, dict) else None
        return sorted(p for p, s in (prefixes or {}).items() if isinstance(s, dict) and s.get("announced"))

    def remember(self, node: str) -> dict[str, Any]:
        """Record what ``node`` announces now, before an in-place apply (see :meth:`undrain`)."""
        ret: dict[str, Any] = {"node": node, "result": False, "step": "remember"}
        if self._node_fleet(node, ret) is None:
            return ret
        announced = self.announced_now(node)
        self._remember(node, announced, "in place")
        ret.update(result=True, announced=announced, comment=f"{node} announces {len(announced)} prefix(es)")
        return ret

    def drain(self, node: str, timeout: float = 30, reason: str = "") -> dict[str, Any]:
        """The node withdraws (healthd confirms), every route reflector carries no path via it,
        its BGP sessions on the route reflectors stay Established; what it announced is kept."""
        ret: dict[str, Any] = {"node": node, "result": False}
        fleet = self._node_fleet(node, ret)
        if fleet is None:
            return ret
        t0 = time.monotonic()
        announced = self.announced_now(node)
        got = self.cmd([node], "anycastlb.drain", {"timeout": timeout, "reason": reason}, timeout + 30).get(node)
        if got is None or got[0] != 0:
            return {**ret, "step": "drain", "comment": f"{node}: drain failed: {_silent(got)}"}
        self._remember(node, announced, reason)  # the node has withdrawn: what it announced, for undrain
        addrs = node_addresses(fleet.nodes[node])
        rrs = self._rrs(fleet)
        waits = self.cmd(rrs, "anycastlb.wait_routes", {"via": addrs, "timeout": timeout}, timeout + 30)
        problems = [f"{rr}: {_silent(waits.get(rr))}" for rr in rrs if waits.get(rr, (1,))[0] != 0]
        sess = self.cmd(rrs, "anycastlb.sessions", None, 30)
        with_node: dict[str, dict[str, str]] = {}
        for rr in rrs:
            rc, s = sess.get(rr, (1, None))
            if rc != 0 or not isinstance(s, dict):
                problems.append(f"{rr}: sessions: {_silent(sess.get(rr))}")
                continue
            with_node[rr] = sessions_with(s, addrs)
            problems += [f"{rr}: BGP session {p} with {node} is {st}" for p, st in with_node[rr].items()
                         if st != "Established"]
            if (fleet.nodes[node].get("bgp") or {}).get("role") and not with_node[rr]:
                problems.append(f"{rr}: no BGP session with {node}")
        ms = round((time.monotonic() - t0) * 1000)
        ret.update(step="drain", announced_before=announced, node_drain=got[1], sessions=with_node,
                   withdrawn_ms={rr: _waited(waits, rr) for rr in rrs}, seconds=round(ms / 1000, 2))
        if problems:
            return {**ret, "comment": f"{node}: drained, but: " + "; ".join(problems)}
        ret.update(result=True, comment=(f"{node}: drained in {ms} ms; route reflectors {', '.join(rrs)} carry no "
                                         f"path via it; its BGP sessions stay Established"))
        return ret

    def undrain(self, node: str, timeout: float = 30, in_place: bool = False) -> dict[str, Any]:
        """The node announces again (healthd confirms; ``in_place``: it was never drained), then
        every route reflector carries its path for every prefix of :func:`expected_back`."""
        ret: dict[str, Any] = {"node": node, "result": False, "step": "announced" if in_place else "undrain"}
        fleet = self._node_fleet(node, ret)
        if fleet is None:
            return ret
        model = fleet.nodes[node]
        t0 = time.monotonic()
        if in_place:  # never drained: only read what it announces now
            now = set(self.announced_now(node))
            node_ret: Any = {"announced": sorted(now)}
        else:
            got = self.cmd([node], "anycastlb.undrain", {"timeout": timeout}, timeout + 30).get(node)
            if got is None or got[0] != 0:
                return {**ret, "comment": f"{node}: undrain failed: {_silent(got)}"}
            node_ret = got[1]
            now = {p for p, a in (node_ret.get("prefixes") or {}).items() if a}
        before = self._remembered(node)
        expect = expected_back(model, before, now)
        rrs = self._rrs(fleet)
        waits = self.cmd(rrs, "anycastlb.wait_routes", {"via": node_addresses(model), "present": expect,
                                                         "timeout": timeout}, timeout + 30) if expect else {}
        problems = [f"{rr}: {_silent(waits.get(rr))}" for rr in rrs if expect and waits.get(rr, (1,))[0] != 0]
        catalog_announce = set((model.get("bgp") or {}).get("announce") or [])
        missing = sorted((before & catalog_announce) - now)
        ms = round((time.monotonic() - t0) * 1000)
        ret.update(expected=expect, seconds=round(ms / 1000, 2), node_undrain=node_ret,
                   announced_ms={rr: _waited(waits, rr) for rr in rrs})
        if problems:
            why = f" (anycastlb-healthd does not announce {', '.join(missing)}: see salt {node} anycastlb.status)" \
                if missing else ""
            return {**ret, "comment": f"{node}: undrained, but: " + "; ".join(problems) + why}
        try:
            os.remove(self._memo(node))
        except FileNotFoundError:
            pass
        if model.get("state", "active") != "active":
            ret.update(result=True, comment=f"{node}: drain file removed; catalog state {model['state']}: "
                                            f"it stays drained (the catalog wins)")
            return ret
        ret.update(result=True, comment=f"{node}: {'applied in place' if in_place else 'undrained'} in {ms} ms; "
                                        f"route reflectors {', '.join(rrs)} carry {len(expect)} prefix(es) via it")
        return ret

    def routes(self) -> dict[str, Any]:
        """Route reflector → prefix → the nodes it carries a path from."""
        ret: dict[str, Any] = {"result": False}
        fleet = self._fleet(ret)
        if fleet is None:
            return ret
        by_addr = {a: n for n, m in fleet.nodes.items() for a in node_addresses(m)}
        out: dict[str, Any] = {}
        for rr, (rc, r) in sorted(self.cmd(self._rrs(fleet), "anycastlb.routes", None, 30).items()):
            out[rr] = ({p: sorted({by_addr.get(h, h) for h in hops}) for p, hops in r.items()}
                       if rc == 0 and isinstance(r, dict) else f"failed: {r}")
        return {"result": True, "routes": out}

    def checkout(self, rev: str = "", remote: str = "origin") -> dict[str, Any]:
        """Bring the catalog's git checkout to ``rev`` (else fast-forward); nothing is linted here."""
        catalog = str(self.config.get("catalog") or "")
        ret: dict[str, Any] = {"result": False, "catalog": catalog}
        try:
            head, changed = git_checkout(catalog, str(rev or ""), remote)
        except GitError as exc:
            return {**ret, "comment": str(exc)}
        ret.update(result=True, rev=head, changed=changed,
                   comment=(f"catalog checkout now at {head}" if changed else
                            f"catalog checkout already at {head}" if head else "the catalog is not in a git work tree"))
        return ret
