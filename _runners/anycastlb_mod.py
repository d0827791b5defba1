"""
anycastlb runner: the master's side of rolling deploys and drains.

The catalog (and the secrets store) are read from the master's own
``ext_pillar: [{anycastlb: {catalog: ..., secrets: ...}}]``, so the runner always
judges the catalog the minions would get. Pure logic lives in
:mod:`anycastlb.orchestrate`; this module only talks to minions.

.. code-block:: bash

    salt-run anycastlb.lint                    # the master's catalog: ok, or every error
    salt-run anycastlb.plan                    # the deploy order salt/orch/deploy.sls runs
    salt-run anycastlb.mark_deployed           # record the catalog as deployed (plan compares with it)
    salt-run state.orchestrate orch.deploy     # the rolling deploy itself
    salt-run anycastlb.drain node=lb1          # withdraw, wait until the route reflectors agree
    salt-run anycastlb.undrain node=lb1        # announce again, wait until they carry it
    salt-run anycastlb.remember node=lb1       # in-place apply: what it announces now ...
    salt-run anycastlb.announced node=lb1      # ... and wait until the route reflectors carry it again
    salt-run anycastlb.routes                  # who each route reflector carries, per prefix

Every function sets a non-zero exit code (``retcode``) when it fails, so a
``salt.runner`` state in an orchestration fails with it.

The file is not called ``anycastlb.py`` on purpose (see ``_modules/anycastlb_mod.py``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

log = logging.getLogger(__name__)

__virtualname__ = "anycastlb"

try:
    from anycastlb import orchestrate as _orch

    _IMPORT_ERROR = ""
except ImportError as exc:  # pragma: no cover - depends on the master's Python environment
    _IMPORT_ERROR = str(exc)


def __virtual__() -> str | tuple[bool, str]:
    if _IMPORT_ERROR:
        return False, f"the anycastlb package is not importable on the master: {_IMPORT_ERROR}"
    return __virtualname__


# ----------------------------------------------------------------- helpers


def _config() -> dict[str, Any]:
    """The ``anycastlb`` entry of the master's ext_pillar (catalog, secrets, ...)."""
    for entry in __opts__.get("ext_pillar") or []:
        if isinstance(entry, dict) and isinstance(entry.get("anycastlb"), dict):
            return entry["anycastlb"]
    return {}


def _lint() -> Any:
    conf = _config()
    return _orch.lint(str(conf.get("catalog") or ""), conf.get("secrets"))


def _failed(ret: dict[str, Any]) -> dict[str, Any]:
    __context__["retcode"] = 1
    ret["result"] = False
    return ret


def _client() -> Any:
    import salt.client

    # From the master's config file, not __opts__: a runner started by the reactor runs with
    # user "Reactor" in its opts, and a LocalClient built from those cannot authenticate.
    conf = __opts__.get("conf_file")
    return salt.client.get_local_client(conf) if conf else salt.client.get_local_client(mopts=__opts__)


def _cmd(targets: list[str], fun: str, kwarg: dict[str, Any] | None = None,
         wait: float = 60) -> dict[str, tuple[int, Any]]:
    """``fun`` on ``targets`` → minion → (retcode, return); a minion that did not answer is missing."""
    if not targets:
        return {}
    out = _client().cmd(targets, fun, kwarg=kwarg or {}, tgt_type="list", timeout=int(wait), full_return=True)
    res: dict[str, tuple[int, Any]] = {}
    for minion, data in (out or {}).items():
        if isinstance(data, dict) and "ret" in data:
            res[minion] = (int(data.get("retcode") or 0), data["ret"])
        else:
            res[minion] = (1, data)
    return res


def _rrs(fleet: Any) -> list[str]:
    return [n for n, m in fleet.nodes.items() if "route-reflector" in m["roles"]]


def _state_dir() -> str:
    d = os.path.join(__opts__["cachedir"], "anycastlb", "drained")
    os.makedirs(d, exist_ok=True)
    return d


def _silent(ret: tuple[int, Any] | None) -> str:
    if ret is None:
        return "did not answer"
    return str(ret[1].get("comment") if isinstance(ret[1], dict) else ret[1])[:2000]


def _waited(waits: dict[str, tuple[int, Any]], rr: str) -> Any:
    r = waits.get(rr, (1, None))[1]
    return r.get("waited_ms") if isinstance(r, dict) else None


def _fleet_or_fail(ret: dict[str, Any]) -> Any:
    lint_ = _lint()
    if not lint_.ok:
        ret.update(comment=f"{lint_.summary} (fix the catalog first: salt-run anycastlb.lint)", errors=lint_.errors)
        return None
    return lint_.fleet


# ----------------------------------------------------------------- lint and plan


def lint() -> dict[str, Any]:
    """
    Compile the master's catalog (with its secrets store) exactly as the ext_pillar
    does: ``result`` True with a summary, or False with every error (file:line,
    object, key). Nothing is sent to any minion.

    CLI Example:

    .. code-block:: bash

        salt-run anycastlb.lint
    """
    ret = _lint().as_dict()
    return ret if ret["result"] else _failed(ret)


def _deploy_dir(name: str) -> str:
    d = os.path.join(__opts__["cachedir"], "anycastlb", "deploy")
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, name)


def _deployed_fleet() -> tuple[Any, str]:
    """The fleet of the catalog last deployed (``mark_deployed``), or None and why not."""
    path = _orch.snapshot_path(_deploy_dir("deployed"))
    if not path:
        return None, "no deployed catalog recorded (salt-run anycastlb.mark_deployed): every node is drained"
    res = _orch.lint(path)
    if not res.ok:
        return None, f"the deployed catalog {path} does not compile any more: every node is drained"
    return res.fleet, f"compared with the catalog deployed last ({path})"


def plan(runtime: bool = True, drain: str = "auto") -> dict[str, Any]:
    """
    The rolling deploy's order: every node once, with its actions (drain, apply,
    verify, undrain). A refused catalog gives no steps and ``result`` False.
    ``runtime=True`` asks the speakers for their drain file: a node an operator
    drained stays drained. ``drain=auto`` drains only the nodes whose change may
    reach the routers, judged against the catalog deployed last (see
    ``mark_deployed``); ``drain=always`` drains every node with another announcer.
    The planned catalog is kept, so that ``mark_deployed`` records exactly it.

    CLI Example:

    .. code-block:: bash

        salt-run anycastlb.plan
        salt-run anycastlb.plan runtime=False drain=always
    """
    if drain not in _orch.DRAIN_MODES:
        return _failed({"comment": f"drain must be one of {', '.join(_orch.DRAIN_MODES)}, not {drain!r}",
                        "steps": []})
    lint_ = _lint()
    if not lint_.ok:
        return _failed({"catalog": lint_.catalog, "comment": lint_.summary, "errors": lint_.errors, "steps": []})
    fleet = lint_.fleet
    drained: dict[str, str] = {}
    if runtime:
        speakers = [n for n, m in fleet.nodes.items() if (m.get("bgp") or {}).get("role") == "speaker"]
        for minion, (_rc, st) in _cmd(speakers, "anycastlb.status", wait=30).items():
            if isinstance(st, dict) and st.get("drain_file") and st.get("drain_reason") != _orch.ORCHESTRATE:
                drained[minion] = f"drain file, reason: {st.get('drain_reason') or 'none given'}"
    deployed, basis = _deployed_fleet() if drain == "auto" else (None, "drain=always: every node is drained")
    steps = _orch.plan(fleet, drained, deployed, drain)
    _orch.snapshot(lint_.catalog, _deploy_dir("planned"))
    return {"result": True, "catalog": lint_.catalog, "comment": f"{lint_.summary}; {basis}",
            "steps": [s.as_dict() for s in steps]}


def mark_deployed(from_plan: bool = False) -> dict[str, Any]:
    """
    Record the catalog as deployed: the master's current catalog (after a highstate
    of every node outside the orchestration), or with ``from_plan=True`` the one the
    last ``plan`` was made from (the rolling deploy does this after its last node).
    The next ``plan`` drains only the nodes whose change against it may reach the
    routers.

    CLI Example:

    .. code-block:: bash

        salt-run anycastlb.mark_deployed
    """
    import shutil

    planned, dest = _deploy_dir("planned"), _deploy_dir("deployed")
    if from_plan:
        if not _orch.snapshot_path(planned):
            return _failed({"comment": "not recorded: no planned catalog (run anycastlb.plan first)"})
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(planned, dest)
        source = "the catalog of the last plan"
    else:
        shutil.rmtree(planned, ignore_errors=True)
        lint_ = _lint()
        if not lint_.ok:
            return _failed({"comment": f"not recorded: {lint_.summary}", "errors": lint_.errors})
        _orch.snapshot(lint_.catalog, dest)
        source = "the master's current catalog"
    return {"result": True, "deployed": _orch.snapshot_path(dest), "comment": f"recorded {source} as deployed"}


# ----------------------------------------------------------------- drain / undrain with the route reflectors


def _announced_now(node: str) -> list[str]:
    """The prefixes the node's anycastlb-healthd announces now."""
    got = _cmd([node], "anycastlb.status", wait=30).get(node)
    st = (got or (1, {}))[1]
    prefixes = (st.get("healthd") or {}).get("prefixes") if isinstance(st, dict) else None
    return sorted(p for p, s in (prefixes or {}).items() if isinstance(s, dict) and s.get("announced"))


def _remember(node: str, announced: list[str], reason: str) -> None:
    with open(os.path.join(_state_dir(), f"{node}.json"), "w", encoding="utf-8") as fh:
        json.dump({"announced": announced, "at": time.time(), "reason": reason}, fh)


def remember(node: str) -> dict[str, Any]:
    """
    Record what ``node`` announces now, without draining it: a rolling deploy that
    applies a node in place does this first, so :py:func:`announced` can check that
    every prefix comes back.

    CLI Example:

    .. code-block:: bash

        salt-run anycastlb.remember node=lb1
    """
    ret: dict[str, Any] = {"node": node, "result": False, "step": "remember"}
    fleet = _fleet_or_fail(ret)
    if fleet is None:
        return _failed(ret)
    if node not in fleet.nodes:
        return _failed({**ret, "comment": f"{node} is not a node of the catalog"})
    announced = _announced_now(node)
    _remember(node, announced, "in place")
    ret.update(result=True, announced=announced, comment=f"{node} announces {len(announced)} prefix(es)")
    return ret


def drain(node: str, timeout: float = 30, reason: str = "") -> dict[str, Any]:
    """
    Drain ``node`` in order: the node withdraws every announcement (drain file,
    anycastlb-healthd confirms), then every route reflector is waited on until it
    carries no path via the node, then the node's BGP sessions on the route
    reflectors are checked to be still Established. Remembers what the node announced,
    so :py:func:`undrain` can wait for it to come back.

    CLI Example:

    .. code-block:: bash

        salt-run anycastlb.drain node=lb1
        salt-run anycastlb.drain node=lb1 reason="kernel update"
    """
    ret: dict[str, Any] = {"node": node, "result": False}
    fleet = _fleet_or_fail(ret)
    if fleet is None:
        return _failed(ret)
    if node not in fleet.nodes:
        return _failed({**ret, "comment": f"{node} is not a node of the catalog"})
    t0 = time.monotonic()
    announced = _announced_now(node)
    r = _cmd([node], "anycastlb.drain", {"timeout": timeout, "reason": reason}, wait=timeout + 30)
    got = r.get(node)
    if got is None or got[0] != 0:
        return _failed({**ret, "step": "drain", "comment": f"{node}: drain failed: {_silent(got)}"})
    # the node has withdrawn: record what it announced, for undrain
    _remember(node, announced, reason)
    addrs = _orch.node_addresses(fleet.nodes[node])
    rrs = _rrs(fleet)
    waits = _cmd(rrs, "anycastlb.wait_routes", {"via": addrs, "timeout": timeout}, wait=timeout + 30)
    problems = [f"{rr}: {_silent(waits.get(rr))}" for rr in rrs if waits.get(rr, (1,))[0] != 0]
    sess = _cmd(rrs, "anycastlb.sessions", wait=30)
    with_node: dict[str, dict[str, str]] = {}
    for rr in rrs:
        rc, s = sess.get(rr, (1, None))
        if rc != 0 or not isinstance(s, dict):
            problems.append(f"{rr}: sessions: {_silent(sess.get(rr))}")
            continue
        with_node[rr] = _orch.sessions_with(s, addrs)
        problems += [f"{rr}: BGP session {p} with {node} is {st}" for p, st in with_node[rr].items()
                     if st != "Established"]
        if (fleet.nodes[node].get("bgp") or {}).get("role") and not with_node[rr]:
            problems.append(f"{rr}: no BGP session with {node}")
    ms = round((time.monotonic() - t0) * 1000)
    ret.update(step="drain", announced_before=announced, node_drain=got[1], sessions=with_node,
               withdrawn_ms={rr: _waited(waits, rr) for rr in rrs}, seconds=round(ms / 1000, 2))
    if problems:
        return _failed({**ret, "comment": f"{node}: drained, but: " + "; ".join(problems)})
    ret.update(result=True, comment=(f"{node}: drained in {ms} ms; route reflectors {', '.join(rrs)} carry no "
                                     f"path via it; its BGP sessions stay Established"))
    return ret


def announced(node: str, timeout: float = 30) -> dict[str, Any]:
    """
    After an in-place apply (see :py:func:`remember`): wait until every route reflector
    carries the node's path for every prefix it announced before and announces now, so
    a change that breaks a served VIP stops the rolling deploy at this node.

    CLI Example:

    .. code-block:: bash

        salt-run anycastlb.announced node=lb1
    """
    return undrain(node, timeout, in_place=True)


def undrain(node: str, timeout: float = 30, in_place: bool = False) -> dict[str, Any]:
    """
    Undo :py:func:`drain`: the node announces again (drain file removed, anycastlb-healthd
    confirms), then every route reflector is waited on until it carries the node's
    path for every prefix it announced before the drain (and every prefix it announces
    now). A node whose catalog state is ``drain``/``maintenance`` stays drained: the
    catalog wins.

    CLI Example:

    .. code-block:: bash

        salt-run anycastlb.undrain node=lb1
    """
    ret: dict[str, Any] = {"node": node, "result": False, "step": "announced" if in_place else "undrain"}
    fleet = _fleet_or_fail(ret)
    if fleet is None:
        return _failed(ret)
    if node not in fleet.nodes:
        return _failed({**ret, "comment": f"{node} is not a node of the catalog"})
    model = fleet.nodes[node]
    t0 = time.monotonic()
    if in_place:  # never drained: only read what it announces now
        now = set(_announced_now(node))
        node_ret: Any = {"announced": sorted(now)}
    else:
        got = _cmd([node], "anycastlb.undrain", {"timeout": timeout}, wait=timeout + 30).get(node)
        if got is None or got[0] != 0:
            return _failed({**ret, "comment": f"{node}: undrain failed: {_silent(got)}"})
        node_ret = got[1]
        now = {p for p, a in (node_ret.get("prefixes") or {}).items() if a}
    memo = os.path.join(_state_dir(), f"{node}.json")
    try:
        with open(memo, encoding="utf-8") as fh:
            before = set(json.load(fh).get("announced") or [])
    except (OSError, ValueError):
        before = set()
    catalog_announce = set((model.get("bgp") or {}).get("announce") or [])
    expect = sorted((before & catalog_announce) | now)
    if model.get("state", "active") != "active":
        expect = []
    rrs = _rrs(fleet)
    waits = _cmd(rrs, "anycastlb.wait_routes", {"via": _orch.node_addresses(model), "present": expect,
                                                 "timeout": timeout}, wait=timeout + 30) if expect else {}
    problems = [f"{rr}: {_silent(waits.get(rr))}" for rr in rrs if expect and waits.get(rr, (1,))[0] != 0]
    missing = sorted((before & catalog_announce) - now)
    ms = round((time.monotonic() - t0) * 1000)
    ret.update(expected=expect, seconds=round(ms / 1000, 2), node_undrain=node_ret,
               announced_ms={rr: _waited(waits, rr) for rr in rrs})
    if problems:
        why = f" (anycastlb-healthd does not announce {', '.join(missing)}: see salt {node} anycastlb.status)" \
            if missing else ""
        return _failed({**ret, "comment": f"{node}: undrained, but: " + "; ".join(problems) + why})
    try:
        os.remove(memo)
    except FileNotFoundError:
        pass
    if model.get("state", "active") != "active":
        ret.update(result=True, comment=f"{node}: drain file removed; catalog state {model['state']}: "
                                        f"it stays drained (the catalog wins)")
        return ret
    ret.update(result=True, comment=f"{node}: {'applied in place' if in_place else 'undrained'} in {ms} ms; "
                                    f"route reflectors {', '.join(rrs)} carry {len(expect)} prefix(es) via it")
    return ret


def routes() -> dict[str, Any]:
    """
    What every route reflector carries: prefix → the nodes it has a path from.

    CLI Example:

    .. code-block:: bash

        salt-run anycastlb.routes
    """
    ret: dict[str, Any] = {"result": False}
    fleet = _fleet_or_fail(ret)
    if fleet is None:
        return _failed(ret)
    out: dict[str, Any] = {}
    by_addr = {a: n for n, m in fleet.nodes.items() for a in _orch.node_addresses(m)}
    for rr, (rc, r) in sorted(_cmd(_rrs(fleet), "anycastlb.routes", wait=30).items()):
        out[rr] = ({p: sorted({by_addr.get(h, h) for h in hops}) for p, hops in r.items()}
                   if rc == 0 and isinstance(r, dict) else f"failed: {r}")
    return {"result": True, "routes": out}


def checkout(rev: str = "", remote: str = "origin") -> dict[str, Any]:
    """
    Bring the master's catalog checkout (the git work tree holding the ext_pillar's
    ``catalog``) to ``rev``: fetch ``remote``, then check ``rev`` out (detached). Without
    ``rev``: fast-forward to the remote's branch. A catalog that is not in a git work
    tree, or a checkout already at ``rev``, is left alone. Nothing is linted or applied
    here: the deploy that follows lints first.

    CLI Example:

    .. code-block:: bash

        salt-run anycastlb.checkout
        salt-run anycastlb.checkout rev=4f1c2a9
    """
    catalog = str(_config().get("catalog") or "")
    ret: dict[str, Any] = {"result": False, "catalog": catalog}
    try:
        head, changed = _orch.git_checkout(catalog, str(rev or ""), remote)
    except _orch.GitError as exc:
        return _failed({**ret, "comment": str(exc)})
    ret.update(result=True, rev=head, changed=changed,
               comment=(f"catalog checkout now at {head}" if changed else
                        f"catalog checkout already at {head}" if head else "the catalog is not in a git work tree"))
    return ret
