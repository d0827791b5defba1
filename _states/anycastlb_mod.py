"""
anycastlb states: one daemon's config from this node's pillar slice.

.. code-block:: yaml

    anycastlb-haproxy:
      anycastlb.configured:
        - name: haproxy

``configured`` renders, runs the daemon's own checker on a staged candidate, swaps
the files atomically and reloads the daemon. A candidate the checker refuses
leaves the live files alone, reloads nothing and returns ``skip_watch: True``.
The ``healthd`` step also puts the node's VIPs on ``lo`` (the service control does).

The file is not called ``anycastlb.py`` on purpose: Salt puts a module's own
directory on ``sys.path`` while loading it, and a file of the package's name would
then shadow the ``anycastlb`` package. Salt knows it by its virtual name, ``anycastlb``.
"""

from __future__ import annotations

from typing import Any

from salt.exceptions import CommandExecutionError

__virtualname__ = "anycastlb"


def __virtual__() -> str | tuple[bool, str]:
    if "anycastlb.apply" in __salt__:
        return __virtualname__
    return False, "the anycastlb execution module is not loaded (is the anycastlb package importable?)"


def _call(name: str, func: str, **kwargs: Any) -> dict[str, Any]:
    """Run an execution function that returns a state-shaped dict; its refusals become False."""
    try:
        ret = dict(__salt__[func](**kwargs))
    except CommandExecutionError as exc:
        return {"name": name, "result": False, "changes": {}, "comment": str(exc)}
    ret["name"] = name
    return ret


def configured(name: str, root: str = "/") -> dict[str, Any]:
    """
    The daemon ``name`` (``haproxy``, ``bird``, ``healthd``, ``nftables``, ``apache2``,
    ``icinga2``) runs the config this node's pillar describes.

    - ``test=True``: result None with the diff; nothing is written or reloaded.
    - no change: True, nothing reloaded (a stopped daemon is started).
    - checker refuses: False with its output; old files kept, nothing reloaded.
    - changed: files swapped, the daemon reloaded (or started).

    name
        the daemon
    root
        where the files go (``/``; another directory for a staged tree)
    """
    return _call(name, "anycastlb.apply", daemon=name, test=bool(__opts__["test"]), root=root)


def retired(name: str) -> dict[str, Any]:
    """
    The daemons anycastlb manages that this node no longer runs are gone: stopped, disabled,
    their files removed, the health agent's VIPs off ``lo`` (see ``anycastlb.retire``).

    - nothing of theirs left: True, no changes.
    - ``test=True``: None with what would go.

    name
        any (a label)
    """
    return _call(name, "anycastlb.retire", test=bool(__opts__["test"]))


def recorded(name: str) -> dict[str, Any]:
    """
    This node's model (its pillar's) is on record as the one its last state run was given
    (``/var/lib/anycastlb/applied-model.json``): the rolling deploy's verify then judges the
    node against the planned model without compiling the pillar again.

    - already on record: True, no changes.
    - ``test=True``: None with the hashes.

    name
        any (a label)
    """
    return _call(name, "anycastlb.record_model", test=bool(__opts__["test"]))


def sysctl(name: str, value: Any) -> dict[str, Any]:
    """
    The kernel setting ``name`` is ``value`` (read and written through ``/proc/sys``; a missing
    ``net.netfilter.nf_conntrack_*`` key loads ``nf_conntrack`` first). Unlike ``cmd.run`` with
    ``unless``, it makes Salt load no other state module: a requisite check like ``unless`` looks
    for ``cmd.mod_run_check`` and, missing it, loads every state module there is (about 1 s on an
    idle node, more under load, in every ``state.apply``).

    name
        the key, ``net.netfilter.nf_conntrack_tcp_be_liberal``
    value
        its value
    """
    return _call(name, "anycastlb.sysctl", key=name, value=value, test=bool(__opts__["test"]))
