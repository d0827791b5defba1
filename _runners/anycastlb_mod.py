"""
anycastlb runner: the master's side of rolling deploys and drains.

The catalog (and the secrets store) are read from the master's own
``ext_pillar: [{anycastlb: {catalog: ..., secrets: ...}}]``, so the runner always
judges the catalog the minions would get. This module is an adapter: the sequencing,
the rules and the state files are :class:`anycastlb.orchestrate.master.Master`'s; here
are only Salt's side of it (``__opts__``, the LocalClient, the exit code).

.. code-block:: bash

    salt-run anycastlb.lint                    # the master's catalog: ok, or every error
    salt-run anycastlb.plan                    # the deploy order salt/anycastlb/orch/deploy.sls runs
    salt-run anycastlb.mark_deployed           # record the catalog as deployed (plan compares with it)
    salt-run anycastlb.mark_applied node=lb1   # record what lb1 runs now (the deploy does it per node)
    salt-run anycastlb.applied                 # what each node last applied
    salt-run anycastlb.decommission node=lb4   # a node removed from the catalog: drain, stop, remove
    salt-run anycastlb.lock / anycastlb.unlock  # one deploy at a time (orch.deploy takes and gives it back)
    salt-run state.orchestrate anycastlb.orch.deploy     # the rolling deploy itself
    salt-run anycastlb.drain node=lb1          # withdraw, wait until the route reflectors agree
    salt-run anycastlb.undrain node=lb1        # announce again, wait until they carry it
    salt-run anycastlb.remember node=lb1       # in-place apply: what it announces now ...
    salt-run anycastlb.announced node=lb1      # ... and wait until the route reflectors carry it again
    salt-run anycastlb.routes                  # who each route reflector carries, per prefix
    salt-run anycastlb.renew [service=NAME] [force=True]   # ACME: renew what is due, hot-load it

Every function sets a non-zero exit code (``retcode``) when it fails, so a
``salt.runner`` state in an orchestration fails with it.

The file is not called ``anycastlb.py`` on purpose (see ``_modules/anycastlb_mod.py``).
"""

from __future__ import annotations

import logging
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


# ----------------------------------------------------------------- the adapter


def _client() -> Any:
    import salt.client

    # From the master's config file, not __opts__: a runner started by the reactor runs with
    # user "Reactor" in its opts, and a LocalClient built from those cannot authenticate.
    conf = __opts__.get("conf_file")
    return salt.client.get_local_client(conf) if conf else salt.client.get_local_client(mopts=__opts__)


def _cmd(targets: Any, fun: str, kwarg: dict[str, Any] | None = None, wait: float = 60) -> dict[str, tuple[int, Any]]:
    """``fun`` on ``targets`` → minion → (retcode, return); a minion that did not answer is missing."""
    if not targets:
        return {}
    out = _client().cmd(list(targets), fun, kwarg=kwarg or {}, tgt_type="list", timeout=int(wait), full_return=True)
    res: dict[str, tuple[int, Any]] = {}
    for minion, data in (out or {}).items():
        if isinstance(data, dict) and "ret" in data:
            res[minion] = (int(data.get("retcode") or 0), data["ret"])
        else:
            res[minion] = (1, data)
    return res


def _master() -> Any:
    return _orch.Master(_orch.config_of(__opts__.get("ext_pillar")), __opts__["cachedir"], _cmd)


def _done(ret: dict[str, Any]) -> dict[str, Any]:
    """Salt's exit code follows ``result``."""
    if not ret.get("result"):
        __context__["retcode"] = 1
    return ret


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
    return _done(_master().lint().as_dict())


def plan(runtime: bool = True, drain: str = "auto", save: bool = True, changed_only: bool = False) -> dict[str, Any]:
    """
    The rolling deploy's order: every node once, with its actions (drain, apply,
    verify, undrain). A refused catalog gives no steps and ``result`` False.
    ``runtime=True`` asks the speakers for their drain file: a node an operator
    drained stays drained. ``drain=auto`` drains only the nodes whose change may
    reach the routers, judged against the catalog deployed last (see
    ``mark_deployed``); ``drain=always`` drains every node with another announcer.
    The planned catalog is kept, so that ``mark_deployed`` records exactly it.
    ``out_at_once``: per cluster, how many nodes the plan has drained at once (never
    more than one). Each node is compared with the model it last applied (see
    ``mark_applied``); one without a record with the catalog deployed last. Nodes that
    stop speaking BGP are drained first (phase ``leaving``), nodes the catalog no longer
    names are decommissioned there. ``save=False`` writes nothing (a dry run).
    ``changed_only=True`` leaves out the nodes whose model is the one they run (the
    reactor's deploys on a catalog push: a push touches only what it changes).

    CLI Example:

    .. code-block:: bash

        salt-run anycastlb.plan
        salt-run anycastlb.plan runtime=False drain=always
        salt-run anycastlb.plan changed_only=True
    """
    return _done(_master().plan(runtime=runtime, drain=drain, save=bool(save), changed_only=bool(changed_only)))


def mark_applied(node: str, hash: str = "") -> dict[str, Any]:  # pylint: disable=redefined-builtin
    """
    Record that ``node`` applied and verified the model the last plan gave it (the rolling
    deploy does this after each node); the next plan compares the node with it, so a deploy
    that stopped half-way is planned against what each node really runs. ``hash``: the
    plan's hash of that model, checked.

    CLI Example:

    .. code-block:: bash

        salt-run anycastlb.mark_applied node=lb1
    """
    return _done(_master().mark_applied(node, str(hash or "")))


def applied() -> dict[str, Any]:
    """
    What each node last applied successfully: node → model hash and time.

    CLI Example:

    .. code-block:: bash

        salt-run anycastlb.applied
    """
    recs = _master().applied()
    return {"result": True, "nodes": {n: {"hash": r.get("hash"), "at": r.get("at")} for n, r in recs.items()}}


def decommission(node: str, timeout: float = 30, force: bool = False) -> dict[str, Any]:
    """
    Take a node the catalog no longer names out of the fleet: drain it (wait until no route
    reflector carries a path via it), then stop and disable every daemon anycastlb ran there,
    remove its configs, its VIPs from ``lo`` and the firewall table. The rolling deploy does
    this for every node that left the catalog; its RR sessions, the peers' filters, other
    nodes' firewall holes for it and its Icinga host go as the others apply the new catalog.
    A node that does not answer is reported (and tried again by the next deploy), not an
    error. Refused for a node still in the catalog unless ``force=True``.

    CLI Example:

    .. code-block:: bash

        salt-run anycastlb.decommission node=lb4
    """
    return _done(_master().decommission(node, timeout=float(timeout), force=bool(force)))


def mark_deployed(from_plan: bool = False) -> dict[str, Any]:
    """
    Record the catalog as deployed: the master's current catalog (after a highstate
    of every node outside the orchestration; each of its nodes' applied record is set to
    it too), or with ``from_plan=True`` the one the last ``plan`` was made from (the
    rolling deploy does this after its last node).
    The next ``plan`` drains only the nodes whose change against it may reach the
    routers.

    CLI Example:

    .. code-block:: bash

        salt-run anycastlb.mark_deployed
    """
    return _done(_master().mark_deployed(from_plan=from_plan))


# ----------------------------------------------------------------- drain / undrain with the route reflectors


def remember(node: str) -> dict[str, Any]:
    """
    Record what ``node`` announces now, without draining it: a rolling deploy that
    applies a node in place does this first, so :py:func:`announced` can check that
    every prefix comes back.

    CLI Example:

    .. code-block:: bash

        salt-run anycastlb.remember node=lb1
    """
    return _done(_master().remember(node))


def drain(node: str, timeout: float = 30, reason: str = "", deadline: Any = None) -> dict[str, Any]:
    """
    Drain ``node`` in order: the node withdraws every announcement (drain file,
    anycastlb-healthd confirms), then every route reflector is waited on until it
    carries no path via the node, then the node's BGP sessions on the route
    reflectors are checked to be still Established. Remembers what the node announced,
    so :py:func:`undrain` can wait for it to come back. Then it waits until the node's
    HAProxy frontends hold no session, or ``deadline`` seconds pass (default: the
    catalog's ``drain_deadline``, 60 s; 0: no wait), and reports how many were
    still open (``open_sessions``).

    CLI Example:

    .. code-block:: bash

        salt-run anycastlb.drain node=lb1
        salt-run anycastlb.drain node=lb1 reason="kernel update" deadline=300
    """
    return _done(_master().drain(node, timeout=float(timeout), reason=str(reason or ""),
                                 deadline=None if deadline in (None, "") else float(deadline)))


def announced(node: str, timeout: float = 30, applied: str = "") -> dict[str, Any]:
    """
    After an in-place apply (see :py:func:`remember`): wait until every route reflector
    carries the node's path for every prefix it announced before and announces now, so
    a change that breaks a served VIP stops the rolling deploy at this node. ``applied``:
    the plan's model hash, recorded as what the node runs once this passed (as
    :py:func:`mark_applied`; the rolling deploy passes it).

    CLI Example:

    .. code-block:: bash

        salt-run anycastlb.announced node=lb1
    """
    return _done(_master().undrain(node, timeout=float(timeout), in_place=True, applied=str(applied or "")))


def undrain(node: str, timeout: float = 30, in_place: bool = False, applied: str = "") -> dict[str, Any]:
    """
    Undo :py:func:`drain`: the node announces again (drain file removed, anycastlb-healthd
    confirms), then every route reflector is waited on until it carries the node's
    path for every prefix it announced before the drain (and every prefix it announces
    now). A node whose catalog state is ``drain``/``maintenance`` stays drained: the
    catalog wins. ``applied``: as for :py:func:`announced`.

    CLI Example:

    .. code-block:: bash

        salt-run anycastlb.undrain node=lb1
    """
    return _done(_master().undrain(node, timeout=float(timeout), in_place=bool(in_place),
                                   applied=str(applied or "")))


def routes() -> dict[str, Any]:
    """
    What every route reflector carries: prefix → the nodes it has a path from.

    CLI Example:

    .. code-block:: bash

        salt-run anycastlb.routes
    """
    return _done(_master().routes())


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
    return _done(_master().checkout(str(rev or ""), remote))


# ----------------------------------------------------------------- one deploy at a time


def lock(max_age: float = 4 * 3600, take: bool = True) -> dict[str, Any]:
    """
    Take the deploy lock for the process running this orchestration (``anycastlb.orch.deploy``
    does it first). Refused, with the running deploy's start time and PID, while another
    deploy holds it; a lock whose process is gone, or older than ``max_age`` seconds, is free.
    ``take=False`` (a ``test=True`` deploy) only checks: refused the same way, nothing written.

    CLI Example:

    .. code-block:: bash

        salt-run anycastlb.lock
        salt-run anycastlb.lock take=False
    """
    from anycastlb import deploylock

    try:
        if not take:
            deploylock.check(__opts__["cachedir"], max_age=max_age)
            return _done({"result": True, "comment": "test=True: no other deploy runs; no lock taken, "
                                                     "nothing written"})
        me = deploylock.acquire(__opts__["cachedir"], max_age=max_age)
    except deploylock.DeployLocked as exc:
        return _done({"result": False, "comment": str(exc)})
    return _done({"result": True, "comment": f"deploy lock taken: {me.describe()}"})


def unlock(force: bool = False) -> dict[str, Any]:
    """
    Give the deploy lock back (the orchestration's last state). ``force=True`` frees a
    lock held by another process: only when that deploy is known to be gone.

    CLI Example:

    .. code-block:: bash

        salt-run anycastlb.unlock force=True
    """
    from anycastlb import deploylock

    try:
        held = deploylock.release(__opts__["cachedir"], force=force)
    except deploylock.DeployLocked as exc:
        return _done({"result": False, "comment": str(exc)})
    return _done({"result": True, "comment": f"deploy lock given back: {held.describe()}" if held
                  else "the deploy lock was free"})


# ----------------------------------------------------------------- ACME


def renew(service: str = "", force: bool = False) -> dict[str, Any]:
    """
    Renew the fleet's ACME certificates that are due (less lifetime left than the
    catalog's ``acme.renew_before``), or all of them (or one service's) with
    ``force=True``, on this master (the issuer); then every LB node that receives a
    new certificate refreshes its pillar and applies haproxy, which swaps it in
    through HAProxy's runtime API (no reload). A refused renewal keeps the old
    certificate and fails (non-zero exit).

    CLI Example:

    .. code-block:: bash

        salt-run anycastlb.renew
        salt-run anycastlb.renew service=www force=True
    """
    from anycastlb.acme_issuer import renew_fleet

    return _done(renew_fleet(_orch.config_of(__opts__.get("ext_pillar")), _cmd, service=service or None,
                             force=bool(force)))
