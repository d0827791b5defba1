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
from .git import GitError, StageRefused, git_checkout, snapshot, snapshot_path, stage_release
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


def _announced(st: Any) -> list[str]:
    """The prefixes an ``anycastlb.status`` answer says the node's anycastlb-healthd announces."""
    prefixes = (st.get("healthd") or {}).get("prefixes") if isinstance(st, dict) else None
    return sorted(p for p, s in (prefixes or {}).items() if isinstance(s, dict) and s.get("announced"))


def _dump_json(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through ``path.tmp`` (readers see the old file or the new one)."""
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(obj, fh)
    os.replace(path + ".tmp", path)


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

    def _nodes_file(self, name: str) -> str:
        """The node ids of the catalog snapshot ``name`` (beside it: the snapshot holds the catalog only)."""
        return self._deploy_dir(name) + ".nodes.json"

    def _snapshot_nodes(self, name: str, nodes: Any) -> None:
        _dump_json(self._nodes_file(name), sorted(nodes))

    def _forget_nodes(self, name: str) -> None:
        try:
            os.remove(self._nodes_file(name))
        except FileNotFoundError:
            pass

    def _deployed_nodes(self, path: str) -> set[str]:
        """The node ids of the deployed catalog: from its record, else read from the snapshot."""
        from ..pillar import catalog_nodes

        try:
            with open(self._nodes_file("deployed"), encoding="utf-8") as fh:
                return {str(n) for n in json.load(fh)}
        except (OSError, ValueError, TypeError):
            return set(catalog_nodes(path))

    def _deployed_if_needed(self, nodes: set[str], recorded: set[str]) -> tuple[Any, str]:
        """:meth:`deployed_fleet`, unless every node of the new catalog and of the one deployed last has
        an applied record (then the records alone say what each node runs, and the deployed catalog
        is not compiled: at 1,000 services its compile and models were a third of a plan)."""
        path = snapshot_path(self._deploy_dir("deployed"))
        if path and recorded and nodes | self._deployed_nodes(path) <= recorded:
            return None, "every node's applied record"
        return self.deployed_fleet()

    # ------------------------------------------------------------- what each node runs

    def _applied_path(self, node: str) -> str:
        return os.path.join(self._dir("applied"), f"{node}.json")

    def applied(self) -> dict[str, dict[str, Any]]:
        """Node → its record: the model it last applied successfully (``model``, ``hash``, ``at``)."""
        out: dict[str, dict[str, Any]] = {}
        d = self._dir("applied")
        for name in sorted(os.listdir(d)):
            if name.endswith(".json"):
                try:
                    with open(os.path.join(d, name), encoding="utf-8") as fh:
                        rec = json.load(fh)
                except (OSError, ValueError):
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("model"), dict):
                    out[name[:-5]] = rec
        return out

    def mark_applied(self, node: str, hash: str = "") -> dict[str, Any]:  # pylint: disable=redefined-builtin
        """Record that ``node`` applied (and verified) the model the last plan gave it; the next plan
        compares that node with it. ``hash`` (the plan's, when given) must be that model's."""
        from ..model import model_hash

        try:
            with open(os.path.join(self._planned_models(), f"{node}.json"), encoding="utf-8") as fh:
                model = json.load(fh).get("model")
        except (OSError, ValueError):
            model = None
        if not isinstance(model, dict):
            return {"result": False, "node": node, "comment": f"not recorded: the last plan has no model for {node}"}
        got = model_hash(model)
        if hash and got != hash:
            return {"result": False, "node": node,
                    "comment": f"not recorded: the last plan's model of {node} is {got}, not {hash} (a newer plan?)"}
        self._record_applied(node, model, got)
        return {"result": True, "node": node, "hash": got, "comment": f"{node} runs model {got}: recorded"}

    def _record_applied(self, node: str, model: Mapping[str, Any], hash: str) -> None:  # pylint: disable=redefined-builtin
        _dump_json(self._applied_path(node), {"node": node, "hash": hash, "at": time.time(), "model": model})

    def forget_applied(self, node: str) -> bool:
        """Drop ``node``'s record (it was decommissioned); whether there was one."""
        try:
            os.remove(self._applied_path(node))
        except FileNotFoundError:
            return False
        return True

    def _planned_models(self) -> str:
        """The last plan's models, one file per node: :meth:`mark_applied` reads one node's, not the fleet's."""
        return os.path.join(self._dir("deploy"), "planned-models")

    def plan(self, runtime: bool = True, drain: str = "auto", save: bool = True,
             changed_only: bool = False) -> dict[str, Any]:
        """The rolling deploy's steps, each node compared with what it runs (:meth:`applied`, else the
        catalog deployed last); keeps the planned catalog and models for :meth:`mark_deployed` and
        :meth:`mark_applied`, and (``runtime``) what each node applied in place announces now, from
        the status it reads anyway (:meth:`remember` at plan time; not with ``save=False``: a dry run
        writes nothing)."""
        if drain not in DRAIN_MODES:
            return {"result": False, "comment": f"drain must be one of {', '.join(DRAIN_MODES)}, not {drain!r}",
                    "steps": []}
        res = self.lint()
        if not res.ok:
            return {"result": False, "catalog": res.catalog, "comment": res.summary, "errors": res.errors, "steps": []}
        fleet = res.fleet
        assert fleet is not None  # res.ok
        drained: dict[str, str] = {}
        statuses: dict[str, Any] = {}
        if runtime:
            speakers = [n for n, m in fleet.nodes.items() if (m["bgp"] or {"role": ""})["role"] == "speaker"]
            for minion, (_rc, st) in self.cmd(speakers, "anycastlb.status", {"brief": True}, 30).items():
                statuses[minion] = st
                if isinstance(st, dict) and st.get("drain_file") and st.get("drain_reason") != ORCHESTRATE:
                    drained[minion] = f"drain file, reason: {st.get('drain_reason') or 'none given'}"
        applied = {n: r["model"] for n, r in self.applied().items()}
        deployed, basis = self._deployed_if_needed(set(fleet.nodes), set(applied))
        if applied:
            basis = (f"compared with what each node last applied ({len(applied)} recorded"
                     + (f"; the others with the catalog deployed last)" if deployed is not None else ")"))
        if drain == "always":
            basis += "; drain=always: every node with another announcer is drained"
        steps = plan(fleet, drained, deployed, drain, applied=applied, changed_only=changed_only)
        if changed_only:
            basis += f"; changed_only: the {len(steps)} step(s) of the nodes whose model changed"
        out = out_at_once(steps, fleet)
        ret = {"result": True, "catalog": res.catalog, "comment": f"{res.summary}; {basis}",
               "steps": [s.as_dict() for s in steps], "out_at_once": out}
        over = sorted(c for c, n in out.items() if n > 1)
        if over:  # the plan's promise; never kept a deploy that breaks it
            return {**ret, "result": False, "comment": f"the plan takes more than one node of {', '.join(over)} out"}
        if save:
            # an in-place node's announcements, read above: its "announced" step checks they come back
            for step in steps:
                if "remember" in step.actions and step.node in statuses:
                    self._remember(step.node, _announced(statuses[step.node]), "in place (at plan time)")
            snapshot(res.catalog, self._deploy_dir("planned"))
            self._snapshot_nodes("planned", fleet.nodes)
            final = self._planned_models()
            tmp, old = final + ".tmp", final + ".old"
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            now = time.time()
            for node in sorted({s.node for s in steps if s.node in fleet.nodes}):  # what mark_applied reads
                with open(os.path.join(tmp, f"{node}.json"), "w", encoding="utf-8") as fh:
                    json.dump({"catalog": res.catalog, "at": now, "model": fleet.nodes[node]}, fh)
            shutil.rmtree(old, ignore_errors=True)
            if os.path.isdir(final):
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        return ret

    def mark_deployed(self, from_plan: bool = False) -> dict[str, Any]:
        """Record the current catalog (or, ``from_plan``, the last planned one) as deployed. The current
        one (after a highstate of every node) also becomes each of its nodes' applied record, so that
        the next plan compares every node with its record and need not compile the catalog again."""
        from ..model import model_hash

        planned, dest = self._deploy_dir("planned"), self._deploy_dir("deployed")
        if from_plan:
            if not snapshot_path(planned):
                return {"result": False, "comment": "not recorded: no planned catalog (run anycastlb.plan first)"}
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(planned, dest)
            try:
                os.replace(self._nodes_file("planned"), self._nodes_file("deployed"))
            except FileNotFoundError:  # a plan of an older anycastlb: the snapshot is read instead
                self._forget_nodes("deployed")
            source = "the catalog of the last plan"
        else:
            shutil.rmtree(planned, ignore_errors=True)
            self._forget_nodes("planned")
            res = self.lint()
            if not res.ok:
                return {"result": False, "comment": f"not recorded: {res.summary}", "errors": res.errors}
            snapshot(res.catalog, dest)
            assert res.fleet is not None  # res.ok
            self._snapshot_nodes("deployed", res.fleet.nodes)
            for node in res.fleet.nodes:
                model = res.fleet.nodes[node]
                self._record_applied(node, model, model_hash(model))
            source = f"the master's current catalog (and what each of its {len(res.fleet.nodes)} nodes runs)"
        return {"result": True, "deployed": snapshot_path(dest), "comment": f"recorded {source} as deployed"}

    # ------------------------------------------------------------- drain / undrain with the route reflectors

    @staticmethod
    def _rrs(fleet: Any) -> list[str]:
        return [n for n, m in fleet.nodes.items() if "route-reflector" in m["roles"]]

    def announced_now(self, node: str) -> list[str]:
        """The prefixes the node's anycastlb-healthd announces now."""
        got = self.cmd([node], "anycastlb.status", {"brief": True}, 30).get(node)
        return _announced((got or (1, {}))[1])

    def remember(self, node: str) -> dict[str, Any]:
        """Record what ``node`` announces now, before an in-place apply (see :meth:`undrain`)."""
        ret: dict[str, Any] = {"node": node, "result": False, "step": "remember"}
        if self._node_fleet(node, ret) is None:
            return ret
        announced = self.announced_now(node)
        self._remember(node, announced, "in place")
        ret.update(result=True, announced=announced, comment=f"{node} announces {len(announced)} prefix(es)")
        return ret

    def drain(self, node: str, timeout: float = 30, reason: str = "", deadline: float | None = None) -> dict[str, Any]:
        """The node withdraws (healthd confirms), every route reflector carries no path via it,
        its BGP sessions on the route reflectors stay Established; what it announced is kept.
        Then (graceful drain) it waits until the node's HAProxy frontends hold no session or
        ``deadline`` s pass (None: the catalog's ``drain_deadline``; 0: no wait) and reports
        how many were left. A rolling deploy's drain (``reason`` orchestrate) of a node that
        steers flows does not wait: its reload keeps every session, steering keeps them reachable."""
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
        withdrawn_ms = round((time.monotonic() - t0) * 1000)
        model: Any = fleet.nodes[node]
        kwarg: dict[str, Any] = {}
        old = self.last_model(node) if not model.get("haproxy") else None
        if old and old.get("haproxy"):  # it leaves its cluster: its HAProxy stops at its apply
            model = old
            kwarg["frontends"] = [f["name"] for f in old["haproxy"]["frontends"]]
        elif deadline is None and reason == ORCHESTRATE and model.get("steering"):
            deadline = 0
        left = ""
        if model.get("haproxy") and not problems and (deadline is None or deadline > 0):
            wait = (model["haproxy"]["drain_deadline_ms"] / 1000) if deadline is None else deadline
            got_s = self.cmd([node], "anycastlb.wait_sessions", {"deadline": wait, **kwarg}, wait + 30).get(node)
            if got_s is None or not isinstance(got_s[1], dict):
                problems.append(f"{node}: sessions: {_silent(got_s)}")
            else:
                ret["open_sessions"], ret["sessions_waited_ms"] = got_s[1]["open"], got_s[1]["waited_ms"]
                left = f"; {got_s[1]['comment']}"
        ms = round((time.monotonic() - t0) * 1000)
        ret.update(step="drain", announced_before=announced, node_drain=got[1], sessions=with_node,
                   withdrawn_ms={rr: _waited(waits, rr) for rr in rrs}, seconds=round(ms / 1000, 2))
        if problems:
            return {**ret, "comment": f"{node}: drained, but: " + "; ".join(problems)}
        ret.update(result=True, comment=(f"{node}: drained in {withdrawn_ms} ms; route reflectors {', '.join(rrs)} "
                                         f"carry no path via it; its BGP sessions stay Established{left}"))
        return ret

    def undrain(self, node: str, timeout: float = 30, in_place: bool = False, applied: str = "") -> dict[str, Any]:
        """The node announces again (healthd confirms; ``in_place``: it was never drained), then
        every route reflector carries its path for every prefix of :func:`expected_back`; then
        (``applied``: the plan's model hash) :meth:`mark_applied`, one runner call less per node."""
        ret = self._undrain(node, timeout, in_place)
        if not applied or not ret.get("result"):
            return ret
        rec = self.mark_applied(node, applied)
        if not rec["result"]:
            return {**ret, "result": False, "comment": f"{ret['comment']}; but {rec['comment']}"}
        return {**ret, "applied": rec["hash"], "comment": f"{ret['comment']}; {rec['comment']}"}

    def _undrain(self, node: str, timeout: float, in_place: bool) -> dict[str, Any]:
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

    def last_model(self, node: str) -> dict[str, Any] | None:
        """The model ``node`` last applied (its record), else its model in the catalog deployed last."""
        rec = self.applied().get(node)
        if rec:
            return dict(rec["model"])
        deployed, _ = self.deployed_fleet()
        return dict(deployed.nodes[node]) if deployed is not None and node in deployed.nodes else None

    def decommission(self, node: str, timeout: float = 30, force: bool = False) -> dict[str, Any]:
        """A node the catalog no longer names: drained (the route reflectors carry no path via it, then
        its HAProxy frontends hold no session or its ``drain_deadline`` passed), then everything
        anycastlb put on it taken away (daemons stopped and disabled, configs, VIPs, the firewall
        table) while it can be reached. An unreachable node only has to be gone from the
        routes: its record is kept, so the next deploy tries again."""
        ret: dict[str, Any] = {"node": node, "result": False, "step": "decommission"}
        fleet = self._fleet(ret)
        if fleet is None:
            return ret
        if node in fleet.nodes and not force:
            return {**ret, "comment": f"{node} is still in the catalog: remove it there first (the deploy then "
                                      f"decommissions it), or force=True"}
        old = self.last_model(node)
        addrs = node_addresses(old) if old else []
        t0 = time.monotonic()
        got = self.cmd([node], "anycastlb.drain", {"timeout": timeout, "reason": "decommission"}, timeout + 30)
        drained = got.get(node)
        rrs = self._rrs(fleet)
        problems: list[str] = []
        if addrs and rrs:
            waits = self.cmd(rrs, "anycastlb.wait_routes", {"via": addrs, "timeout": timeout}, timeout + 30)
            problems = [f"{rr}: {_silent(waits.get(rr))}" for rr in rrs if waits.get(rr, (1,))[0] != 0]
        if problems:
            return {**ret, "drain": _silent(drained), "comment": f"{node}: still carried: " + "; ".join(problems)}
        hap = (old or {}).get("haproxy") or {}
        wait = float(hap.get("drain_deadline_ms") or 0) / 1000 if hap.get("frontends") else 0.0
        kwarg = {"force": force, "wait": wait, "frontends": [f["name"] for f in hap.get("frontends") or []]}
        done = self.cmd([node], "anycastlb.decommission", kwarg, timeout + 60 + wait).get(node)
        ms = round((time.monotonic() - t0) * 1000)
        ret.update(seconds=round(ms / 1000, 2), drain=_silent(drained) if drained else "did not answer")
        if done is None:
            ret.update(result=True, comment=f"{node}: does not answer; no route reflector carries a path via it. "
                                            f"Its daemons could not be stopped: the next deploy tries again "
                                            f"(or salt-run anycastlb.decommission node={node})")
            return ret
        if done[0] != 0 or not isinstance(done[1], dict):
            return {**ret, "comment": f"{node}: decommission failed: {_silent(done)}"}
        self.forget_applied(node)
        ret.update(result=True, changes=done[1].get("changes", {}),
                   comment=f"{node}: decommissioned in {ms} ms: {done[1].get('comment')}")
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
        """Stage the pushed commit ``rev`` (else the remote's head), lint it there, and only then make it
        the catalog the ext_pillar reads. With ``repo`` in the ext_pillar config: a release directory per
        commit and an atomic symlink switch of ``live`` (see :func:`.git.stage_release`); without it: the
        git work tree holding ``catalog`` is moved after the staged copy passed lint."""
        catalog = str(self.config.get("catalog") or "")
        secrets = self.config.get("secrets")
        ret: dict[str, Any] = {"result": False, "catalog": catalog}

        def check(path: str) -> Lint:
            return lint(path, secrets)

        repo = str(self.config.get("repo") or "")
        try:
            if repo:
                live = str(self.config.get("live") or (os.path.dirname(catalog) if catalog.endswith((".yaml", ".yml"))
                                                       else catalog))
                rel = os.path.relpath(catalog, live)
                if rel.startswith(".."):
                    return {**ret, "comment": f"the catalog {catalog} is not under live {live}"}
                head, changed = stage_release(repo, live, "" if rel == "." else rel,
                                              os.path.join(self._dir(), "catalog.git"), str(rev or ""), check)
            else:
                head, changed = git_checkout(catalog, str(rev or ""), remote, self._dir("staging"), check)
        except StageRefused as exc:
            return {**ret, "rev": exc.commit, "comment": str(exc), "errors": exc.errors}
        except GitError as exc:
            return {**ret, "comment": str(exc)}
        ret.update(result=True, rev=head, changed=changed,
                   comment=(f"catalog now at {head} (staged and linted first)" if changed else
                            f"catalog already at {head}" if head else "the catalog is not in a git work tree"))
        return ret
