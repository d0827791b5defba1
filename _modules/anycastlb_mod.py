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


def drain(timeout: float = 10, config: str = "/etc/anycastlb/healthd.json") -> dict[str, Any]:
    """
    Withdraw every announcement of this node now (BGP sessions stay up, HAProxy
    keeps its connections): writes the drain file, signals anycastlb-healthd and
    waits until it confirms. To make it last, set ``state: drain`` in the catalog.
    ``config`` is the health agent's config (it names the drain and state files).

    CLI Example:

    .. code-block:: bash

        salt lb2 anycastlb.drain
    """
    _node()
    ret = _minion.set_drain(True, timeout=float(timeout), config=config)
    _fail_retcode(not ret["result"])
    return ret


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


def status() -> dict[str, Any]:
    """
    The health agent's state (drained, each prefix announced or not and why)
    and whether each of this node's daemons runs.

    CLI Example:

    .. code-block:: bash

        salt -I "anycastlb:node:*" anycastlb.status
        salt lb1 anycastlb.status
    """
    model, _ = _node()
    return _minion.status(model, _minion.control(__pillar__.get("anycastlb")))
