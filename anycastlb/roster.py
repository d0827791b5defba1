"""A salt-ssh roster generated from the catalog, for bootstrapping nodes that have no minion yet."""

from __future__ import annotations

from typing import Any

import yaml

from .compiler import Fleet


def roster(fleet: Fleet, user: str = "root", priv: str | None = None, port: int = 22,
           nodes: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Minion id → salt-ssh target (``host`` is the node's catalog address)."""
    out: dict[str, dict[str, Any]] = {}
    masters = [m["address"] for m in fleet.nodes.values() if "salt-master" in m["roles"]]
    for nid in nodes or list(fleet.nodes):
        m = fleet.nodes[nid]
        opts: dict[str, Any] = {"id": nid}
        if len(masters) == 1:  # salt/anycastlb/bootstrap/minion.sls points the new minion there
            opts["anycastlb_master"] = masters[0]
        entry: dict[str, Any] = {"host": m["address"], "user": user, "port": port, "minion_opts": opts}
        if priv:
            entry["priv"] = priv
        out[nid] = entry
    return out


def roster_yaml(fleet: Fleet, **kw: Any) -> str:
    """The roster as YAML text with a managed-by header."""
    from .render import HEADER
    return f"# {HEADER}\n" + yaml.safe_dump(roster(fleet, **kw), sort_keys=True, default_flow_style=False)
