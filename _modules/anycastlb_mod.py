"""
anycastlb execution module: this node's configs and runtime, from its pillar slice.

The node model and its secret values come from ``__pillar__["anycastlb"]`` (the
``anycastlb`` ext_pillar); the work is done by :mod:`anycastlb.minion`. The service
mode (``direct`` or ``systemd``) is pillar ``anycastlb:service_mode``, else the
environment variable ``ANYCASTLB_SERVICE_MODE``, else detected.

The file is not called ``anycastlb.py`` on purpose: Salt puts a module's own
directory on ``sys.path`` while loading it, and a file of the package's name would
then shadow the ``anycastlb`` package. Salt knows it by its virtual name, ``anycastlb``.
"""

from __future__ import annotations

import logging
from typing import Any

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "anycastlb"

try:
    from anycastlb import minion as _minion

    _IMPORT_ERROR = ""
except ImportError as exc:  # pragma: no cover - depends on the minion's Python environment
    _IMPORT_ERROR = str(exc)


def __virtual__() -> str | tuple[bool, str]:
    if _IMPORT_ERROR:
        return False, f"the anycastlb package is not importable: {_IMPORT_ERROR}"
    return __virtualname__


def _node() -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        return _minion.node_of(__pillar__.get("anycastlb"))
    except _minion.NodeError as exc:
        raise CommandExecutionError(str(exc)) from None


def _fail_retcode(failed: bool) -> None:
    if failed:
        __context__["retcode"] = 1


def daemons() -> list[str]:
    """
    The daemons this node runs, in the order they are applied.

    CLI Example:

    .. code-block:: bash

        salt lb1 anycastlb.daemons
    """
    model, _ = _node()
    return _minion.wanted(model)


def units() -> dict[str, Any]:
    """
    On a systemd host: the unit files anycastlb ships for this node (``files``: path -> text)
    and the units to enable (``enable``); on any other host, nothing.

    CLI Example:

    .. code-block:: bash

        salt lb1 anycastlb.units
    """
    from anycastlb import service, units as _units

    model, _ = _node()
    if service.detect_mode((__pillar__.get("anycastlb") or {}).get("service_mode")) != "systemd":
        return {"files": {}, "enable": [], "nft_include": ""}
    return {"files": _units.unit_files(model), "enable": _units.enabled_units(model),
            "nft_include": _units.NFT_INCLUDE if "nftables.service" in _units.enabled_units(model) else ""}


def render(daemon: str | None = None, show_secrets: bool = False) -> dict[str, dict[str, str]]:
    """
    What would be written: ``{daemon: {path: text}}`` for one daemon or all of this node's.
    Files holding secrets (mode 0600) are not shown unless ``show_secrets=True``.

    CLI Example:

    .. code-block:: bash

        salt lb1 anycastlb.render
        salt lb1 anycastlb.render haproxy
    """
    model, secrets = _node()
    try:
        return _minion.render(model, secrets, daemon, show_secrets=show_secrets)
    except (_minion.NodeError, _minion.RenderError) as exc:
        raise CommandExecutionError(str(exc)) from None


def check(daemon: str | None = None) -> dict[str, dict[str, Any]]:
    """
    Run each daemon's own checker on freshly rendered files (nothing live is touched).
    Returns ``{daemon: {ok, output}}``; the exit code is 1 when one of them fails.

    CLI Example:

    .. code-block:: bash

        salt lb1 anycastlb.check
        salt lb1 anycastlb.check bird
    """
    model, secrets = _node()
    try:
        out = _minion.check(model, secrets, daemon)
    except _minion.NodeError as exc:
        raise CommandExecutionError(str(exc)) from None
    _fail_retcode(not all(r["ok"] for r in out.values()))
    return out


def apply(daemon: str, test: bool = False, root: str = "/") -> dict[str, Any]:
    """
    Render, check, swap and reload one daemon; a state-shaped result
    (``result`` None with the diff under ``test=True``; False, nothing touched,
    when the checker refuses).

    CLI Example:

    .. code-block:: bash

        salt lb1 anycastlb.apply haproxy test=True
        salt lb1 anycastlb.apply haproxy
    """
    model, secrets = _node()
    ctl = None if test else _minion.control(__pillar__.get("anycastlb"), root=root)
    ret = _minion.apply(daemon, model, secrets, ctl=ctl, root=root, test=test).as_state()
    _fail_retcode(ret["result"] is False)
    return ret


def record_model(test: bool = False) -> dict[str, Any]:
    """
    Keep this node's model (its pillar's) as the one its last state run was given (the last
    state of ``anycastlb``); :py:func:`verify` with the plan's ``expect`` uses it. A
    state-shaped result.

    CLI Example:

    .. code-block:: bash

        salt lb1 anycastlb.record_model test=True
    """
    model, _ = _node()
    return _minion.record_model(model, test=bool(test))  # type: ignore[arg-type]


def sysctl(key: str, value: Any, test: bool = False) -> dict[str, Any]:
    """
    Set the kernel setting ``key`` to ``value`` through ``/proc/sys`` (nothing is run when it is
    already set); a state-shaped result (``test=True``: what would change).

    CLI Example:

    .. code-block:: bash

        salt lb1 anycastlb.sysctl net.netfilter.nf_conntrack_tcp_be_liberal 1
    """
    ret = _minion.sysctl(str(key), str(value), test=bool(test))
    _fail_retcode(ret["result"] is False)
    return ret


def retire(test: bool = False) -> dict[str, Any]:
    """
    Take away the daemons anycastlb manages that this node no longer runs (a role it lost):
    each is stopped (the health agent first: it withdraws every announcement), its unit
    disabled, its files removed, the health agent's VIPs taken off ``lo``. A daemon anycastlb
    never configured here is left alone. ``test=True``: what would go.

    CLI Example:

    .. code-block:: bash

        salt lb2 anycastlb.retire test=True
    """
    model, _ = _node()
    ret = _minion.retire(model, None if test else _minion.control(__pillar__.get("anycastlb")), test=bool(test))
    _fail_retcode(ret["result"] is False)
    return ret


def decommission(force: bool = False, test: bool = False, wait: float = 0, frontends: Any = None) -> dict[str, Any]:
    """
    Take everything anycastlb put on this node away: every daemon of anycastlb stopped and
    disabled (the health agent first: it withdraws), its configs removed, its VIPs off ``lo``,
    the firewall table unloaded. For a node the catalog no longer names; refused while it does
    (its pillar names it) unless ``force=True``. ``salt-run anycastlb.decommission node=X``
    drains it and waits for the route reflectors first. ``wait``: seconds to wait, before
    HAProxy stops, until its ``frontends`` hold no session (graceful drain; the runner passes
    the node's last model's).

    CLI Example:

    .. code-block:: bash

        salt old-lb anycastlb.decommission test=True
        salt old-lb anycastlb.decommission
    """
    data = _fresh_pillar().get("anycastlb") or {}  # the catalog as the master serves it now, not as loaded
    if data.get("node") and not force:
        raise CommandExecutionError(f"the catalog still names this node ({data['node']}): remove it from the "
                                    "catalog first (or force=True)")
    sessions: dict[str, Any] | None = None
    if not test and float(wait or 0) > 0 and _list(frontends):
        try:
            sessions = _minion.wait_sessions(_gone(frontends, float(wait)), float(wait))  # type: ignore[arg-type]
        except _minion.NodeError as exc:
            sessions = {"result": False, "comment": str(exc)}
    ret = _minion.retire(None, None if test else _minion.control(data), test=bool(test))
    if sessions is not None:
        ret["sessions"] = sessions
        ret["comment"] += f"; before HAProxy stopped: {sessions['comment']}"
    _fail_retcode(ret["result"] is False)
    return ret


def reload(daemon: str) -> str:  # pylint: disable=redefined-builtin
    """
    Reload one daemon (start it if it is not running) with its live config.

    CLI Example:

    .. code-block:: bash

        salt lb1 anycastlb.reload haproxy
    """
    model, _ = _node()
    try:
        _minion.spec_for(daemon, model)
        return _minion.control(__pillar__.get("anycastlb")).reload_or_start(daemon)
    except Exception as exc:  # pylint: disable=broad-except
        raise CommandExecutionError(f"{daemon}: {exc}") from None


def drain(timeout: float = 10, config: str = "/etc/anycastlb/healthd.json", reason: str = "") -> dict[str, Any]:
    """
    Withdraw every announcement of this node now (BGP sessions stay up, HAProxy
    keeps its connections): writes the drain file, signals anycastlb-healthd and
    waits until it confirms. To make it last, set ``state: drain`` in the catalog.
    ``config`` is the health agent's config (it names the drain and state files).

    CLI Example:

    .. code-block:: bash

        salt lb2 anycastlb.drain
        salt lb2 anycastlb.drain reason="disk swap, ticket 4711"

    ``reason`` is written into the drain file; an orchestration writes ``orchestrate``
    and undrains only nodes it drained itself. ``salt-run anycastlb.drain node=lb2``
    also waits until the route reflectors carry none of the node's paths. A node the
    catalog no longer names can still be drained while its health agent's config is there
    (``salt-run anycastlb.decommission`` does that first).
    """
    _managed(config)
    ret = _minion.set_drain(True, timeout=float(timeout), config=config, reason=str(reason or ""))
    _fail_retcode(not ret["result"])
    return ret


def _managed(config: str) -> None:
    """Refuse a minion that is neither named by the catalog nor has a health agent config of ours."""
    import os

    if not (__pillar__.get("anycastlb") or {}).get("node") and not os.path.exists(config):
        _node()  # raises, saying why


def undrain(timeout: float = 10, config: str = "/etc/anycastlb/healthd.json") -> dict[str, Any]:
    """
    Undo :py:func:`drain`: removes the drain file, signals anycastlb-healthd and
    waits until it confirms (healthy VIPs are then announced again).

    CLI Example:

    .. code-block:: bash

        salt lb2 anycastlb.undrain
    """
    _node()
    ret = _minion.set_drain(False, timeout=float(timeout), config=config)
    _fail_retcode(not ret["result"])
    return ret


def status(brief: bool = False) -> dict[str, Any]:
    """
    The health agent's state (drained, each prefix announced or not and why)
    and whether each of this node's daemons runs. ``brief``: only the announced
    prefixes, without the why (what the rolling deploy reads: at 1,000 services
    a tenth of the answer).

    CLI Example:

    .. code-block:: bash

        salt -I "anycastlb:node:*" anycastlb.status
        salt lb1 anycastlb.status
        salt lb1 anycastlb.status brief=True
    """
    model, _ = _node()
    return _minion.status(model, _minion.control(__pillar__.get("anycastlb")), brief=bool(brief))


def routes(via: Any = None) -> dict[str, list[str]]:
    """
    What this node's BIRD carries: prefix → the next hops of its paths (from
    ``birdc show route all``). ``via``: only paths via these addresses (a list or a
    comma-separated string). On a route reflector, that is who announces what.

    CLI Example:

    .. code-block:: bash

        salt rr1 anycastlb.routes
        salt rr1 anycastlb.routes via=198.51.100.21,2001:db8:100::21
    """
    try:
        return _minion.routes(_list(via))
    except _minion.NodeError as exc:
        raise CommandExecutionError(str(exc)) from None


def wait_routes(via: Any, present: Any = None, timeout: float = 30) -> dict[str, Any]:
    """
    Wait until this node's BIRD carries no path via ``via`` (``present`` not given), or
    a path via ``via`` for every prefix in ``present``. The exit code is 1 on timeout.

    CLI Example:

    .. code-block:: bash

        salt rr1 anycastlb.wait_routes via=198.51.100.21
        salt rr1 anycastlb.wait_routes via=198.51.100.21 present=192.0.2.10/32
    """
    try:
        ret = _minion.wait_routes(_list(via), None if present is None else _list(present), timeout=float(timeout))
    except _minion.NodeError as exc:
        raise CommandExecutionError(str(exc)) from None
    _fail_retcode(not ret["result"])
    return ret


def sessions() -> dict[str, dict[str, str]]:
    """
    This node's BGP sessions: protocol → ``{state, neighbor}`` (``Established`` or
    what it is instead).

    CLI Example:

    .. code-block:: bash

        salt rr1 anycastlb.sessions
    """
    try:
        return _minion.sessions()
    except _minion.NodeError as exc:
        raise CommandExecutionError(str(exc)) from None


def _fresh_pillar() -> dict[str, Any]:
    """This minion's pillar compiled now by the master (not the copy loaded when the job started)."""
    import salt.pillar

    opts = {**__opts__, "pillar": {}}  # a masterless minion's Pillar would merge the loaded one in
    data = salt.pillar.get_pillar(opts, dict(__grains__), opts["id"],
                                  saltenv=opts.get("saltenv"), pillarenv=opts.get("pillarenv")).compile_pillar()
    try:  # Salt 3008 wraps pillar for masked output; the values inside are plain
        from salt.utils.secret import expose
    except ImportError:  # Salt 3006
        return dict(data)
    return dict(expose(data))


def _model_for(expect: str) -> dict[str, Any]:
    """The model to verify against: the pillar's, compiled fresh unless the loaded one is already the
    planned one (``expect``: its :func:`anycastlb.model.model_hash`); refused if neither is."""
    from anycastlb.model import model_hash

    model, _ = _node()
    if expect and model_hash(model) == expect:
        return dict(model)
    applied = _minion.recorded_model(expect)   # the planned model, as the apply's state run got it
    if applied is not None:
        return dict(applied)
    try:
        fresh, _ = _minion.node_of(_fresh_pillar().get("anycastlb"))
    except _minion.NodeError as exc:
        raise CommandExecutionError(str(exc)) from None
    got = model_hash(fresh)
    if expect and got != expect:
        raise CommandExecutionError(f"this minion's pillar is not the planned catalog (its model {got}, the plan's "
                                    f"{expect}): did the catalog change during the deploy?")
    return dict(fresh)


def _gone(frontends: Any, wait: float) -> dict[str, Any]:
    """The HAProxy part of a model this node no longer has (its frontends, from the master's record)."""
    return {"haproxy": {"frontends": [{"name": f} for f in _list(frontends)], "drain_deadline_ms": wait * 1000}}


def wait_sessions(deadline: Any = None, frontends: Any = None) -> dict[str, Any]:
    """
    Graceful drain's wait: until this node's HAProxy frontends hold no session, or
    ``deadline`` seconds pass (default: the catalog's ``drain_deadline`` of its
    clusters). ``open`` says how many were left; the exit code is 1 if any.

    CLI Example:

    .. code-block:: bash

        salt lb1 anycastlb.wait_sessions
        salt lb1 anycastlb.wait_sessions deadline=10

    ``frontends``: wait for these (a node leaving its cluster: the model it ran, no longer
    its pillar's), ``deadline`` then required.
    """
    model, _ = _node()
    if _list(frontends):
        model = _gone(frontends, float(deadline or 0))  # type: ignore[assignment]
    try:
        ret = _minion.wait_sessions(model, None if deadline in (None, "") else float(deadline))
    except _minion.NodeError as exc:
        raise CommandExecutionError(str(exc)) from None
    _fail_retcode(not ret["result"])
    return ret


def verify(pending: Any = None, timeout: float = 20, expect: str = "") -> dict[str, Any]:
    """
    Is this node healthy after an apply? Every daemon it runs is running, HAProxy's
    frontends are OPEN and its backends UP, every BGP session is Established, every
    apache2 vhost answers its health path; retried until ``timeout``. Backends named
    in ``pending`` may be down (their servers are deployed later). Exit code 1 if not.

    It checks against the catalog the master serves now (the pillar compiled afresh,
    never the copy this minion loaded before the apply: a removed service is not looked
    for). ``expect``: the model hash the plan gave this node; verify refuses to judge
    the node against another model. When the apply's state run was given that very model
    (``anycastlb.record_model``), verify uses it and does not compile the pillar again.

    CLI Example:

    .. code-block:: bash

        salt lb1 anycastlb.verify
        salt lb1 anycastlb.verify pending=www-8080 timeout=5
    """
    model = _model_for(str(expect or ""))
    ret = _minion.verify(model, _minion.control(__pillar__.get("anycastlb")), _list(pending),  # type: ignore[arg-type]
                         timeout=float(timeout))
    from anycastlb.model import model_hash
    ret["model"] = model_hash(model)
    _fail_retcode(not ret["result"])
    return ret


def acme_report(outcomes: Any, issuer: str = "") -> dict[str, Any]:
    """
    Record the ACME issuer's renewal outcomes on this monitoring node, where the
    ``acme <service> renewal`` checks read them (``/var/log/anycastlb/acme-renewal.json``,
    no secrets: names, results, reasons, serials). ``salt-run anycastlb.renew`` (and the
    issuer's schedule) calls it after every pass; each certificate keeps its latest outcome.

    CLI Example:

    .. code-block:: bash

        salt mon1 anycastlb.acme_report '[{"name": "acme-www", "result": "kept", "reason": "not due"}]'
    """
    from anycastlb.plugins.check_anycastlb_acme import DEFAULT_REPORT, write_report

    if not isinstance(outcomes, list) or not all(isinstance(o, dict) and o.get("name") for o in outcomes):
        raise CommandExecutionError("outcomes: a list of {name, result, reason, ...}")
    report = write_report(outcomes, str(issuer), DEFAULT_REPORT)
    return {"result": True, "path": DEFAULT_REPORT, "certificates": sorted(report["certificates"])}


def _list(value: Any) -> list[str]:
    """A list from a list or a comma-separated string (the CLI passes strings)."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [v.strip() for v in str(value).split(",") if v.strip()]
